"""Widgets, Python side: state, binary payloads, one message per update, the explorer's prompt loop, escaping."""

from __future__ import annotations

import json
import re
import threading
import time

import numpy as np
import pytest
import traitlets
from ipywidgets.widgets.widget import _remove_buffers

import neuronwidgets.widgets as W
from neuronwidgets.records import discretize
from neuronwidgets.widgets import _assets, colors
from tests.browser.world import KNOWN_PATCHES, SCRIPT, XSS, known_trace, tiny_world

PROMPT = "USER: <image>\nWhat color is the circle? ASSISTANT:"


# --- helpers -------------------------------------------------------------------------------------
class Wire:
    """Records what a widget sends to the front-end (one entry per comm message)."""

    def __init__(self, widget):
        self.messages: list[tuple[dict, list]] = []
        widget._send = lambda msg, buffers=None: self.messages.append((msg, list(buffers or [])))

    def clear(self):
        self.messages.clear()

    def keys(self, i=-1) -> set:
        """The traits an update message carries (buffers included)."""
        msg = self.updates[i]
        return set(msg["state"]) | {p[0] for p in msg["buffer_paths"]}

    @property
    def updates(self):
        return [m for m, _ in self.messages if m.get("method") == "update"]

    def nbytes(self, i=-1) -> int:
        msg, buffers = self.messages[i]
        return len(json.dumps(msg)) + sum(len(bytes(b)) for b in buffers)


def frontend_sends(widget, content, buffers=()):
    """What `model.send(content, undefined, buffers)` in the browser does on the kernel side."""
    widget._handle_msg({"content": {"data": {"method": "custom", "content": content}}, "buffers": list(buffers)})


def frontend_sets(widget, **state):
    """What `model.set(...); model.save_changes()` in the browser does on the kernel side."""
    widget._handle_msg({"content": {"data": {"method": "update", "state": state, "buffer_paths": []}}, "buffers": []})


def float_lists(value, path=()):
    """Paths of JSON lists holding more than 4 floats (arrays must travel as buffers)."""
    out = []
    if isinstance(value, dict):
        for k, v in value.items():
            out += float_lists(v, (*path, k))
    elif isinstance(value, (list, tuple)):
        if sum(isinstance(x, float) for x in value) > 4:
            out.append(path)
        for i, v in enumerate(value):
            out += float_lists(v, (*path, i))
    return out


def f32(b) -> np.ndarray:
    return np.frombuffer(bytes(b), "<f4")


def i32(b) -> np.ndarray:
    return np.frombuffer(bytes(b), "<i4")


@pytest.fixture(scope="module")
def world():
    return tiny_world()


@pytest.fixture()
def explorer(world):
    session, index, data, table = world
    ex = W.NeuronExplorer(session, index, explanations=table, layer=0, neuron=4, async_simulation=False)
    yield ex
    ex.close()


# --- front-end modules ---------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [W.TokenHeatmap, W.PatchHeatmap, W.ExplanationCard, W.SimulationPlot, W.NeuronExplorer])
def test_each_widget_links_one_module_with_a_default_export(cls):
    modules = _assets.modules_for(cls._entry)
    assert modules[-1] == cls._entry and modules[0] == "core.js"
    source, vega = _assets._link_source(cls._entry)
    assert source.count("export default") == 1
    assert not re.search(r"^\s*import\b", source, re.M), "sibling imports must be linked away"
    assert vega == (cls in (W.SimulationPlot, W.NeuronExplorer))


def test_package_ships_the_js_and_css_files():
    names = {p.name for p in _assets.JS_DIR.iterdir()}
    assert {"core.js", "host.js", "widgets.css", "explorer.js"} <= names
    assert all(not n.endswith((".ts", ".jsx")) for n in names), "plain ES modules only: no build step"


def test_linker_refuses_modules_breaking_its_rules(tmp_path, monkeypatch):
    monkeypatch.setattr(_assets, "JS_DIR", tmp_path)
    (tmp_path / "a.js").write_text('import x from "https://cdn.example/x.js";\nexport default {};\n')
    with pytest.raises(_assets.LinkError, match="only sibling imports"):
        _assets._link_source("a.js")
    (tmp_path / "b.js").write_text("export function dup() {}\n")
    (tmp_path / "c.js").write_text('import { dup } from "./b.js";\nfunction dup() {}\nexport default {};\n')
    with pytest.raises(_assets.LinkError, match="defined in both"):
        _assets._link_source("c.js")


