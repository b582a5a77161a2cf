"""NeuronExplorer: the dashboard. Pick a neuron and an input, edit the prompt, watch the neuron respond."""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import traitlets as t
from PIL import Image

from neuronwidgets.checks import whole_number
from neuronwidgets.store.identity import check_same_neurons
from neuronwidgets.widgets._base import (
    NeuronWidget,
    f32,
    neuron_max,
    patch_top,
    png,
    scale_for,
    token_fields,
)
from neuronwidgets.widgets.card import card_state
from neuronwidgets.widgets.colors import CMAPS
from neuronwidgets.widgets.simulation_plot import chart_spec, sim_state

THUMB_SIDE = 48
NO_SIMULATOR = "no simulator (pass simulator=...)"


def _isnan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


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
    precomputes those prompts and neurons for the static page.
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

    def __init__(self, session, index=None, *, dataset=None, simulator="auto", explanations=None, layer: int | None = None,
                 neuron: int | None = None, image=None, prompt: str | None = None, n_images: int = 8, k: int = 8,
                 async_simulation: bool = True, max_matches: int = 200, card_exemplars: int = 3):
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
        self._explanations = self._explanation_table(explanations)
        self._categories = self._category_table()
        self.simulator = self._pick_simulator(simulator)
        self._inputs = self._initial_images(image, n_images)

        layers = list(index.layers) if index is not None else list(range(session.n_layers))
        n_neurons = int(index.n_neurons) if index is not None else int(session.n_neurons)
        if layer is None or neuron is None:
            first = self._first_neuron(layers)
            layer = first[0] if layer is None else layer
            neuron = first[1] if neuron is None else neuron
        layer, neuron = whole_number(layer, "layer"), whole_number(neuron, "neuron")
        if layer not in layers:
            raise IndexError(f"layer {layer} is not available; layers: {layers}")
        if not 0 <= neuron < n_neurons:
            raise IndexError(f"neuron {neuron} is out of range 0..{n_neurons - 1}")
        first_sample = self._inputs[0][1] if self._inputs else None
        prompt = prompt if prompt is not None else self._default_prompt(first_sample)
        super().__init__(
            layers=layers, n_neurons=n_neurons, layer=int(layer), neuron=int(neuron),
            categories=self._category_names(), images=[{"label": lab, "thumb": _thumb(im)} for im, _, lab in self._inputs],
            image_index=0, prompt=prompt, prompts=self._suggestions(first_sample, prompt), sim_spec=chart_spec(),
        )
        with self.hold_sync():
            self.matches = self._matches()
            self._refresh(image_changed=True)
        self.observe(self._on_trait, names=["layer", "neuron", "image_index", "prompt", "category", "search"])
        self.on_msg(self._on_msg)

    # --- set-up ------------------------------------------------------------------------------
    def _explanation_table(self, explanations) -> dict[tuple[int, int], dict]:
        if explanations is None and self.index is not None and hasattr(self.index, "explanations"):
            try:
                explanations = self.index.explanations()
            except Exception:  # an unreadable table: explore without explanations
                explanations = None
        out: dict[tuple[int, int], dict] = {}
        if explanations is None:
            return out
        if isinstance(explanations, pd.DataFrame):
            rows = explanations.to_dict("records")
        else:
            rows = []
            for item in explanations:
                exp = getattr(item, "explanation", None)
                if exp is not None and hasattr(item, "score"):  # a ScoreResult
                    row = exp.to_dict() if hasattr(exp, "to_dict") else dict(vars(exp))
                    row.update({"score": item.score, "baseline": item.baseline,
                                **{f"score_{k}": v for k, v in getattr(item, "scores", {}).items()}})
                elif hasattr(item, "to_dict"):
                    row = item.to_dict()
                else:
                    row = dict(item)
                rows.append(row)
        for row in rows:
            if not _isnan(row.get("error")) and not row.get("text"):
                continue
            out[(int(row["layer"]), int(row["neuron"]))] = {k: (None if _isnan(v) else v) for k, v in row.items()}
        return out

    def _category_table(self) -> dict[tuple[int, int], str]:
        out = {(k[0], k[1]): str(v["category"]) for k, v in self._explanations.items() if v.get("category")}
        if self.index is None or not hasattr(self.index, "categories"):
            return out
        try:
            from neuronwidgets.explain.data import categories

            table = categories(self.index)
        except Exception:
            try:
                table = self.index.categories()
            except Exception:
                return out
        for a, b, c in zip(table["layer"], table["neuron"], table["category"]):
            out.setdefault((int(a), int(b)), str(c))
        return out

    def _category_names(self) -> list[str]:
        order = ["visual", "text", "multi-modal", "unactivated", "inactive"]
        found = set(self._categories.values())
        return [c for c in order if c in found] + sorted(found - set(order))

    def _pick_simulator(self, simulator):
        if simulator != "auto":
            return simulator
        data = self.dataset
        try:
            has_masks = data is not None and len(data) > 0 and getattr(data[0], "masks", None)
        except Exception:
            has_masks = False
        if not has_masks:
            return None
        try:
            from neuronwidgets.explain import ConceptSimulator
        except ImportError:
            return None
        return ConceptSimulator(data)

    def _initial_images(self, image, n_images: int) -> list[tuple[Image.Image, Any, str]]:
        from neuronwidgets.model.inputs import load_image

        out = []
        if image is not None:
            out.append((load_image(image), None, "your image"))
        data = self.dataset
        if data is not None:
            for i in range(min(int(n_images), len(data))):
                sample = data[i]
                pic = sample.get_image() if hasattr(sample, "get_image") else sample.image
                label = getattr(sample, "caption", None) or str(getattr(sample, "id", i))
                out.append((load_image(pic), sample, f"{getattr(sample, 'id', i)}: {label}"))
        if not out:
            raise ValueError("nothing to show: pass image=..., or an index with a dataset attached (index.attach(data)), or dataset=...")
        return out

    def _first_neuron(self, layers: list[int]) -> tuple[int, int]:
        ranked = sorted(
            (k for k in self._explanations if k[0] in layers),
            key=lambda k: (-(self._explanations[k].get("score") or -2.0), k),
        )
        if ranked:
            return ranked[0]
        active = [k for k, c in sorted(self._categories.items()) if c not in ("inactive", "unactivated") and k[0] in layers]
        return active[0] if active else (layers[len(layers) // 2], 0)

    def _default_prompt(self, sample) -> str:
        template = self.session.adapter.prompt_template
        if sample is not None and getattr(sample, "qa", None):
            return sample.qa[0].prompt
        if sample is not None and getattr(sample, "prompt", None):
            return sample.prompt
        return template.format(question="What is in the image?")

    def _suggestions(self, sample, prompt: str) -> list[str]:
        out = [prompt]
        if sample is not None:
            out += [qa.prompt for qa in (getattr(sample, "qa", None) or [])[:4]]
            if getattr(sample, "prompt", None):
                out.append(sample.prompt)
        return list(dict.fromkeys(out))

    # --- computing a state -------------------------------------------------------------------------
    def trace_for(self, image_index: int, prompt: str, layer: int):
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
            while len(self._traces) > 16:
                self._traces.popitem(last=False)
        return trace

    def explanation_row(self, layer: int, neuron: int) -> dict | None:
        return self._explanations.get((int(layer), int(neuron)))

    def category_of(self, layer: int, neuron: int) -> str | None:
        return self._categories.get((int(layer), int(neuron)))

    def _vmax(self, trace, layer: int, neuron: int) -> float:
        return scale_for(trace.neuron(layer, neuron), neuron_max(self.index, layer, neuron))

    def _panels(self, trace, layer: int, neuron: int) -> dict[str, Any]:
        """tokens_view and patch_view for one trace and neuron."""
        vmax = self._vmax(trace, layer, neuron)
        values = trace.neuron(layer, neuron)
        tops = trace.__dict__.setdefault("_nw_patch_top", {})  # cached on the (cached) trace
        if layer not in tops:
            tops[layer] = patch_top(trace, layer, self._k)
        ids, vals, k = tops[layer]
        return {
            "tokens_view": {**token_fields(trace), "values": f32(values), "vmax": vmax},
            "patch_view": {"values": f32(trace.image_map(layer, neuron).ravel()), "grid": [int(g) for g in trace.grid],
                           "vmax": vmax, "top_ids": ids, "top_values": vals, "k": k, "layer": int(layer)},
        }

    def _card(self, layer: int, neuron: int) -> dict[str, Any]:
        key = ("card", layer, neuron)
        with self._lock:
            hit = self._cards.get(key)
        if hit is None:
            row = self.explanation_row(layer, neuron)
            if row is None:
                row = {"layer": layer, "neuron": neuron, "category": self.category_of(layer, neuron) or "unknown"}
            hit = card_state(row, None, self.index, k=self._card_k, dataset=self.dataset)
            with self._lock:
                self._cards[key] = hit
        return hit

    def _modalities(self, layer: int, neuron: int) -> list[str]:
        cat = self.category_of(layer, neuron)
        return {"visual": ["image"], "text": ["text"]}.get(cat, ["image", "text"])

    def _sim_inputs(self, trace, layer: int, neuron: int, simulated: dict | None) -> list[dict]:
        tok = trace.tokens
        text = tok.index[tok["modality"] == "text"].to_numpy()
        values = trace.neuron(layer, neuron)
        out = []
        for m in self._modalities(layer, neuron):
            if m == "image":
                real, labels = trace.image_map(layer, neuron).ravel(), None
            else:
                real, labels = values[text], tok["token"].to_numpy()[text].tolist()
            sim = None if simulated is None else simulated.get(m)
            out.append({"label": "image patches" if m == "image" else "text tokens", "kind": m, "modality": m,
                        "real": real, "simulated": sim, "labels": labels})
        return out

    def _simulate(self, trace, layer: int, neuron: int, image_index: int) -> dict[str, np.ndarray]:
        """The simulator's 0-10 predictions on this input, per modality the neuron's category speaks of."""
        row = self.explanation_row(layer, neuron)
        exp = _as_explanation(row)
        sample = self._inputs[image_index][1]
        if sample is None:
            from neuronwidgets.datasets.base import Sample

            sample = Sample(id="explorer-input", image=self._inputs[image_index][0], prompt=trace.prompt)
        tok = trace.tokens
        tokens = tok.loc[tok["modality"] == "text", "token"].tolist()
        out = {}
        for m in self._modalities(layer, neuron):
            pred = self.simulator.simulate(exp, sample, m, sample=sample, grid=tuple(trace.grid), tokens=tokens)
            out[m] = np.asarray(pred, np.float32).ravel()
        return out

    def _sim_panel(self, trace, layer: int, neuron: int, image_index: int, *, run: bool) -> tuple[dict, bool]:
        """(the sim panel, whether the simulation still has to run)."""
        real_max = neuron_max(self.index, layer, neuron)
        if self.simulator is None:
            return sim_state(self._sim_inputs(trace, layer, neuron, None), grid=trace.grid, real_max=real_max, status=NO_SIMULATOR), False
        if self.explanation_row(layer, neuron) is None:
            return sim_state(self._sim_inputs(trace, layer, neuron, None), grid=trace.grid, real_max=real_max,
                             status="no explanation for this neuron: nothing to simulate"), False
        if not run:
            return sim_state(self._sim_inputs(trace, layer, neuron, None), grid=trace.grid, real_max=real_max,
                             status="simulating\u2026"), True
        try:
            simulated = self._simulate(trace, layer, neuron, image_index)
            status = ""
        except Exception as err:  # a simulator that cannot handle this input: say why, keep the real values
            simulated, status = None, f"simulation unavailable: {type(err).__name__}: {err}"
        return sim_state(self._sim_inputs(trace, layer, neuron, simulated), grid=trace.grid, real_max=real_max, status=status), False

    def state_for(self, image_index: int, prompt: str, layer: int, neuron: int) -> dict[str, Any]:
        """Every panel for one input and neuron, simulation included (what a static export stores)."""
        trace = self.trace_for(image_index, prompt, layer)
        state = self._panels(trace, layer, neuron)
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
            updates["image"] = png(self._inputs[image_index][0])
            updates["selected"] = -1
            updates["prompts"] = self._suggestions(self._inputs[image_index][1], prompt)
        try:
            trace = self.trace_for(image_index, prompt, layer)
        except (ValueError, TypeError) as err:  # a prompt the model cannot take: say why, keep the last good panels
            updates.update(prompt=prompt, status=str(err))
            self._apply(updates)
            return
        updates.update(self._panels(trace, layer, neuron))
        updates.update(prompt=prompt, status="", card=self._card(layer, neuron))
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

    def _simulate_later(self, token: tuple, trace) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nw-simulate")
        _, image_index, _, layer, neuron = token

        def work():
            with self._lock:
                if token != self._sim_token:
                    return  # a newer request came in before this one started
            try:
                sim, _ = self._sim_panel(trace, layer, neuron, image_index, run=True)
            except Exception as err:  # never leave "simulating..." on screen
                sim = sim_state(self._sim_inputs(trace, layer, neuron, None), grid=trace.grid,
                                real_max=neuron_max(self.index, layer, neuron), status=f"simulation failed: {type(err).__name__}: {err}")
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
        except Exception as err:  # never leave the browser waiting: show what went wrong
            self.status = f"{type(err).__name__}: {err}"

    def _on_msg(self, _widget, content, buffers) -> None:
        if not isinstance(content, dict):
            return
        kind = content.get("type")
        seq = int(content.get("seq", self.seq))
        try:
            if kind == "prompt":
                self._refresh(prompt=str(content.get("prompt", "")), seq=seq)
            elif kind == "upload":
                self._upload(bytes(buffers[0]) if buffers else b"", str(content.get("name", "upload")), seq)
        except Exception as err:
            self._apply({"seq": max(seq, self.seq), "status": f"{type(err).__name__}: {err}"})

    def _upload(self, data: bytes, name: str, seq: int) -> None:
        try:
            with Image.open(io.BytesIO(data)) as img:
                picture = img.convert("RGB")
        except Exception as err:
            raise ValueError(f"could not read {name!r} as an image ({err})") from err
        with self._lock:
            self._inputs.append((picture, None, f"uploaded: {name}"))
            self._apply({"images": [*self.images, {"label": f"uploaded: {name}", "thumb": _thumb(picture)}],
                         "image_index": len(self._inputs) - 1})
        self._refresh(seq=seq, image_changed=True)

    def set_prompt(self, prompt: str) -> None:
        """What typing in the prompt box does (without the debounce): the real activations at once."""
        self._refresh(prompt=prompt, seq=self.seq + 1)

    # --- the neuron list -----------------------------------------------------------------------------
    def _matches(self) -> list[dict]:
        q = self.search.strip().lower()
        cat = self.category
        rows = []
        keys = set(self._explanations) | set(self._categories)
        for key in keys:
            c = self._categories.get(key) or (self._explanations.get(key) or {}).get("category") or ""
            if c == "inactive" and cat != "inactive":
                continue
            if cat and c != cat:
                continue
            row = self._explanations.get(key) or {}
            text = str(row.get("text") or "")
            if q and q not in text.lower():
                continue
            score = row.get("score")
            rows.append((0 if text else 1, -(score if score is not None and np.isfinite(score) else -2.0), key, c, text))
        rows.sort()
        return [{"layer": k[0], "neuron": k[1], "category": c, "text": text} for _, _, k, c, text in rows[: self._max_matches]]

    # --- static export -----------------------------------------------------------------------------
    def _export_state(self, prompts: list[str] | None = None, neurons: list[tuple[int, int]] | None = None) -> dict[str, Any]:
        """The current state plus snapshots of (prompt, neuron) pairs, so the page answers those without a kernel."""
        state = self.get_state()
        prompts = list(dict.fromkeys([self.prompt, *(prompts if prompts is not None else self.prompts)]))
        neurons = list(dict.fromkeys([(self.layer, self.neuron), *((int(a), int(b)) for a, b in (neurons or []))]))
        snapshots, ok_prompts = [], []
        for layer, neuron in neurons:
            for p in prompts:
                try:
                    panels = self.state_for(self.image_index, p, layer, neuron)
                except (ValueError, TypeError):
                    continue  # a prompt the model cannot take is not offered
                snapshots.append({"layer": layer, "neuron": neuron, "prompt": p, "state": {**panels, "status": ""}})
                if p not in ok_prompts:
                    ok_prompts.append(p)
        current = next((s for s in snapshots if (s["layer"], s["neuron"], s["prompt"]) == (self.layer, self.neuron, self.prompt)), None)
        if current is not None:
            state.update(current["state"])
        state["_snapshots"] = snapshots
        state["prompts"] = ok_prompts
        state["images"] = [self.images[self.image_index]]
        state["image_index"] = 0
        state["seq"] = 0
        state["matches"] = [
            {"layer": a, "neuron": b, "category": self.category_of(a, b) or "", "text": str((self.explanation_row(a, b) or {}).get("text") or "")}
            for a, b in neurons
        ]
        return state

    def to_html(self, path, title: str | None = None, *, prompts: list[str] | None = None,
                neurons: list[tuple[int, int]] | None = None):
        """Write the explorer as one offline HTML page; `prompts` x `neurons` are precomputed (default: the suggestions, this neuron)."""
        from neuronwidgets.widgets.export import to_html

        return to_html(self, path, title=title, states={self: self._export_state(prompts, neurons)})

    def close(self) -> None:
        if getattr(self, "_pool", None) is not None:  # None too when __init__ failed before making it
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        super().close()


def _thumb(image: Image.Image) -> bytes:
    return png(image, THUMB_SIDE)


def _as_explanation(row: dict | None):
    if row is None:
        return None
    try:
        from neuronwidgets.explain import Explanation

        return Explanation.from_row(row)
    except Exception:  # no explain package, or a row it cannot read: the text is what simulators use
        return str(row.get("text") or "")
