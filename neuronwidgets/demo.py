"""`make demo`: the toy model end to end, offline, on CPU — collect, categorise, explain, score, export."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from neuronwidgets.model.session import Session

from pathlib import Path

import pandas as pd


def run_demo(out: Path, n: int = 600, session: Session | None = None, progress: bool = True) -> dict:
    """Collect the toy over Shapes, print categories and scored concept explanations, write HTML widgets."""
    import neuronwidgets as nw

    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    session = session or nw.Session.toy()
    print(session)
    data = nw.datasets.shapes(n=n, seed=0)
    split = n * 5 // 6
    s = data[0]
    print(f"\nsample 0: {s.caption!r}")
    for qa in s.qa[:3]:
        print(f"  Q: {qa.question:38s} model: {session.generate(s.image, qa.prompt)!r:12s} truth: {qa.answer!r}")

    print(f"\ncollecting {split} images (text = the model's own description) ...")
    # overwrite: a folder left by another version or other settings is collected again (the same one is reused)
    index = session.collect(data[:split], path=out / "index", batch_size=32, progress=progress, overwrite=True)
    heldout = session.collect(data[split:], path=out / "heldout", batch_size=32, progress=progress, overwrite=True)
    print(index)
    with pd.option_context("display.width", 140, "display.max_columns", 20):
        summary = index.category_summary()
        print("\nneuron categories per layer (paper rule):")
        print(summary.to_string(index=False))

    cats = index.categories()
    table = nw.explain_all(index, neurons=_pick(cats, 12), explainer=nw.ConceptExplainer(data),
                           simulator=nw.ConceptSimulator(heldout), holdout=heldout, progress=progress)
    cols = [c for c in ("layer", "neuron", "category", "text", "score", "baseline") if c in table.columns]
    with pd.option_context("display.width", 140, "display.max_colwidth", 40):
        print("\nconcept explanations, scored on held-out images (Pearson r; baseline = another neuron's explanation):")
        print(table[cols].to_string(index=False))

    best = table.sort_values("score", ascending=False).iloc[0]
    layer, neuron = int(best["layer"]), int(best["neuron"])
    exp = nw.ConceptExplainer(data).explain(index, layer=layer, neuron=neuron)
    result = nw.score(exp, index, simulator=nw.ConceptSimulator(heldout), holdout=heldout)
    trace = session.trace(s.image, s.qa[0].prompt)
    files = {
        "patch_heatmap": nw.PatchHeatmap(trace, layer=layer, neuron=neuron).to_html(out / "patch_heatmap.html"),
        "token_heatmap": nw.TokenHeatmap(trace, layer=layer, neuron=neuron).to_html(out / "token_heatmap.html"),
        "card": nw.ExplanationCard(exp, result, index=index).to_html(out / "card.html"),
        "simulation": nw.SimulationPlot(result).to_html(out / "simulation.html"),
        "explorer": nw.NeuronExplorer(session, index, layer=layer, neuron=neuron).to_html(out / "explorer.html"),
    }
    print(f"\nlayer {layer} neuron {neuron}: {exp.text!r}  score {result.score:.2f} (baseline {result.baseline:.2f})")
    print("\nself-contained widgets (open in a browser, no server needed):")
    for name, path in files.items():
        print(f"  {name:14s} {path}")
    print("\nnext: `make lab` opens notebooks/01_quickstart.ipynb in JupyterLab")
    return {"index": index, "table": table, "files": files}


def _pick(cats: pd.DataFrame, k: int) -> list[tuple[int, int]]:
    """A few neurons of each category, strongest first, for a quick look."""
    picked = []
    for category in ("visual", "multi-modal", "text"):
        rows = cats[cats.category == category].sort_values("max", ascending=False).head(k // 3)
        picked += list(zip(rows.layer.astype(int), rows.neuron.astype(int)))
    return picked