def test_no_front_end_module_writes_html_from_data():
    for path in _assets.JS_DIR.glob("*.js"):
        text = path.read_text()
        assert not re.search(r"\.(innerHTML|outerHTML)\b|insertAdjacentHTML|document\.write|createContextualFragment", text), path.name


def test_chart_widgets_bundle_vega_offline():
    esm = W.SimulationPlot.from_arrays([1.0, 2.0], [1.0, 2.0])._esm
    assert "export" in esm and len(esm) > 300_000  # vega, vega-lite and vega-embed inside
    assert "cdn.jsdelivr" not in esm and "esm.sh" not in esm


# --- colours -------------------------------------------------------------------------------------
def test_levels_are_the_records_discretisation():
    values = np.linspace(-1.3, 1.3, 53, dtype=np.float32)
    levels = np.array([colors.level(v, 1.1) for v in values])
    np.testing.assert_array_equal(np.maximum(levels, 0), discretize(values, 1.1))
    np.testing.assert_array_equal(np.maximum(-levels, 0), discretize(-values, 1.1))


def test_colour_maps():
    assert colors.level_color(0) == "rgb(255, 255, 255)"
    assert colors.level_color(10) == "rgb(214, 96, 77)"
    assert colors.level_color(-10) == "rgb(67, 147, 195)"
    assert colors.level_color(5) == "rgb(235, 176, 166)"
    assert colors.level_color(10, "reveal") == "rgba(255, 255, 255, 0)"
    assert colors.level_color(3, "reveal") == "rgba(255, 255, 255, 0.7)"
    assert colors.level_color(-4, "viridis") == colors.level_color(0, "viridis") == "rgb(68, 1, 84)"
    assert colors.level(5.0, 0) == 0 and colors.level(float("nan"), 1) == 0


# --- TokenHeatmap ----------------------------------------------------------------------------------
def test_token_heatmap_state_is_binary_and_faithful():
    trace = known_trace()
    w = W.TokenHeatmap(trace, layer=0, neuron=0)
    np.testing.assert_array_equal(f32(w.values), trace.neuron(0, 0))
    patch = i32(w.patch)
    assert list(patch[:6]) == [-1, -1, 0, 1, 2, 3] and (patch[6:] == -1).all()
    assert w.tokens[7] == XSS and w.tokens[8] == SCRIPT, "tokens are kept verbatim (the browser sets them as text)"
    assert w.tokens[2:6] == [""] * 4 and w.image_token == "<image>"
    assert w.vmax == pytest.approx(1.0) and w.grid == [2, 2]
    state, paths, buffers = _remove_buffers(w.get_state())
    assert ["values"] in paths and ["patch"] in paths
    assert not float_lists(state)


def test_token_heatmap_scale_comes_from_the_index(world):
    session, index, data, _ = world
    trace = session.trace(data[0].image, PROMPT, layers=[1])
    w = W.TokenHeatmap(trace, 1, 3, index=index)
    assert w.vmax == pytest.approx(index.neuron_max(1, 3))
    assert W.TokenHeatmap(trace, 1, 3, vmax=2.5).vmax == 2.5


def test_token_heatmap_neuron_change_is_one_message():
    trace = known_trace()
    w = W.TokenHeatmap(trace, 0, 0)
    wire = Wire(w)
    w.neuron = 1  # from Python: the new neuron and its values still go as one message
    assert len(wire.updates) == 1 and set(wire.updates[0]["state"]) == {"neuron"} and wire.updates[0]["buffer_paths"] == [["values"]]
    np.testing.assert_array_equal(f32(w.values), -trace.neuron(0, 0))
    wire.clear()
    w.update(neuron=2)
    assert len(wire.updates) == 1 and wire.keys(0) >= {"neuron", "values"}


