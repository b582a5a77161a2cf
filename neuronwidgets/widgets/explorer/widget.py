"""NeuronExplorer: the dashboard. Pick a neuron and an input, edit the prompt, watch the neuron respond.

This module holds the widget (traits, events, caching, threads); what it shows comes from
sources.py (explanations, categories, images), panels.py (heatmaps, neuron list),
simulation.py (simulated vs real) and export.py (the static page).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import traitlets as t

from neuronwidgets.checks import whole_number
from neuronwidgets.store.identity import check_same_neurons
from neuronwidgets.widgets._base import NeuronWidget, png
from neuronwidgets.widgets.card import card_state, resolve_decoding
from neuronwidgets.widgets.colors import CMAPS
from neuronwidgets.widgets.explorer import clamp as clamp_view
from neuronwidgets.widgets.explorer import sources
from neuronwidgets.widgets.explorer.export import export_state
from neuronwidgets.widgets.explorer.panels import heatmap_panels, neuron_matches
from neuronwidgets.widgets.explorer.simulation import (
    failed_panel,
    modalities_for,
    sim_panel,
)
from neuronwidgets.widgets.simulation_plot import chart_spec

if TYPE_CHECKING:
    from pathlib import Path

    from neuronwidgets.datasets.base import Sample
    from neuronwidgets.decode.lm_head import NeuronDecoding
    from neuronwidgets.explain.base import NeuronSimulator
    from neuronwidgets.model.inputs import ImageLike
    from neuronwidgets.model.session import Session
    from neuronwidgets.model.trace import Trace
    from neuronwidgets.store.index import NeuronIndex
    from neuronwidgets.widgets.explorer.sources import ExplanationsLike

#: How many traces (input, prompt, layer) the explorer keeps: going back to a prompt costs nothing.
TRACE_CACHE = 16


class NeuronExplorer(NeuronWidget):
    """Pick a neuron (layer, index, category filter, search in explanations), pick or upload
    an image, edit the prompt: the real activations update as you type (debounced in the
    browser, stale replies dropped), the simulated ones follow when ready, and the card shows
    the neuron's explanation, score, exemplars and histogram.

    >>> nw.NeuronExplorer(session, index)
    >>> nw.NeuronExplorer(session, index, simulator=nw.ConceptSimulator(data), layer=1, neuron=42)

    session: a Session (runs the model on each edit). index: a NeuronIndex (neuron maxima for
    the colour scale, categories, explanations, exemplars, histograms; its dataset gives the
    images to pick from). simulator: an object with `simulate(explanation, sample, modality,
    sample=, grid=, tokens=)`, "auto" (a ConceptSimulator over the dataset when it has concept
    masks) or None. explanations: a table like `index.explanations()` or a list of
    Explanations (default: the index's). `to_html(path, prompts=[...], neurons=[...])`
    precomputes those prompts and neurons for the static page. decoding: a NeuronDecoding
    whose token lists the card shows ("auto": the one saved in the index's folder, if any);
    the clamp slider sets the neuron to a value and shows the answer and next-token
    probabilities before and after (`clamp(value)` does the same from Python).
    """

    _entry = "explorer.js"

    _sync_together = ("layer", "neuron", "image_index", "prompt", "category", "search")

    # neuron picker
    layers = t.List(t.Int()).tag(sync=True)
    n_neurons = t.Int(0).tag(sync=True)
    layer = t.Int(0).tag(sync=True)
    neuron = t.Int(0).tag(sync=True)
    categories = t.List(t.Unicode()).tag(sync=True)
    category = t.Unicode("").tag(sync=True)
    search = t.Unicode("").tag(sync=True)
    matches = t.List(t.Dict()).tag(sync=True)
    # input
    images = t.List(t.Dict()).tag(sync=True)  # {label, thumb: PNG bytes}
    image_index = t.Int(0).tag(sync=True)
    image = t.Bytes().tag(sync=True)  # PNG of the current image (the square the patch grid covers)
    prompt = t.Unicode("").tag(sync=True)
    prompts = t.List(t.Unicode()).tag(sync=True)  # suggestions
    seq = t.Int(0).tag(sync=True)  # the last prompt request answered
    status = t.Unicode("").tag(sync=True)  # an error to show ("" when all is well)
    # panels (each one Dict: its arrays travel as binary buffers)
    tokens_view = t.Dict().tag(sync=True)
    patch_view = t.Dict().tag(sync=True)
    cmap = t.Enum(CMAPS, default_value="diverging").tag(sync=True)
    opacity = t.Float(0.6).tag(sync=True)
    selected = t.Int(-1).tag(sync=True)
    expanded = t.Bool(False).tag(sync=True)
    card = t.Dict().tag(sync=True)
    sim = t.Dict().tag(sync=True)
    sim_spec = t.Dict().tag(sync=True)
    # clamping (issue 25): the slider's [min, max, step], and the last clamp's before/after
    clamp_range = t.List(t.Float()).tag(sync=True)
    clamp_view = t.Dict().tag(sync=True)

    def __init__(self, session: Session, index: NeuronIndex | None = None, *, dataset: Sequence[Sample] | None = None,
                 simulator: NeuronSimulator | str | None = "auto",
                 explanations: ExplanationsLike = None,
                 layer: int | None = None, neuron: int | None = None, image: ImageLike | None = None, prompt: str | None = None,
                 n_images: int = 8, k: int = 8, async_simulation: bool = True, max_matches: int = 200, card_exemplars: int = 3,
                 decoding: NeuronDecoding | str | None = "auto") -> None:
        if index is not None:
            check_same_neurons(session, index, "the session and the index")
        self.session, self.index = session, index
        self.dataset = dataset if dataset is not None else getattr(index, "dataset", None)
        self._k, self._max_matches, self._card_k = int(k), int(max_matches), int(card_exemplars)
        self._async = bool(async_simulation)
        self._sync_lock = self._lock = threading.RLock()  # see NeuronWidget.__init__
        self._pool: ThreadPoolExecutor | None = None
        self._sim_token: tuple | None = None
        self._traces: OrderedDict = OrderedDict()
        self._cards: dict = {}
        self._busy = False
        self._explanations = sources.explanation_table(index, explanations)
        self.decoding = resolve_decoding(decoding, index)
        self._free: OrderedDict = OrderedDict()  # (image_index, prompt) -> the unclamped side of the clamp panel
        self._categories = sources.category_table(index, self._explanations)
        self.simulator = sources.pick_simulator(simulator, self.dataset)
        self._inputs = sources.initial_images(self.dataset, image, n_images)

        layers = list(index.layers) if index is not None else list(range(session.n_layers))
        n_neurons = int(index.n_neurons) if index is not None else int(session.n_neurons)
        if layer is None or neuron is None:
            first = sources.first_neuron(self._explanations, self._categories, layers)
            layer = first[0] if layer is None else layer
            neuron = first[1] if neuron is None else neuron
        layer, neuron = whole_number(layer, "layer"), whole_number(neuron, "neuron")
        if layer not in layers:
            raise IndexError(f"layer {layer} is not available; layers: {layers}")
        if not 0 <= neuron < n_neurons:
            raise IndexError(f"neuron {neuron} is out of range 0..{n_neurons - 1}")
        first_sample = self._inputs[0][1] if self._inputs else None
        prompt = prompt if prompt is not None else sources.default_prompt(session.adapter.prompt_template, first_sample)
        super().__init__(
            layers=layers, n_neurons=n_neurons, layer=int(layer), neuron=int(neuron),
            categories=sources.category_names(self._categories),
            images=[{"label": lab, "thumb": sources.thumb(im)} for im, _, lab in self._inputs],
            image_index=0, prompt=prompt, prompts=sources.suggestions(first_sample, prompt), sim_spec=chart_spec(),
        )
        with self.hold_sync():
            self.matches = self._matches()
            self._refresh(image_changed=True)
        self.observe(self._on_trait, names=["layer", "neuron", "image_index", "prompt", "category", "search"])
        self.on_msg(self._on_msg)

    # --- what the panels read ------------------------------------------------------------------
    def trace_for(self, image_index: int, prompt: str, layer: int) -> Trace:
        """The trace of the current model on input `image_index` with `prompt`, recording `layer` (cached)."""
        key = (image_index, prompt, layer)
        with self._lock:
            hit = self._traces.get(key)
            if hit is not None:
                self._traces.move_to_end(key)
                return hit
        trace = self.session.trace(self._inputs[image_index][0], prompt, layers=[layer])
        with self._lock:
            self._traces[key] = trace
            while len(self._traces) > TRACE_CACHE:
                self._traces.popitem(last=False)
        return trace

    def explanation_row(self, layer: int, neuron: int) -> dict | None:
        """The explanation table's row for this neuron (None when it has none)."""
        return self._explanations.get((int(layer), int(neuron)))

    def category_of(self, layer: int, neuron: int) -> str | None:
        """The neuron's category (its explanation's, else the index's), None when unknown."""
        return self._categories.get((int(layer), int(neuron)))

    def _card(self, layer: int, neuron: int) -> dict[str, Any]:
        key = ("card", layer, neuron)
        with self._lock:
            hit = self._cards.get(key)
        if hit is None:
            row = self.explanation_row(layer, neuron)
            if row is None:
                row = {"layer": layer, "neuron": neuron, "category": self.category_of(layer, neuron) or "unknown"}
            hit = card_state(row, None, self.index, k=self._card_k, dataset=self.dataset, decoding=self.decoding)
            with self._lock:
                self._cards[key] = hit
        return hit

    def _sample_for(self, image_index: int, trace: Trace):
        """The dataset sample behind input `image_index`, or a stand-in Sample for an uploaded image."""
        sample = self._inputs[image_index][1]
        if sample is None:
            from neuronwidgets.datasets.base import Sample

            sample = Sample(id="explorer-input", image=self._inputs[image_index][0], prompt=trace.prompt)
        return sample

    def _sim_panel(self, trace: Trace, layer: int, neuron: int, image_index: int, *, run: bool) -> tuple[dict, bool]:
        row = self.explanation_row(layer, neuron)
        sample = self._sample_for(image_index, trace) if (run and row is not None and self.simulator is not None) else None
        return sim_panel(self.simulator, row, sample, trace, layer, neuron, self.index,
                         modalities_for(self.category_of(layer, neuron)), run=run)

    def state_for(self, image_index: int, prompt: str, layer: int, neuron: int) -> dict[str, Any]:
        """Every panel for one input and neuron, simulation included (what a static export stores)."""
        trace = self.trace_for(image_index, prompt, layer)
        state = heatmap_panels(trace, layer, neuron, self.index, self._k)
        state["card"] = self._card(layer, neuron)
        state["sim"] = self._sim_panel(trace, layer, neuron, image_index, run=True)[0]
        return state

    # --- updating ----------------------------------------------------------------------------------
    def _refresh(self, *, prompt: str | None = None, seq: int | None = None, image_changed: bool = False) -> None:
        """Recompute the panels for the current input and neuron and send them in one message."""
        layer, neuron, image_index = self.layer, self.neuron, self.image_index
        prompt = self.prompt if prompt is None else prompt
        updates: dict[str, Any] = {}
        if seq is not None:
            updates["seq"] = max(int(seq), self.seq)
        if image_changed:
            updates["image"] = png(self._inputs[image_index][0], crop=self.session.adapter.crop)
            updates["selected"] = -1
            updates["prompts"] = sources.suggestions(self._inputs[image_index][1], prompt)
        try:
            trace = self.trace_for(image_index, prompt, layer)
        except (ValueError, TypeError) as err:  # a prompt the model cannot take: say why, keep the last good panels
            updates.update(prompt=prompt, status=str(err))
            self._apply(updates)
            return
        updates.update(heatmap_panels(trace, layer, neuron, self.index, self._k))
        updates.update(prompt=prompt, status="", card=self._card(layer, neuron))
        updates.update(clamp_range=clamp_view.clamp_range(self.index, layer, neuron), clamp_view={})
        sim, pending = self._sim_panel(trace, layer, neuron, image_index, run=not self._async)
        updates["sim"] = sim
        token = (updates.get("seq", self.seq), image_index, prompt, layer, neuron)
        with self._lock:
            self._sim_token = token
        self._apply(updates)
        if pending:
            self._simulate_later(token, trace)

    def _apply(self, updates: dict[str, Any]) -> None:
        """Set traits as one message; our own observers stay quiet meanwhile."""
        with self._lock:
            busy, self._busy = self._busy, True
            try:
                with self.hold_sync():
                    for key, value in updates.items():
                        setattr(self, key, value)
            finally:
                self._busy = busy

    def _simulate_later(self, token: tuple, trace: Trace) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nw-simulate")
        _, image_index, _, layer, neuron = token

        def work():
            with self._lock:
                if token != self._sim_token:
                    return  # a newer request came in before this one started
            try:
                sim, _ = self._sim_panel(trace, layer, neuron, image_index, run=True)
            except Exception as err:  # a worker thread: whatever raised, never leave "simulating..." on screen
                sim = failed_panel(trace, layer, neuron, self.index, modalities_for(self.category_of(layer, neuron)), err)
            with self._lock:
                if token != self._sim_token:
                    return  # stale: drop it
                self._apply({"sim": sim})

        self._last_future = self._pool.submit(work)

    def wait(self, timeout: float | None = 10.0) -> None:
        """Wait for a pending simulation (tests, scripts)."""
        future = getattr(self, "_last_future", None)
        if future is not None:
            future.result(timeout=timeout)

    def _on_trait(self, change) -> None:
        if self._busy:
            return
        name = change["name"]
        try:
            if name in ("category", "search"):
                self.matches = self._matches()
            elif name == "image_index":
                if not 0 <= self.image_index < len(self._inputs):
                    self.image_index = change["old"]
                    return
                self._refresh(image_changed=True)
            elif name == "layer":
                if self.layer not in self.layers:
                    self.layer = change["old"]
                    return
                self._refresh()
            elif name == "neuron":
                if not 0 <= self.neuron < self.n_neurons:
                    self.neuron = change["old"]
                    return
                self._refresh()
            elif name == "prompt":
                self._refresh()
        except Exception as err:  # a browser event: never leave the page waiting, show what went wrong
            self.status = f"{type(err).__name__}: {err}"

    def _on_msg(self, _widget, content, buffers) -> None:
        if not isinstance(content, dict):
            return
        kind = content.get("type")
        seq = int(content.get("seq", self.seq))
        try:
            if kind == "prompt":
                self._refresh(prompt=str(content.get("prompt", "")), seq=seq)
            elif kind == "clamp":
                self.clamp(float(content.get("value", 0.0)), seq=int(content.get("clamp_seq", 0)))
            elif kind == "upload":
                self._upload(bytes(buffers[0]) if buffers else b"", str(content.get("name", "upload")), seq)
        except Exception as err:  # a browser message: answer it whatever raised, so the page stops waiting
            self._apply({"seq": max(seq, self.seq), "status": f"{type(err).__name__}: {err}"})

    def _upload(self, data: bytes, name: str, seq: int) -> None:
        picture = sources.read_upload(data, name)
        with self._lock:
            self._inputs.append((picture, None, f"uploaded: {name}"))
            self._apply({"images": [*self.images, {"label": f"uploaded: {name}", "thumb": sources.thumb(picture)}],
                         "image_index": len(self._inputs) - 1})
        self._refresh(seq=seq, image_changed=True)

    def clamp(self, value: float, *, seq: int = 0) -> dict[str, Any]:
        """Clamp the current neuron to `value` on the current input: the answer and next-token probabilities, before and after."""
        image_index, prompt, layer, neuron = self.image_index, self.prompt, self.layer, self.neuron
        image = self._inputs[image_index][0]
        key = (image_index, prompt)
        with self._lock:
            free = self._free.get(key)
        if free is None:
            free = clamp_view.unclamped_side(self.session, image, prompt)
            with self._lock:
                self._free[key] = free
                while len(self._free) > TRACE_CACHE:
                    self._free.popitem(last=False)
        view = clamp_view.clamp_panel(self.session, image, prompt, layer, neuron, value, free=free,
                                      decoding=self.decoding, seq=seq)
        self._apply({"clamp_view": view})
        return view

    def set_prompt(self, prompt: str) -> None:
        """What typing in the prompt box does (without the debounce): the real activations at once."""
        self._refresh(prompt=prompt, seq=self.seq + 1)

    def _matches(self) -> list[dict]:
        return neuron_matches(self._explanations, self._categories, self.search, self.category, self._max_matches)

    # --- static export -----------------------------------------------------------------------------
    def _export_state(self, prompts: list[str] | None = None, neurons: list[tuple[int, int]] | None = None) -> dict[str, Any]:
        return export_state(self, prompts, neurons)

    def to_html(self, path: str | Path, title: str | None = None, *, prompts: list[str] | None = None,
                neurons: list[tuple[int, int]] | None = None) -> Path:
        """Write the explorer as one offline HTML page; `prompts` x `neurons` are precomputed (default: the suggestions, this neuron)."""
        from neuronwidgets.widgets.export import to_html

        return to_html(self, path, title=title, states={self: self._export_state(prompts, neurons)})

    def close(self) -> None:
        """Stop the simulation thread and close the widget."""
        if getattr(self, "_pool", None) is not None:  # None too when __init__ failed before making it
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        super().close()
