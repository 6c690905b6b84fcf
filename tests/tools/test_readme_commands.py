"""The README's commands exist as written: every ``tools/X.py`` it runs is there and accepts every
``--flag`` the README passes it (checked against ``--help``, one process per script), and every
``from higherpose... import ...`` of its Python snippets imports."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from collections import defaultdict

import pytest

from tests.conftest import REPO

README = REPO / "README.md"
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
SCRIPT = re.compile(r"(?<![\w/.-])tools/(\w+)\.py\b")
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")


def _code_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced block."""
    return [(m.group(0).split("\n", 1)[0][3:].strip(), m.group(1)) for m in FENCE.finditer(text)]


def _command_lines(text: str) -> list[str]:
    """Shell command lines: fenced lines joined across ``\\`` continuations, then inline code spans
    (which may wrap onto the next line) outside the fences."""
    lines: list[str] = []
    for _, body in _code_blocks(text):
        lines += body.replace("\\\n", " ").splitlines()
    prose = FENCE.sub("", text)
    lines += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]
    return [line.split(" #", 1)[0] for line in lines if not line.lstrip().startswith("#")]


def readme_commands() -> dict[str, set[str]]:
    """Script name -> the flags the README passes it (those after ``tools/X.py`` on its line)."""
    flags: dict[str, set[str]] = defaultdict(set)
    for line in _command_lines(README.read_text()):
        matches = list(SCRIPT.finditer(line))
        for i, match in enumerate(matches):
            end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
            flags[match.group(1)].update(FLAG.findall(line[match.end() : end]))
    return dict(flags)


def readme_imports() -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every ``from higherpose... import ...`` line of the Python snippets."""
    found = []
    for language, body in _code_blocks(README.read_text()):
        if language != "python":
            continue
        for m in re.finditer(r"^from (higherpose[\w.]*) import ([^#\n]+)", body, re.M):
            names = [n.strip().split(" as ")[0] for n in m.group(2).strip("() ").split(",") if n.strip()]
            found.append((m.group(1), names))
    return found


def test_readme_names_the_main_commands():
    """The parsing finds what the README is known to document (a broken parser would pass anything)."""
    commands = readme_commands()
    assert {"dist_train", "valid", "demo", "export_onnx", "benchmark"} <= set(commands)
    assert {"--cfg", "--input", "--output", "--save-frames"} <= commands["demo"]
    assert "--world-size" in commands["dist_train"] and "--nproc" in commands["dist_train"]
    assert ("higherpose.apis.onnx_export", ["OnnxPoseNet"]) in readme_imports()


def test_every_readme_script_exists_and_takes_its_flags():
    commands = readme_commands()
    missing = sorted(name for name in commands if not (REPO / "tools" / f"{name}.py").is_file())
    assert not missing, f"README runs scripts that do not exist: {missing}"
    # All at once: each --help imports torch, which dominates the time.
    procs = {
        name: subprocess.Popen(
            [sys.executable, f"tools/{name}.py", "--help"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in sorted(commands)
    }
    problems = []
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=300)
        if proc.returncode:
            problems.append(f"tools/{name}.py --help exited {proc.returncode}:\n{out[-2000:]}")
            continue
        for flag in sorted(commands[name]):
            if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", out):
                problems.append(f"tools/{name}.py has no {flag} (README uses it)")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("module, names", readme_imports(), ids=lambda v: v if isinstance(v, str) else None)
def test_readme_python_imports(module, names):
    try:
        imported = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name == "onnxruntime":
            pytest.skip("onnxruntime is not installed")
        raise
    assert [n for n in names if not hasattr(imported, n)] == []