# --- PatchHeatmap ------------------------------------------------------------------------------------
def test_patch_heatmap_values_top_neurons_and_selection():
    trace = known_trace()
    w = W.PatchHeatmap(trace, 0, 0, k=3)
    np.testing.assert_allclose(f32(w.values), KNOWN_PATCHES)
    assert w.image.startswith(b"\x89PNG") and w.k == 3
    ids = i32(w.top_ids).reshape(4, 3)
    vals = f32(w.top_values).reshape(4, 3)
    for p in range(4):
        pos = 2 + p
        expected = trace.top_neurons(0, pos, k=3)
        assert list(ids[p]) == list(expected["neuron"])
        np.testing.assert_allclose(vals[p], expected["activation"])
    assert w.top_neurons().empty
    frontend_sets(w, selected=1)  # a click on patch (0, 1)
    assert w.selected_patch == (0, 1)
    assert list(w.top_neurons(k=3)["neuron"]) == list(ids[1])
    w.opacity = 3.0
    assert w.opacity == 1.0
    with pytest.raises(traitlets.TraitError):
        w.cmap = "jet"


def test_patch_heatmap_needs_an_image():
    trace = known_trace()
    trace.image = None
    with pytest.raises(ValueError, match="no image"):
        W.PatchHeatmap(trace, 0, 0)


# --- ExplanationCard ----------------------------------------------------------------------------------
def test_explanation_card_from_a_scored_explanation(world):
    from neuronwidgets.explain import ConceptSimulator, Explanation, score

    session, index, data, table = world
    row = table[(table.layer == 0) & (table.neuron == 4)].iloc[0].to_dict()
    exp = Explanation.from_row(row)
    exp.text = XSS  # text from an LLM: kept verbatim, shown as text
    result = score(exp, index, ConceptSimulator(data), holdout=index.records(0, 4, "top")[:2] + index.records(0, 4, "random")[:2])
    card = W.ExplanationCard(exp, result, index=index, k=2)
    assert card.header["text"] == XSS and card.header["layer"] == 0 and card.header["neuron"] == 4
    assert card.header["category"] == exp.category
    assert card.score["score"] == pytest.approx(result.score, nan_ok=True) or np.isnan(result.score)
    assert set(card.score.get("kinds", {})) <= {"top", "random", "all"}
    assert len(card.exemplars) == 2
    ex = card.exemplars[0]
    assert ex["image"].startswith(b"\x89PNG") and f32(ex["values"]).size == 16 and ex["grid"] == [4, 4]
    assert set(card.hist) == {"image", "text"}
    assert card.vmax == pytest.approx(index.neuron_max(0, 4))
    state, paths, _ = _remove_buffers(card.get_state())
    assert ["exemplars", 0, "values"] in paths and not float_lists(state)


def test_explanation_card_finds_exemplar_images_by_sample_id(world):
    """A dataset given to the card need not be the index's own: a superset or another order finds each sample by its id."""
    from neuronwidgets.widgets._base import png
    from neuronwidgets.widgets.card import EXEMPLAR_IMAGE_SIDE

    session, index, data, table = world
    shuffled = list(reversed(data))  # every sample at another position
    row = table[(table.layer == 0) & (table.neuron == 4)].iloc[0].to_dict()
    card = W.ExplanationCard(row, index=index, dataset=shuffled, k=2)
    records = index.records(0, 4, "top")[:2]
    for ex, rec in zip(card.exemplars, records):
        sample = next(s for s in data if s.id == rec.sample_id)
        assert ex["sample_id"] == rec.sample_id and ex["image"] == png(sample.image, EXEMPLAR_IMAGE_SIDE)


def test_explanation_card_from_a_table_row_uses_its_scores(world):
    table = world[3]
    row = table.iloc[3]
    card = W.ExplanationCard(row)
    assert card.score["score"] == pytest.approx(row["score"])
    assert card.exemplars == [] and card.hist == {}


# --- SimulationPlot ----------------------------------------------------------------------------------
def test_simulation_plot_from_a_score_result(world):
    from neuronwidgets.explain import ConceptSimulator, Explanation, score
    from neuronwidgets.explain.scoring import pearson

    session, index, data, table = world
    exp = Explanation(layer=1, neuron=3, category="text", text="a")
    result = score(exp, index, ConceptSimulator(data), holdout=index.records(1, 3, "top")[:3] + index.records(1, 3, "random")[:3])
    plot = W.SimulationPlot(result)
    ok = result.per_input[result.per_input["simulated"].notna()]
    real = np.concatenate(list(ok["real"]))
    sim = np.concatenate(list(ok["simulated"]))
    np.testing.assert_allclose(f32(plot.real), real, rtol=1e-6)
    np.testing.assert_allclose(f32(plot.simulated), sim, rtol=1e-6)
    expected = pearson(real, sim)
    assert plot.corr == pytest.approx(expected, abs=1e-5) if np.isfinite(expected) else plot.corr is None
    assert len(plot.inputs) == len(ok) and plot.n == real.size
    assert plot.labels == [tok for tokens in ok["tokens"] for tok in tokens]  # tokens, not indices, on hover
    assert "score" in plot.title
    datasets = json.dumps(plot.spec)
    assert '"name": "points"' in datasets and '"name": "focus"' in datasets and '"values"' not in datasets
    state, paths, _ = _remove_buffers(plot.get_state())
    assert not float_lists(state)


