# Two commands do all the set-up: `make quickstart` (the main job) and `make test` (the test suite).
# Each creates .venv when it is missing and installs requirements.txt and the package (editable).
PY := .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: quickstart test lint format venv clean

$(VENV_STAMP): requirements.txt setup.py
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(VENV_STAMP)

venv: $(VENV_STAMP)

quickstart: $(VENV_STAMP)
	$(PY) tools/quickstart.py

test: $(VENV_STAMP)
	$(PY) -m ruff check lib tools tests
	$(PY) -m ruff format --check lib tools tests
	$(PY) -m pytest tests

lint: $(VENV_STAMP)
	$(PY) -m ruff check lib tools tests
	$(PY) -m ruff format --check lib tools tests

format: $(VENV_STAMP)
	$(PY) -m ruff check --fix lib tools tests
	$(PY) -m ruff format lib tools tests

clean:
	rm -rf .venv output log .pytest_cache .ruff_cache
