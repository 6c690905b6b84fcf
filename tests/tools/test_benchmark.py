"""tools/benchmark.py --quick: every section runs and the JSON holds a row per measurement."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import load_tool

benchmark = load_tool("benchmark")


def test_benchmark_quick_writes_json(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    assert benchmark.main(["--quick", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["machine"]["cores"] >= 1
    sections = {row["section"] for row in report["rows"]}
    assert sections == set(benchmark.SECTIONS)
    for row in report["rows"]:
        assert {"name", "value", "unit"} <= set(row)
        assert isinstance(row["value"], (int, float))
    table = capsys.readouterr().out
    assert "| section | measurement | value | unit | detail |" in table


def test_markdown_table() -> None:
    rows = [{"section": "core", "name": "loss", "value": 1.23456, "unit": "ms", "detail": "B=12"}]
    assert benchmark.to_markdown(rows).splitlines()[2] == "| core | loss | 1.235 | ms | B=12 |"