def test_simulation_plot_update_redraws_in_one_message():
    plot = W.SimulationPlot.from_arrays([0.0, 1.0, 2.0], [0.0, 5.0, 10.0], labels=["a", "b", "c"])
    assert plot.corr == pytest.approx(1.0) and plot.labels == ["a", "b", "c"]
    wire = Wire(plot)
    plot.update(real=[2.0, 1.0, 0.0], simulated=[0.0, 5.0, 10.0], labels=["x", "y", "z"])
    assert len(wire.updates) == 1
    assert plot.corr == pytest.approx(-1.0)
    plot.update(real=[1.0, 2.0], simulated=None)
    assert plot.n == 0 and plot.corr is None


# --- NeuronExplorer -----------------------------------------------------------------------------------
def test_explorer_initial_state(explorer, world):
    session, index, data, table = world
    ex = explorer
    assert ex.layers == index.layers and ex.n_neurons == index.n_neurons
    assert (ex.layer, ex.neuron) == (0, 4)
    assert ex.prompt == data[0].qa[0].prompt and ex.prompt in ex.prompts
    assert len(ex.images) == 8 and ex.images[0]["thumb"].startswith(b"\x89PNG")
    assert ex.card["header"]["text"] == table[(table.layer == 0) & (table.neuron == 4)]["text"].iloc[0]
    trace = session.trace(data[0].image, ex.prompt, layers=[0])
    np.testing.assert_allclose(f32(ex.tokens_view["values"]), trace.neuron(0, 4), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f32(ex.patch_view["values"]), trace.image_map(0, 4).ravel(), rtol=1e-5, atol=1e-6)
    assert ex.tokens_view["vmax"] == pytest.approx(index.neuron_max(0, 4))
    category = table[(table.layer == 0) & (table.neuron == 4)]["category"].iloc[0]
    per = {"text": {"text"}, "visual": {"image"}}.get(category, {"image", "text"})  # per token, per patch, or both
    assert ex.sim["status"] == "" and {i["modality"] for i in ex.sim["inputs"]} == per
    state, _, _ = _remove_buffers(ex.get_state())
    assert not float_lists(state)


def test_explorer_prompt_change_updates_real_activations_in_one_message(explorer, world):
    session, index, data, table = world
    ex = explorer
    wire = Wire(ex)
    new = "USER: <image>\nWhat shape is the red one? ASSISTANT:"
    frontend_sends(ex, {"type": "prompt", "prompt": new, "seq": 7})
    assert len(wire.updates) == 1, "real activations, card, plot and seq go as one message"
    sent = wire.keys(0)
    assert {"seq", "prompt", "tokens_view", "sim"} <= set(sent)
    # The image's tokens come before the question: under causal attention their values do not
    # change, so the patch panel (like the image) is not resent.
    assert "image" not in sent and "images" not in sent and "patch_view" not in sent, "unchanged traits are not resent"
    assert ex.seq == 7 and ex.prompt == new and ex.status == ""
    trace = session.trace(data[0].image, new, layers=[0])
    np.testing.assert_allclose(f32(ex.tokens_view["values"]), trace.neuron(0, 4), rtol=1e-5, atol=1e-6)
    assert ex.tokens_view["tokens"] == [("" if m == "image" else t) for t, m in zip(trace.tokens["token"], trace.tokens["modality"])]
    category = table[(table.layer == 0) & (table.neuron == 4)]["category"].iloc[0]
    modalities = {"text": ["text"], "visual": ["image"]}.get(category, ["image", "text"])
    assert ex.sim["status"] == "" and len(f32(ex.sim["real"])) == trace.tokens["modality"].isin(modalities).sum()
    assert wire.nbytes() < 20_000


