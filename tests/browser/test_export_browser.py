"""Static exports in a real Chromium, from file:// with the network blocked: same checks as in JupyterLab."""

from __future__ import annotations

import pytest

import neuronwidgets.widgets as W
from tests.browser import checks
from tests.browser.conftest import save_screenshot
from tests.browser.world import KNOWN_VMAX, known_trace, tiny_world

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TOKENS, PATCHES = ".nw-export-view:nth-of-type(1)", ".nw-export-view:nth-of-type(2)"


def open_page(page, path):
    page.watch.block_network(page)
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-nw-ready]", timeout=60_000)
    errors = page.locator(".nw-export-error").all_text_contents()
    assert not errors, errors


def test_heatmaps_export_offline(page, tmp_path, artifacts):
    trace = known_trace()
    path = W.to_html([W.TokenHeatmap(trace, 0, 0, vmax=KNOWN_VMAX), W.PatchHeatmap(trace, 0, 0, vmax=KNOWN_VMAX)],
                     tmp_path / "heatmaps.html")
    open_page(page, path)
    root_t = ".nw-token-heatmap"
    root_p = ".nw-patch-heatmap"
    checks.check_token_colours(page, root_t)
    checks.check_patch_colours(page, root_p)
    checks.check_no_injection(page, root_t, n_scripts=3)
    checks.check_hover(page, root_t)
    checks.check_patch_hover(page, root_p)
    checks.check_chip_expands(page, root_t)
    checks.check_patch_click(page, root_p, trace)
    checks.check_cmap_and_opacity(page, root_p)
    checks.check_controls_keep_focus(page, root_p)
    chip = page.locator(f"{root_t} .nw-chip")
    chip.focus()
    chip.press("Enter")  # expands or collapses: the chip keeps the focus through the redraw
    page.wait_for_function("() => document.activeElement && document.activeElement.classList.contains('nw-chip')")
    checks.check_no_injection(page, root_t, n_scripts=3)
    save_screenshot(page, artifacts, "export-heatmaps")
    assert not page.watch.requests, f"the page tried the network: {page.watch.requests}"
    assert not page.watch.errors, page.watch.errors


def test_card_and_plot_export_offline(page, tmp_path, artifacts):
    from neuronwidgets.explain import ConceptSimulator, Explanation, score

    session, index, data, table = tiny_world()
    exp = Explanation(layer=0, neuron=4, category="text", text=checks.XSS + " a square")
    result = score(exp, index, ConceptSimulator(data), holdout=index.records(0, 4, "top")[:3] + index.records(0, 4, "random")[:3])
    card = W.ExplanationCard(exp, result, index=index, k=3)
    plot = W.SimulationPlot(result)
    open_page(page, W.to_html([card, plot], tmp_path / "card.html"))
    text = page.locator(".nw-card-text")
    assert text.text_content() == exp.text and text.evaluate("el => el.children.length") == 0
    assert page.locator(".nw-badge").text_content() == "text"
    assert page.locator(".nw-exemplar").count() == 3
    assert page.locator(".nw-hist svg rect").count() > 3
    page.wait_for_function(
        "() => { const c = document.querySelector('.nw-simulation-plot .nw-chart'); return c && Number(c.dataset.version) > 0; }",
        timeout=30_000)
    chart = page.locator(".nw-simulation-plot .nw-chart")
    assert int(chart.get_attribute("data-points")) == plot.n > 0
    assert page.locator(".nw-simulation-plot svg g.mark-symbol.concat_1_marks path").count() == plot.n
    assert plot.corr is not None and f"r = {plot.corr:.3f}" in page.locator(".nw-sim-corr").text_content()
    checks.check_chart_layout(page, ".nw-simulation-plot")
    before = page.locator(".nw-simulation-plot .nw-chart").get_attribute("data-signature")
    if len(plot.inputs) > 1:  # picking another input redraws the per-position chart
        page.locator(".nw-sim-focus").select_option("1")
        page.wait_for_function("b => document.querySelector('.nw-simulation-plot .nw-chart').dataset.signature !== b", arg=before)
    assert page.locator("img[src='x']").count() == 0 and not page.watch.dialogs
    save_screenshot(page, artifacts, "export-card-plot")
    assert not page.watch.requests, f"the page tried the network: {page.watch.requests}"
    assert not page.watch.errors, page.watch.errors


def test_explorer_export_answers_precomputed_prompts(page, tmp_path, artifacts):
    session, index, data, table = tiny_world()
    ex = W.NeuronExplorer(session, index, explanations=table, layer=0, neuron=4, async_simulation=False)
    first = ex.prompt
    target = "USER: <image>\nWhat color is the circle? ASSISTANT: a red"
    path = ex.to_html(tmp_path / "explorer.html", prompts=[first, target], neurons=[(1, 3)])
    ex.close()
    open_page(page, path)
    root = ".nw-explorer"
    before = checks.wait_chart(page, root)
    tokens_before = checks.token_texts(page, root)
    box = page.locator(f"{root} textarea.nw-prompt")
    box.fill("USER: <image>\nWhat color is the circle? ASSISTANT:")
    page.wait_for_function("sel => document.querySelector(sel).textContent.includes('Static export')", arg=f"{root} .nw-status")
    box.press("End")
    box.press_sequentially(" a red", delay=40)  # lands on a precomputed prompt: the plot follows
    changed = "([sel, b]) => document.querySelector(sel).dataset.signature !== b"
    page.wait_for_function(changed, arg=[f"{root} .nw-ex-sim .nw-chart", before])
    assert checks.token_texts(page, root) != tokens_before
    assert checks.token_texts(page, root)[-2:] == [" a", " red"] or "red" in "".join(checks.token_texts(page, root))
    assert page.locator(f"{root} .nw-status").text_content() == "static export"
    checks.check_chart_layout(page, root)
    focus = page.locator(f"{root} .nw-ex-sim .nw-sim-focus")
    if focus.locator("option").count() > 1:  # the input picker redraws the per-position chart (it did nothing)
        shown = page.locator(f"{root} .nw-ex-sim .nw-chart").get_attribute("data-signature")
        focus.select_option("1")
        page.wait_for_function("([sel, b]) => document.querySelector(sel).dataset.signature !== b",
                               arg=[f"{root} .nw-ex-sim .nw-chart", shown])
    # another precomputed neuron, picked from the list
    page.locator(f"{root} .nw-match[data-layer='1'][data-neuron='3']").click()
    page.wait_for_function("sel => document.querySelector(sel).textContent.includes('neuron 3')", arg=f"{root} .nw-card .nw-nid")
    assert page.locator(f"{root} input.nw-ex-upload").is_disabled()
    shot = save_screenshot(page, artifacts, "export-explorer")
    assert shot.exists()
    assert not page.watch.requests, f"the page tried the network: {page.watch.requests}"
    assert not page.watch.errors, page.watch.errors
    assert not page.watch.dialogs


def test_a_plot_whose_real_values_are_all_nan_draws_placeholders(page, tmp_path):
    """NaN real values gave the chart an infinite extent: an SVG 1.8e308 px wide and viewBox errors."""
    plot = W.SimulationPlot.from_arrays([float("nan")] * 4, [1, 2, 3, 4])
    open_page(page, W.to_html(plot, tmp_path / "nan.html"))
    page.wait_for_function("() => { const c = document.querySelector('.nw-chart'); return c && Number(c.dataset.version) > 0; }",
                           timeout=30_000)
    assert page.evaluate("() => document.documentElement.scrollWidth") < 5000
    assert not page.watch.errors, page.watch.errors
