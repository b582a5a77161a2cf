"""`make demo` end to end on the bundled toy (small), and again over a folder from another format version."""

from __future__ import annotations

import json

import pytest

from neuronwidgets.demo import run_demo


@pytest.mark.slow
def test_demo_runs_and_reruns_over_an_old_folder(tmp_path, capsys):
    first = run_demo(tmp_path, n=96, progress=False)
    assert len(first["table"]) > 0 and all(p.exists() for p in first["files"].values())
    manifest = tmp_path / "index" / "manifest.json"
    old = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**old, "format_version": 1}))  # a folder left by an older neuronwidgets
    again = run_demo(tmp_path, n=96, progress=False)
    assert again["index"].manifest["format_version"] == old["format_version"]
    assert "neuron categories per layer" in capsys.readouterr().out