def test_explorer_bad_prompt_reports_and_keeps_the_last_panels(explorer):
    ex = explorer
    before = ex.tokens_view
    wire = Wire(ex)
    frontend_sends(ex, {"type": "prompt", "prompt": "no placeholder here", "seq": 3})
    assert len(wire.updates) == 1 and ex.seq == 3
    assert "image placeholder" in ex.status
    assert ex.tokens_view is before
    frontend_sends(ex, {"type": "prompt", "prompt": PROMPT, "seq": 4})
    assert ex.status == "" and ex.seq == 4


def test_explorer_python_side_changes_are_one_message_each(explorer):
    ex = explorer
    wire = Wire(ex)
    ex.neuron = 5
    ex.prompt = "USER: <image>\nWhat color is the square? ASSISTANT:"
    assert len(wire.updates) == 2
    assert "tokens_view" in wire.keys(1) and ex.card["header"]["neuron"] == 5


def test_explorer_frontend_picks_a_neuron_and_filters(explorer, world):
    table = world[3]
    ex = explorer
    wire = Wire(ex)
    frontend_sets(ex, neuron=3)
    assert len(wire.updates) == 1
    assert ex.card["header"]["neuron"] == 3
    frontend_sets(ex, neuron=10_000)  # out of range: refused, the old one kept
    assert ex.neuron == 3
    frontend_sets(ex, category="text")
    assert ex.matches and all(m["category"] == "text" for m in ex.matches)
    word = str(table.iloc[0]["text"]).split()[0]
    frontend_sets(ex, category="", search=word.upper())
    assert ex.matches and all(word in m["text"] for m in ex.matches)
    frontend_sets(ex, layer=1)
    assert ex.layer == 1 and ex.patch_view["layer"] == 1


def test_explorer_image_pick_and_upload(explorer, world):
    import io

    from PIL import Image

    ex = explorer
    frontend_sets(ex, image_index=2)
    assert ex.selected == -1 and ex.image.startswith(b"\x89PNG")
    assert ex.prompt in ex.prompts
    buf = io.BytesIO()
    Image.new("RGB", (50, 30), (200, 10, 10)).save(buf, format="PNG")
    frontend_sends(ex, {"type": "upload", "name": "red.png", "seq": 5}, [memoryview(buf.getvalue())])
    assert ex.image_index == len(ex.images) - 1 and ex.images[-1]["label"] == "uploaded: red.png"
    assert ex.seq == 5 and ex.status == ""
    assert "MasksError" not in ex.sim["status"]
    frontend_sends(ex, {"type": "upload", "name": "junk.png", "seq": 6}, [memoryview(b"not an image")])
    assert "could not read" in ex.status and ex.seq == 6


class SlowSimulator:
    """Takes a while, and records what it was asked."""

    def __init__(self, delay=0.3):
        self.delay, self.calls = delay, []
        self.gate = threading.Event()

    def simulate(self, explanation, item, modality, *, sample=None, grid=None, tokens=None):
        self.calls.append(tokens)
        time.sleep(self.delay)
        n = grid[0] * grid[1] if modality == "image" else len(tokens)
        return np.full(n, 7.0)


def test_explorer_simulation_follows_and_stale_results_are_dropped(world):
    session, index, data, table = world
    sim = SlowSimulator()
    ex = W.NeuronExplorer(session, index, explanations=table, layer=0, neuron=4, simulator=sim, async_simulation=True)
    try:
        ex.wait()
        wire = Wire(ex)
        ex.set_prompt("USER: <image>\nWhat color is the square? ASSISTANT:")
        assert len(wire.updates) == 1, "the real activations go at once"
        assert ex.sim["status"].startswith("simulating")
        ex.set_prompt("USER: <image>\nWhat color is the triangle? ASSISTANT:")  # typed on before the simulation came back
        ex.wait()
        time.sleep(0.05)
        assert ex.sim["status"] == ""
        assert (f32(ex.sim["simulated"]) == 7.0).all()
        last = ex.tokens_view["tokens"]
        assert sim.calls[-1] == [t for t in last if t]
        sim_messages = [i for i in range(len(wire.updates)) if wire.keys(i) == {"sim"}]
        assert len(sim_messages) == 1, "the simulation of the stale prompt is never sent"
    finally:
        ex.close()


