"""The widget benchmark runs (a few edits) and reports what the issue asks for."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_widgets.py"


@pytest.mark.slow
def test_bench_widgets_runs(capsys):
    spec = importlib.util.spec_from_file_location("bench_widgets", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--n", "4", "--samples", "16", "--threads", "1"])
    run = result["runs"][0]
    assert run["edits"] == 4 and run["median_ms"] > 0 and run["bytes_per_update_median"] > 0
    out = capsys.readouterr().out
    assert "prompt edit -> state sent: median" in out and "bytes per update" in out
