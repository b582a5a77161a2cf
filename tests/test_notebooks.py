"""The notebooks: committed without outputs, and executed top to bottom with nbclient on the toy model."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SECRET = "sk-test-SECRET-notebook-0123456789"


def test_the_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == [
        "01_quickstart.ipynb",
        "02_course_neurons_in_vlms.ipynb",
        "03_reproduce_paper.ipynb",
        "04_explain_simulate_score.ipynb",
        "05_decode_and_clamp.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: clear the outputs before committing"
    assert "widgets" not in nb.metadata, f"{path.name}: saved widget state; clear it before committing"


def execute(path: Path, cwd: Path, timeout: int = 900, allow_errors: bool = False) -> nbformat.NotebookNode:
    """Run a notebook like a user does (its folder is `cwd`) and keep the executed copy beside it."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}},
                   allow_errors=allow_errors).execute()
    nbformat.write(nb, cwd / path.name)
    return nb


def outputs_text(nb) -> str:
    """Everything the notebook printed or displayed as text."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.append(json.dumps(out.get("data", {})))
            parts.append(out.get("evalue", ""))
    return "\n".join(parts)


def errors_of(nb) -> list[str]:
    return [out.get("ename", "") for c in nb.cells for out in c.get("outputs", []) if out.get("output_type") == "error"]


def widget_views(nb) -> int:
    return sum("application/vnd.jupyter.widget-view+json" in out.get("data", {}) for c in nb.cells for out in c.get("outputs", []))


@pytest.fixture
def notebook_env(tmp_path, monkeypatch):
    """A user's machine without an API key and with a cache of its own (the kernel inherits this environment)."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("NEURONWIDGETS_LLM_BASE_URL", raising=False)
    monkeypatch.setenv("NEURONWIDGETS_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.mark.slow
def test_quickstart_runs(notebook_env):
    nb = execute(ROOT / "notebooks" / "01_quickstart.ipynb", notebook_env)
    assert not errors_of(nb)
    assert widget_views(nb) >= 6  # patch and token heatmaps, card, plot, explorer (and the progress bars)
    assert (notebook_env / "runs" / "quickstart" / "index" / "manifest.json").exists()
    assert "cdn.jsdelivr" not in outputs_text(nb)  # charts render offline
    html = (notebook_env / "runs" / "quickstart" / "explorer.html").read_text()
    assert "<script" in html and "cdn." not in html


@pytest.mark.slow
def test_course_runs_and_its_self_checks_pass(notebook_env):
    nb = execute(ROOT / "notebooks" / "02_course_neurons_in_vlms.ipynb", notebook_env)
    assert not errors_of(nb)
    text = outputs_text(nb)
    for k in range(1, 5):
        assert f"Exercise {k}: correct" in text, f"exercise {k}'s self-check did not pass with its solution"
    hidden = [c for c in nb.cells if "solution" in c.metadata.get("tags", [])]
    assert len(hidden) == 4 and all(c.metadata["jupyter"]["source_hidden"] for c in hidden)


@pytest.mark.slow
def test_course_self_checks_say_when_an_answer_is_missing(notebook_env):
    """A student who has not answered yet gets a hint, not a crash."""
    path = ROOT / "notebooks" / "02_course_neurons_in_vlms.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if "solution" not in c.metadata.get("tags", [])]
    student = notebook_env / "student"
    student.mkdir()
    nbformat.write(nb, student / path.name)
    done = execute(student / path.name, student)
    assert not errors_of(done)
    assert outputs_text(done).count("no answer yet") == 4


@pytest.mark.slow
def test_course_solutions_never_overwrite_a_students_answer(notebook_env):
    """The hidden solution cells run with Run All too: a wrong answer must still be found wrong, not replaced."""
    path = ROOT / "notebooks" / "02_course_neurons_in_vlms.ipynb"
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.source.startswith("neurons_per_layer = None"):
            cell.source = "neurons_per_layer = 100\nn_tokens = 5"
        elif cell.source.startswith("my_text = None"):
            cell.source = 'my_text = "nothing at all"  # names no concept: scores nothing'
    student = notebook_env / "wrong"
    student.mkdir()
    nbformat.write(nb, student / path.name)
    text = outputs_text(execute(student / path.name, student, allow_errors=True))
    assert "Exercise 1: not quite" in text and "Exercise 4: not quite" in text
    assert "Exercise 2: correct" in text and "Exercise 3: correct" in text


@pytest.mark.slow
def test_reproduce_paper_falls_back_to_the_toy(notebook_env):
    nb = execute(ROOT / "notebooks" / "03_reproduce_paper.ipynb", notebook_env)
    assert not errors_of(nb)
    text = outputs_text(nb)
    assert "running the same analysis on the bundled toy LLaVA" in text
    assert "explaining with the concept family" in text
    assert widget_views(nb) >= 4  # the category and score charts (altair's offline Jupyter renderer), card, explorer
    assert "cdn.jsdelivr" not in text  # no chart loads its JavaScript from the internet


@pytest.mark.slow
def test_llm_vs_concept_with_a_local_server(notebook_env, monkeypatch):
    from tests.explain.test_explain_llm import fake_model
    from tests.llm_server import FakeLLMServer

    with FakeLLMServer(fake_model) as server:
        monkeypatch.setenv("NEURONWIDGETS_LLM_BASE_URL", server.url)
        monkeypatch.setenv("NEURONWIDGETS_LLM_MODEL", "test-vlm")
        monkeypatch.setenv("OPENAI_API_KEY", SECRET)
        nb = execute(ROOT / "notebooks" / "04_explain_simulate_score.ipynb", notebook_env)
        sent = len(server.requests)
    assert not errors_of(nb)
    assert sent > 0 and all(r["model"] == "test-vlm" for r in server.requests)
    assert "LLM score" in outputs_text(nb)
    for p in notebook_env.rglob("*"):
        if p.is_file():
            assert SECRET.encode() not in p.read_bytes(), f"the API key leaked into {p}"


@pytest.mark.slow
def test_llm_half_is_skipped_without_a_key(notebook_env):
    nb = execute(ROOT / "notebooks" / "04_explain_simulate_score.ipynb", notebook_env)
    assert not errors_of(nb)
    assert "the LLM family is skipped here" in outputs_text(nb)


@pytest.mark.slow
def test_decode_and_clamp_runs(notebook_env):
    nb = execute(ROOT / "notebooks" / "05_decode_and_clamp.ipynb", notebook_env)
    assert not errors_of(nb)
    text = outputs_text(nb)
    assert "the strongest ' red' writer" in text and "excess, its tokens" in text
    assert (notebook_env / "runs" / "decode" / "index" / "decoding.parquet").exists()
    assert widget_views(nb) >= 2  # the card with its logit lists, the explorer with its clamp slider