def test_explorer_without_simulator_says_so(world):
    session, index, data, table = world
    ex = W.NeuronExplorer(session, index, explanations=table, layer=0, neuron=4, simulator=None)
    assert ex.sim["status"].startswith("no simulator")
    assert f32(ex.sim["simulated"]).size == f32(ex.sim["real"]).size and np.isnan(f32(ex.sim["simulated"])).all()


def test_explorer_on_a_bare_image_without_index(world):
    session = world[0]
    ex = W.NeuronExplorer(session, image=np.zeros((40, 40, 3), np.uint8))
    assert ex.layers == list(range(session.n_layers)) and ex.images[0]["label"] == "your image"
    assert ex.card["header"]["layer"] == ex.layer and ex.matches == []


# --- static export ---------------------------------------------------------------------------------
def _embedded(html: str):
    state = re.search(r'<script type="application/vnd.jupyter.widget-state\+json" id="nw-state">(.*?)</script>', html, re.S).group(1)
    modules = re.search(r'<script type="application/json" id="nw-modules">(.*?)</script>', html, re.S).group(1)
    return json.loads(state), json.loads(modules)


def test_to_html_escapes_and_embeds_buffers(tmp_path):
    import base64

    trace = known_trace()
    a, b = W.TokenHeatmap(trace, 0, 0), W.TokenHeatmap(trace, 0, 1)
    path = W.to_html([a, b], tmp_path / "tokens.html")
    html = path.read_text()
    import html as _h
    csp = _h.unescape(re.search(r'Content-Security-Policy" content="([^"]*)"', html).group(1))
    assert html.count("<script") == 3 and html.count("</script>") == 3, "data cannot open or close a script"
    assert "<!--" not in html and XSS not in html and "alert(2)" in html
    state, modules = _embedded(html)
    assert len(modules) == 1, "one module per widget class"
    models = list(state["state"].values())
    assert len(models) == 2 and all(m["model_module"] == "anywidget" for m in models)
    first = models[0]
    assert first["state"]["tokens"][7] == XSS and first["state"]["tokens"][8] == SCRIPT
    assert "_esm" not in first["state"] and "_css" not in first["state"]
    buffers = {tuple(b["path"]): b for b in first["buffers"]}
    assert buffers[("values",)]["encoding"] == "base64"
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(buffers[("values",)]["data"]), "<f4"), trace.neuron(0, 0))
    assert not float_lists(first["state"])
    assert "connect-src 'none'" in csp and "default-src 'none'" in csp
    assert not re.search(r'<(link|img|iframe)[^>]+(src|href)=', html), "nothing loaded from outside the page"
    assert len(_assets.host_js().splitlines()) < 200


