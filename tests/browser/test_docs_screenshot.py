"""The README's picture: the explorer on the bundled toy model, exported and shown in Chromium.

    NW_UPDATE_DOCS_SCREENSHOT=1 python -m pytest tests/browser/test_docs_screenshot.py   # refresh docs/explorer.png
"""

from __future__ import annotations

import pytest

from tests.browser import checks
from tests.browser.conftest import publish_docs_screenshot, save_screenshot

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def toy_explorer():
    from neuronwidgets.datasets.shapes import shapes
    from neuronwidgets.explain import ConceptExplainer, ConceptSimulator, explain_all
    from neuronwidgets.model.session import Session
    from neuronwidgets.widgets import NeuronExplorer

    try:
        session = Session.toy()
    except Exception as err:  # the weights are built by `python -m neuronwidgets.toy.train`
        pytest.skip(f"no toy model: {type(err).__name__}: {err}")
    data, held = shapes(n=96, seed=0), shapes(n=32, seed=0, start=96)
    index = session.collect(data, top_k=12, random_k=8, progress=False).attach(data)
    holdout = session.collect(held, top_k=8, random_k=8, progress=False).attach(held)
    cats = index.categories()
    layer = index.layers[len(index.layers) // 2]
    visual = cats[(cats["layer"] == layer) & (cats["category"] == "visual")]["neuron"].tolist()[:12]
    text = cats[(cats["layer"] == layer) & (cats["category"] == "text")]["neuron"].tolist()[:6]
    table = explain_all(index, neurons=[(layer, n) for n in visual + text], explainer=ConceptExplainer(data),
                        simulator=ConceptSimulator(holdout), holdout=holdout, progress=False)
    ok = table[table["error"].isna() & table["text"].astype(bool) & (table["category"] == "visual")]
    best = ok.sort_values("score", ascending=False).iloc[0]
    return NeuronExplorer(session, index, explanations=table, layer=int(best["layer"]), neuron=int(best["neuron"]),
                          async_simulation=False)


def test_docs_explorer_screenshot(tall_page, tmp_path, artifacts):
    page = tall_page
    ex = toy_explorer()
    path = ex.to_html(tmp_path / "toy-explorer.html")
    ex.close()
    page.watch.block_network(page)
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-nw-ready]", timeout=60_000)
    checks.wait_chart(page, ".nw-explorer")
    checks.check_chart_layout(page, ".nw-explorer")
    page.locator(".nw-explorer .nw-cell").nth(5).click()  # show a patch's top neurons too
    shot = save_screenshot(page, artifacts, "toy-explorer", ".nw-explorer")
    publish_docs_screenshot(shot, preferred=True)
    assert not page.watch.requests and not page.watch.errors
