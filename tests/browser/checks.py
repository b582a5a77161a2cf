"""Checks shared by the JupyterLab and the static-export browser tests (same assertions, two hosts)."""

from __future__ import annotations

import numpy as np

from neuronwidgets.widgets.colors import fmt
from neuronwidgets.widgets.colors import value_color as _value_color
from tests.browser.world import KNOWN, KNOWN_PATCHES, KNOWN_VMAX, XSS

#: sequence position of each KNOWN text token (two text tokens, four image tokens, the rest)
KNOWN_POSITIONS = [0, 1] + list(range(6, 6 + len(KNOWN) - 2))


def value_color(value, vmax, cmap="diverging") -> str:
    """The colour a float32 activation must get (activations cross as float32)."""
    return _value_color(float(np.float32(value)), vmax, cmap)


def bg(locator) -> str:
    return locator.evaluate("el => getComputedStyle(el).backgroundColor")


def check_token_colours(page, root: str) -> None:
    for pos, (token, value) in zip(KNOWN_POSITIONS, KNOWN):
        tok = page.locator(f"{root} .nw-tok[data-pos='{pos}']")
        assert tok.count() == 1, f"token at position {pos} not drawn"
        want = value_color(value, KNOWN_VMAX)
        assert bg(tok) == want, f"token {token!r} ({value}): {bg(tok)} != {want}"


def check_patch_colours(page, root: str, cmap: str = "diverging") -> None:
    cells = page.locator(f"{root} .nw-cell")
    assert cells.count() == len(KNOWN_PATCHES)
    for p, value in enumerate(KNOWN_PATCHES):
        got = bg(page.locator(f"{root} .nw-cell[data-index='{p}']"))
        assert got == value_color(value, KNOWN_VMAX, cmap), f"patch {p} ({value}, {cmap}): {got}"


def check_cmap_and_opacity(page, root: str) -> None:
    page.locator(f"{root} select.nw-cmap").select_option("reveal")
    page.wait_for_function(
        "([sel, want]) => { const c = document.querySelector(sel); return c && getComputedStyle(c).backgroundColor === want; }",
        arg=[f"{root} .nw-cell[data-index='0']", value_color(KNOWN_PATCHES[0], KNOWN_VMAX, "reveal")],
    )
    check_patch_colours(page, root, "reveal")
    slider = page.locator(f"{root} input.nw-opacity")
    slider.evaluate("el => { el.value = '0.25'; el.dispatchEvent(new Event('input', {bubbles: true})); }")
    page.wait_for_function("sel => { const g = document.querySelector(sel); return g && getComputedStyle(g).opacity === '0.25'; }",
                           arg=f"{root} .nw-patch-grid")
    page.locator(f"{root} select.nw-cmap").select_option("diverging")
    page.wait_for_function(
        "([sel, want]) => { const c = document.querySelector(sel); return c && getComputedStyle(c).backgroundColor === want; }",
        arg=[f"{root} .nw-cell[data-index='0']", value_color(KNOWN_PATCHES[0], KNOWN_VMAX)],
    )


def check_controls_keep_focus(page, root: str) -> None:
    """The colour map and opacity controls are not rebuilt as they change: keys keep stepping, focus stays."""
    slider = page.locator(f"{root} input.nw-opacity")
    start = float(slider.input_value())
    slider.focus()
    for _ in range(4):
        slider.press("ArrowRight")
    page.wait_for_function("([sel, want]) => Math.abs(Number(document.querySelector(sel).value) - want) < 1e-6",
                           arg=[f"{root} input.nw-opacity", min(1.0, start + 0.2)])
    assert slider.evaluate("el => document.activeElement === el")
    pick = page.locator(f"{root} select.nw-cmap")
    options = pick.evaluate("el => [...el.options].map(o => o.value)")
    first = options.index(pick.input_value())
    pick.focus()
    pick.press("ArrowDown")
    pick.press("ArrowDown")
    want = options[min(first + 2, len(options) - 1)]
    page.wait_for_function("([sel, want]) => document.querySelector(sel).value === want", arg=[f"{root} select.nw-cmap", want])
    assert pick.evaluate("el => document.activeElement === el")


