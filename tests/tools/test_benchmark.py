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
        if row["value"] is None:  # a row that cannot be measured here says why (e.g. no sample data)
            assert "skipped" in row["detail"] or "no ratio" in row["detail"], row
        else:
            assert isinstance(row["value"], (int, float)), row
    assert sum(row["value"] is not None for row in report["rows"]) >= len(report["rows"]) - 4
    table = capsys.readouterr().out
    assert "| section | measurement | value | unit | detail |" in table


def test_markdown_table() -> None:
    rows = [{"section": "core", "name": "loss", "value": 1.23456, "unit": "ms", "detail": "B=12"}]
    assert benchmark.to_markdown(rows).splitlines()[2] == "| core | loss | 1.235 | ms | B=12 |"