def test_widget_to_html_method_and_csp_hash(tmp_path):
    import base64
    import hashlib

    path = W.PatchHeatmap(known_trace(), 0, 0).to_html(tmp_path / "patch.html")
    html = path.read_text()
    import html as _h
    csp = _h.unescape(re.search(r'Content-Security-Policy" content="([^"]*)"', html).group(1))
    host = _assets.host_js()
    digest = base64.b64encode(hashlib.sha256(host.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp and f"<script type=\"module\">{host}</script>" in html
    assert "unsafe-eval" not in csp, "only chart pages allow vega's Function()"


def test_explorer_export_precomputes_prompts_and_neurons(explorer, tmp_path):
    ex = explorer
    prompts = [ex.prompt, "USER: <image>\nWhat shape is the red one? ASSISTANT:", "not a valid prompt"]
    path = ex.to_html(tmp_path / "explorer.html", prompts=prompts, neurons=[(1, 3)])
    state, modules = _embedded(path.read_text())
    model = next(iter(state["state"].values()))
    snaps = model["state"]["_snapshots"]
    assert {(s["layer"], s["neuron"], s["prompt"]) for s in snaps} == {(a, b, p) for a, b in [(0, 4), (1, 3)] for p in prompts[:2]}
    assert model["state"]["prompts"] == prompts[:2]
    assert [(m["layer"], m["neuron"]) for m in model["state"]["matches"]] == [(0, 4), (1, 3)]
    paths = {tuple(b["path"]) for b in model["buffers"]}
    assert ("_snapshots", 1, "state", "tokens_view", "values") in paths
    assert "unsafe-eval" in path.read_text()


def test_explorer_frontend_neuron_pick_while_simulations_run(world):
    """A pick from the browser sets layer and neuron in one message while simulations run on
    their thread: the last simulated panel sent is the finished one (no change lost in a batch)."""
    session, index, data, table = world
    for _ in range(5):
        ex = W.NeuronExplorer(session, index, explanations=table, layer=1, neuron=3, simulator=SlowSimulator(0.01))
        try:
            ex.wait()
            wire = Wire(ex)
            frontend_sends(ex, {"type": "prompt", "prompt": PROMPT + " a red", "seq": 1})
            frontend_sets(ex, layer=0, neuron=4)
            ex.wait()
            time.sleep(0.05)
            sims = [m["state"]["sim"]["status"] for m in wire.updates if "sim" in m["state"]]
            assert sims and sims[-1] == "", sims
            assert ex.card["header"]["neuron"] == 4
        finally:
            ex.close()


def test_neurons_of_another_site_are_refused_and_another_model_name_warned(world):
    """Layer 0 neuron 4 at site 'mlp_in' is another neuron than at 'act': mixing them would show wrong scales and scores."""
    import copy
    import dataclasses

    from neuronwidgets.explain import ConceptSimulator, Explanation, score

    session, index, data, table = world
    other_site = copy.copy(index)
    other_site.manifest = {**index.manifest, "site": "mlp_in"}
    trace = session.trace(data[0].image, "USER: <image>\nWhat is the shape? ASSISTANT:", layers=[0])
    for make in (lambda: W.PatchHeatmap(trace, 0, 4, index=other_site), lambda: W.TokenHeatmap(trace, 0, 4, index=other_site),
                 lambda: W.PatchHeatmap(dataclasses.replace(trace, site="mlp_in"), 0, 4, index=index),
                 lambda: W.NeuronExplorer(session, other_site, async_simulation=False)):
        with pytest.raises(ValueError, match="site 'act' against site 'mlp_in'|site 'mlp_in' against site 'act'"):
            make()
    w = W.TokenHeatmap(trace, 0, 4, index=index)
    with pytest.raises(ValueError, match="site"):
        w.update(trace=dataclasses.replace(trace, site="mlp_in"))
    assert w.trace is trace
    exp = Explanation.from_row(table[(table.layer == 0) & (table.neuron == 4)].iloc[0].to_dict())
    with pytest.raises(ValueError, match="held-out index record different neurons"):
        score(exp, index, ConceptSimulator(data), holdout=other_site, baseline=False)
    renamed = copy.copy(index)
    renamed.manifest = {**index.manifest, "model": "another-model"}
    with pytest.warns(UserWarning, match="different models"):
        W.PatchHeatmap(trace, 0, 4, index=renamed)


def test_heatmaps_refuse_a_layer_or_neuron_the_trace_lacks_and_keep_what_they_show(world):
    session, index, data, table = world
    trace = session.trace(data[0].image, "USER: <image>\nWhat is the shape? ASSISTANT:", layers=[0])
    for cls in (W.PatchHeatmap, W.TokenHeatmap):
        w = cls(trace, 0, 4)
        values = w.values
        for name, bad in (("neuron", 10_000), ("layer", 1)):
            with pytest.raises(IndexError):
                setattr(w, name, bad)
        assert (w.layer, w.neuron, w.values) == (0, 4, values)
        with pytest.raises(TypeError, match="whole number"):
            cls(trace, 0, 1.5)
    w = W.PatchHeatmap(trace, 0, 4)
    with pytest.raises(traitlets.TraitError, match="patch number 0..15"):
        w.selected = 16


def test_simulation_plot_counts_the_pairs_its_correlation_reads():
    """'r over N values': N counts inputs with both a real and a simulated value (NaN reals were counted)."""
    import warnings

    nan = float("nan")
    plot = W.SimulationPlot.from_arrays([1.0, 2.0, 3.0, nan, nan, nan], [1, 2, 4, 5, 6, 7])
    assert plot.n == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all-NaN reals: no "All-NaN slice" warning
        assert W.SimulationPlot.from_arrays([nan] * 4, [1, 2, 3, 4]).n == 0