def check_hover(page, root: str) -> None:
    for pos, (token, value) in zip(KNOWN_POSITIONS[2:5], KNOWN[2:5]):
        page.locator(f"{root} .nw-tok[data-pos='{pos}']").hover()
        tip = page.locator(f"{root} .nw-tip")
        tip.wait_for(state="visible")
        text = tip.text_content()
        assert fmt(np.float32(value)) in text and token.replace("\n", "\u21b5") in text, text


def check_patch_hover(page, root: str) -> None:
    page.locator(f"{root} .nw-cell[data-index='3']").hover()
    tip = page.locator(f"{root} .nw-tip")
    page.wait_for_function("sel => (document.querySelector(sel) || {}).textContent?.includes('patch (1, 1)')", arg=f"{root} .nw-tip")
    assert fmt(np.float32(KNOWN_PATCHES[3])) in tip.text_content()


def check_no_injection(page, root: str, n_scripts: int | None = None) -> None:
    tok = page.locator(f"{root} .nw-tok[data-pos='{KNOWN_POSITIONS[3]}']")
    assert tok.text_content() == XSS, "the token shows as its own text"
    assert tok.evaluate("el => el.children.length") == 0, "no element created inside the token"
    assert page.locator("img[src='x']").count() == 0
    assert page.evaluate("() => [...document.querySelectorAll('img')].every(i => !i.getAttribute('onerror'))")
    if n_scripts is not None:
        assert page.locator("script").count() == n_scripts, "no script element added by data"
    assert not page.watch.dialogs, f"a dialog opened: {page.watch.dialogs}"


def check_chip_expands(page, root: str) -> None:
    chip = page.locator(f"{root} .nw-chip")
    assert chip.count() == 1 and "\u00d74" in chip.text_content()
    assert page.locator(f"{root} .nw-pcell").count() == 0
    chip.click()
    page.locator(f"{root} .nw-chip-grid .nw-pcell").first.wait_for()
    cells = page.locator(f"{root} .nw-chip-grid .nw-pcell")
    assert cells.count() == 4
    for p, value in enumerate(KNOWN_PATCHES):
        assert bg(cells.nth(p)) == value_color(value, KNOWN_VMAX)
    page.locator(f"{root} .nw-chip").click()
    page.wait_for_function("sel => document.querySelectorAll(sel).length === 0", arg=f"{root} .nw-pcell")


def check_patch_click(page, root: str, trace) -> None:
    page.locator(f"{root} .nw-cell[data-index='1']").click()
    page.locator(f"{root} .nw-top li").first.wait_for()
    items = page.locator(f"{root} .nw-top li").all_text_contents()
    expected = trace.top_neurons(0, 3, k=len(items))  # patch 1 is the image token at position 3
    assert [int(t.split()[1]) for t in items] == list(expected["neuron"])
    assert page.locator(f"{root} .nw-cell[data-index='1']").evaluate("el => el.classList.contains('nw-selected')")


def sim_signature(page, root: str) -> str:
    return page.locator(f"{root} .nw-ex-sim .nw-chart").get_attribute("data-signature") or ""


def wait_chart(page, root: str) -> str:
    page.wait_for_function("sel => { const c = document.querySelector(sel); return c && Number(c.dataset.version) > 0; }",
                           arg=f"{root} .nw-ex-sim .nw-chart", timeout=30_000)
    return sim_signature(page, root)


def token_texts(page, root: str) -> list[str]:
    return page.locator(f"{root} .nw-ex-tokens .nw-tok").all_text_contents()


def check_chart_layout(page, root: str) -> None:
    """The two charts side by side, finite size (an empty data set once broke vega's concat layout)."""
    size = page.locator(f"{root} .nw-chart svg").first.evaluate("s => [Number(s.getAttribute('width')), Number(s.getAttribute('height'))]")
    assert 0 < size[0] < 5000 and 0 < size[1] < 5000, size
    titles = page.locator(f"{root} .nw-chart .role-title-text text").evaluate_all(
        "ts => ts.map(t => [t.textContent, t.getBoundingClientRect().x])")
    xs = dict(titles)
    assert xs["all values"] - xs["per patch or token"] > 150, titles
