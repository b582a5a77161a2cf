"""The LM-head decoding lists and the clamp panel in a real Chromium (static exports, network blocked)."""

from __future__ import annotations

import pytest

import neuronwidgets as nw
import neuronwidgets.widgets as W
from tests.browser.conftest import save_screenshot
from tests.browser.world import SCRIPT, XSS, tiny_world

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def open_page(page, path):
    page.watch.block_network(page)
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-nw-ready]", timeout=60_000)
    assert not page.locator(".nw-export-error").all_text_contents()


def test_card_logit_lists_show_tokens_as_text(page, tmp_path, artifacts):
    from neuronwidgets.decode import NeuronDecoding

    session, index, _, table = tiny_world()
    frame = nw.decode_neurons(session, k=3).frame.copy()
    frame["token"] = frame["token"].astype(str)
    first = frame.index[(frame.layer == 0) & (frame.neuron == 4)]
    frame.loc[first[0], "token"] = XSS
    frame.loc[first[1], "token"] = SCRIPT
    dec = NeuronDecoding(frame, {})
    card = W.ExplanationCard(nw.Explanation(layer=0, neuron=4, category="text", text="a square"), index=index, decoding=dec)
    open_page(page, W.to_html([card], tmp_path / "card.html"))
    assert page.locator(".nw-logits .nw-logit-row").count() == 3  # writes, reads_up, reads_gate (these two folded)
    assert page.locator(".nw-logits details").count() == 2
    page.locator(".nw-logits details summary").first.click()
    toks = page.locator(".nw-logit-pos").first.locator(".nw-logit-tok")
    assert toks.count() == 3
    assert toks.nth(0).text_content() == XSS and toks.nth(1).text_content() == SCRIPT
    assert toks.nth(0).evaluate("el => el.children.length") == 0
    assert page.locator("img[src='x']").count() == 0 and not page.watch.dialogs
    values = page.locator(".nw-logit-pos").first.locator(".nw-logit-val").all_text_contents()
    want = dec.top_tokens(0, 4)["logit"].tolist()
    assert [float(v) for v in values] == pytest.approx(want, abs=0.006)
    save_screenshot(page, artifacts, "decode-card", ".nw-explanation-card")
    assert not page.watch.requests and not page.watch.errors, (page.watch.requests, page.watch.errors)


def test_explorer_export_has_a_disabled_clamp_panel(page, tmp_path):
    session, index, _, table = tiny_world()
    ex = W.NeuronExplorer(session, index, explanations=table, layer=0, neuron=4, async_simulation=False,
                          decoding=nw.decode_neurons(session, k=3, layers=[0]))
    try:
        open_page(page, ex.to_html(tmp_path / "explorer.html"))
    finally:
        ex.close()
    slider = page.locator(".nw-clamp-slider")
    assert slider.count() == 1 and slider.is_disabled()
    page.wait_for_function("() => document.querySelector('.nw-clamp-result').textContent.includes('running kernel')")
    assert page.locator(".nw-ex-card .nw-logits .nw-logit-item").count() == 3 * 2 * 3
    assert not page.watch.requests and not page.watch.errors, (page.watch.requests, page.watch.errors)


def test_explorer_export_shows_its_last_clamp(page, tmp_path, artifacts):
    session, index, _, table = tiny_world()
    ex = W.NeuronExplorer(session, index, explanations=table, layer=1, neuron=2, async_simulation=False,
                          decoding=nw.decode_neurons(session, k=3, layers=[1]))
    try:
        view = ex.clamp(ex.clamp_range[1])
        open_page(page, ex.to_html(tmp_path / "explorer.html", neurons=[(1, 3)]))
    finally:
        ex.close()
    answers = page.locator(".nw-clamp-answer").all_text_contents()
    assert answers == [f"unclamped: {view['before']['answer']}", f"clamped to {view['value']}: {view['after']['answer']}"]
    cols = page.locator(".nw-clamp-change .nw-logit-row .nw-logit-col")
    assert cols.count() == 2
    shown = cols.nth(1).locator(".nw-logit-tok").all_text_contents()
    assert len(shown) == 8 and shown[0] == view["after"]["top"][0]["token"].replace("\n", "\u21b5")
    pct = cols.nth(1).locator(".nw-logit-val").first.text_content()
    assert pct == f"{100 * view['after']['top'][0]['prob']:.1f}%"
    assert page.locator(".nw-clamp-change > .nw-logit-list .nw-logit-item").count() == 3  # the named tokens
    save_screenshot(page, artifacts, "decode-explorer-clamp", ".nw-explorer")
    page.locator(".nw-ex-neuron").fill("3")
    page.locator(".nw-ex-neuron").dispatch_event("change")
    page.wait_for_function("() => document.querySelector('.nw-clamp-result').textContent.includes('running kernel')")
    assert not page.watch.requests and not page.watch.errors, (page.watch.requests, page.watch.errors)
