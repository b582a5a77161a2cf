"""End to end in JupyterLab: a real server on 127.0.0.1, a notebook showing each widget, a real Chromium.

Checks the colours of known activations, the value on hover, that a model string such as
`<img src=x onerror=alert(1)>` shows as text, that a click in the browser reaches the Python
traits, and that typing in the explorer's prompt box re-runs the model and changes the plot.
"""

from __future__ import annotations

import pytest

from tests.browser import checks
from tests.browser.conftest import publish_docs_screenshot, save_screenshot
from tests.browser.lab import LabServer, write_notebook

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CELLS = [
    # 0: the heatmaps over a trace with known activations
    """import ipywidgets as ipw
import neuronwidgets.widgets as W
from tests.browser.world import KNOWN_VMAX, known_trace, tiny_world
trace = known_trace()
tok = W.TokenHeatmap(trace, 0, 0, vmax=KNOWN_VMAX)
tok""",
    # 1: a click in the browser must reach Python: echo the selected patch into a Label
    """patch = W.PatchHeatmap(trace, 0, 0, vmax=KNOWN_VMAX)
echo = ipw.Label("selected -1")
echo.add_class("nw-test-echo")
patch.observe(lambda c: setattr(echo, "value", f"selected {c['new']} top {list(patch.top_neurons(3)['neuron'])}"), names="selected")
display(patch, echo)""",
    # 2: the dashboard on a real (tiny, random) LLaVA with a collected index and concept explanations
    """session, index, data, table = tiny_world()
ex = W.NeuronExplorer(session, index, explanations=table, layer=1, neuron=3)
ex""",
]


def wait_kernel_idle(page, timeout=120_000):
    page.wait_for_function(
        """() => {
          const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
          const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
          return k && k.status === 'idle';
        }""",
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    write_notebook(root / "widgets.ipynb", CELLS)
    with LabServer(root) as server:
        yield server


def test_widgets_in_jupyterlab(lab, tall_page, artifacts):
    page = tall_page
    page.watch.allow_hosts = (lab.base,)
    page.watch.block_network(page)
    page.goto(lab.url("widgets.ipynb"))
    page.wait_for_selector(".jp-Notebook", timeout=90_000)
    wait_kernel_idle(page)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    try:
        page.wait_for_selector(".nw-token-heatmap .nw-tok", timeout=60_000)
        page.wait_for_selector(".nw-patch-heatmap .nw-cell", timeout=60_000)
        page.wait_for_selector(".nw-explorer .nw-ex-tokens .nw-tok", timeout=180_000)
    except Exception:
        save_screenshot(page, artifacts, "lab-failure")
        raise

    # heatmaps: colours of known activations, hover, no injection, the chip, the patch grid
    tok, pat = ".nw-token-heatmap", ".nw-patch-heatmap"
    n_scripts = page.locator("script").count()
    checks.check_token_colours(page, tok)
    checks.check_patch_colours(page, pat)
    checks.check_no_injection(page, tok, n_scripts=n_scripts)
    checks.check_hover(page, tok)
    checks.check_patch_hover(page, pat)
    checks.check_chip_expands(page, tok)
    checks.check_cmap_and_opacity(page, pat)

    # a click reaches the kernel: the Label is set by a Python observer of `selected`
    from tests.browser.world import known_trace

    checks.check_patch_click(page, pat, known_trace())
    page.wait_for_function("() => (document.querySelector('.nw-test-echo') || {}).textContent?.startsWith('selected 1 ')")
    top = known_trace().top_neurons(0, 3, k=3)["neuron"].tolist()
    assert page.locator(".nw-test-echo").text_content() == f"selected 1 top {top}"
    save_screenshot(page, artifacts, "lab-heatmaps", ".nw-patch-heatmap")

    # the explorer: typing re-runs the model (debounced), real activations then simulated ones follow
    root = ".nw-explorer"
    before = checks.wait_chart(page, root)
    tokens_before = checks.token_texts(page, root)
    page.wait_for_function("sel => document.querySelector(sel).textContent === 'up to date'", arg=f"{root} .nw-status", timeout=60_000)
    box = page.locator(f"{root} textarea.nw-prompt")
    box.click()
    box.press("End")
    box.press_sequentially(" a red", delay=220)  # slower than the debounce: several requests in flight
    page.wait_for_function(
        """([sel, before]) => {
          const ex = document.querySelector(sel);
          const chart = ex.querySelector('.nw-ex-sim .nw-chart');
          return ex.dataset.seq === ex.dataset.sent && chart.dataset.signature !== before
            && ex.querySelector('.nw-sim-status').textContent === '';
        }""",
        arg=[root, before],
        timeout=60_000,
    )
    checks.check_chart_layout(page, root)
    tokens_after = checks.token_texts(page, root)
    assert tokens_after != tokens_before
    assert "".join(tokens_after).rstrip().endswith("a red"), tokens_after[-4:]
    assert page.locator(f"{root} .nw-status").text_content() == "up to date"
    assert int(page.locator(root).get_attribute("data-sent")) >= 2

    # a bad prompt is reported, and the panels keep their last good state
    box.fill("no image placeholder")
    page.wait_for_function("sel => document.querySelector(sel).textContent.includes('image placeholder')", arg=f"{root} .nw-status",
                           timeout=30_000)
    assert checks.token_texts(page, root) == tokens_after
    box.fill("USER: <image>\nWhat color is the circle? ASSISTANT: a red")
    page.wait_for_function("sel => document.querySelector(sel).textContent === 'up to date'", arg=f"{root} .nw-status", timeout=30_000)

    # the neuron picker reaches the kernel too
    page.locator(f"{root} .nw-match[data-layer='0'][data-neuron='4']").click()
    shows = "sel => document.querySelector(sel).textContent.includes('layer 0 \u00b7 neuron 4')"
    page.wait_for_function(shows, arg=f"{root} .nw-card .nw-nid", timeout=30_000)
    try:
        page.wait_for_function("sel => document.querySelector(sel).textContent === ''", arg=f"{root} .nw-sim-status", timeout=30_000)
    except Exception as err:
        raise AssertionError(f"simulation did not follow: {page.locator(f'{root} .nw-sim-status').text_content()!r}, "
                             f"{page.locator(root).get_attribute('data-seq')} / {page.locator(root).get_attribute('data-sent')}") from err
    checks.check_chart_layout(page, root)

    shot = save_screenshot(page, artifacts, "lab-explorer", root)
    publish_docs_screenshot(shot)
    save_screenshot(page, artifacts, "lab-notebook")
    assert not page.watch.dialogs, page.watch.dialogs
    assert not page.watch.requests, f"requests left the machine: {page.watch.requests}"
    widget_errors = [e for e in page.watch.errors if "nw-" in e or "neuronwidgets" in e]
    assert not widget_errors, widget_errors
