"""The explorer's prompt loop on the toy model: time from a prompt edit to the new state being sent, and bytes sent.

    python benchmarks/bench_widgets.py                 # the bundled toy model (a same-sized random one if absent)
    python benchmarks/bench_widgets.py --threads 1     # torch intra-op threads (default: torch's own choice)

What is timed is what the kernel does when the browser's debounced prompt message arrives:
run the model on the new prompt, slice the neuron, build the panels and send them (one comm
message, captured instead of sent). Also printed: the model forward alone, the widget's own
share, the bytes of each message (JSON + binary buffers), and the simulated panel that follows
(ConceptSimulator, run here synchronously). Aim: median at most 50 ms on CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neuronwidgets.datasets.shapes import SHAPES_WORDS, shapes  # noqa: E402
from neuronwidgets.explain import ConceptExplainer, ConceptSimulator, explain_all  # noqa: E402
from neuronwidgets.model.session import Session  # noqa: E402
from neuronwidgets.widgets import NeuronExplorer  # noqa: E402

AIM_MS = 50.0
WORDS = ["red", "blue", "green", "circle", "square", "triangle", "left", "of", "above", "a", "the", "shape"]


def toy_session() -> tuple[Session, str]:
    try:
        return Session.toy(), "toy (bundled, trained)"
    except Exception as err:  # weights not built yet: a random model of the toy's family and size
        from neuronwidgets.toy.build import build_model, build_processor

        p = build_processor(sorted(set(SHAPES_WORDS)), image_size=64, patch_size=16)
        model = build_model(p, image_size=64, patch_size=16, vision_hidden=64, vision_layers=2, text_hidden=128, text_layers=4,
                            intermediate=384)
        return Session.from_model(model, p, name="tiny-random"), f"random, toy-sized ({type(err).__name__}: {err})"


class Wire:
    """Stands in for the comm: records each message's time and size."""

    def __init__(self, widget):
        self.sent: list[tuple[float, dict, int]] = []
        widget._send = self.send

    def send(self, msg, buffers=None):
        size = len(json.dumps(msg)) + sum(len(bytes(b)) for b in (buffers or []))
        self.sent.append((time.perf_counter(), msg, size))


def prompts(base: str, n: int, seed: int = 0) -> list[str]:
    """`n` distinct edits of `base` (appended words), as a user typing would produce."""
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    while len(out) < n:
        words = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 6))))
        p = f"{base} {words}"
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def setup(n_samples: int):
    """(session, which, index, table, layer, neuron): the toy, an index over Shapes, concept explanations."""
    session, which = toy_session()
    data = shapes(n=n_samples, seed=0)
    held = shapes(n=16, seed=0, start=n_samples)
    index = session.collect(data, top_k=8, random_k=4, text="caption", progress=False).attach(data)
    holdout = session.collect(held, top_k=4, random_k=4, text="caption", progress=False).attach(held)
    layer = index.layers[len(index.layers) // 2]
    table = explain_all(index, neurons=[(layer, j) for j in range(8)], explainer=ConceptExplainer(data),
                        simulator=ConceptSimulator(holdout), holdout=holdout, progress=False, n_top=4, n_random=4)
    ok = table[table["error"].isna() & table["text"].astype(bool)]
    neuron = int(ok.sort_values("score", ascending=False)["neuron"].iloc[0]) if len(ok) else 0
    return session, which, index, table, layer, neuron


def measure(session, index, table, layer: int, neuron: int, n: int, seed: int) -> dict:
    """Time `n` prompt edits through the explorer's message handler."""
    ex = NeuronExplorer(session, index, explanations=table, layer=layer, neuron=neuron, async_simulation=True)
    ex.wait()
    wire = Wire(ex)
    edits = prompts(ex.prompt, n + 5, seed)
    image = ex._inputs[0][0]

    def edit(i: int, text: str) -> tuple[float, int]:
        start = time.perf_counter()
        ex._handle_msg({"content": {"data": {"method": "custom", "content": {"type": "prompt", "prompt": text, "seq": i}}},
                        "buffers": []})
        when, msg, size = wire.sent[-1]
        assert msg["state"].get("seq") == i, "the reply to this edit was not sent"
        return (when - start) * 1e3, size

    for i, text in enumerate(edits[:5], 1):  # warm-up
        edit(i, text)
        ex.wait()
    totals, sizes, forward = [], [], []
    for i, text in enumerate(edits[5:], 6):
        ms, size = edit(i, text)
        totals.append(ms)
        sizes.append(size)
        ex.wait()  # the simulated panel follows on its thread; keep the edits independent
        start = time.perf_counter()
        session.trace(image, text + " .", layers=[layer])  # the model alone, on a prompt of about the same length
        forward.append((time.perf_counter() - start) * 1e3)
    sim_sizes = [size for _, msg, size in wire.sent if set(msg["state"]) | {p[0] for p in msg["buffer_paths"]} == {"sim"}]
    traces = [ex.trace_for(ex.image_index, text, layer) for text in edits[-10:]]
    start = time.perf_counter()
    for trace in traces:
        ex._sim_panel(trace, layer, neuron, ex.image_index, run=True)
    sim_ms = (time.perf_counter() - start) * 1e3 / len(traces)
    med, fwd = statistics.median(totals), statistics.median(forward)
    out = {
        "torch_threads": torch.get_num_threads(),
        "tokens": int(len(ex.tokens_view["tokens"])),
        "edits": len(totals),
        "median_ms": round(med, 2),
        "p90_ms": round(float(np.percentile(totals, 90)), 2),
        "forward_median_ms": round(fwd, 2),
        "widget_overhead_ms": round(med - fwd, 2),
        "bytes_per_update_median": int(statistics.median(sizes)),
        "bytes_per_update_max": int(max(sizes)),
        "bytes_per_simulated_update_median": int(statistics.median(sim_sizes)) if sim_sizes else None,
        "simulation_ms": round(sim_ms, 2),
        "meets_aim": med <= AIM_MS,
    }
    ex.close()
    return out


def report(r: dict) -> None:
    print(f"torch threads {r['torch_threads']}: prompt edit -> state sent: median {r['median_ms']:.1f} ms, p90 {r['p90_ms']:.1f} ms "
          f"over {r['edits']} edits (aim <= {AIM_MS:.0f} ms: {'met' if r['meets_aim'] else 'NOT met'})")
    print(f"  model forward alone: median {r['forward_median_ms']:.1f} ms; the widget (panels + serialisation): "
          f"{r['widget_overhead_ms']:.1f} ms")
    print(f"  bytes per update: median {r['bytes_per_update_median']}, max {r['bytes_per_update_max']} (JSON + binary buffers)")
    if r["bytes_per_simulated_update_median"] is not None:
        print(f"  simulated panel (follows on its own thread): {r['simulation_ms']:.1f} ms to compute, "
              f"{r['bytes_per_simulated_update_median']} bytes")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60, help="prompt edits to time")
    ap.add_argument("--samples", type=int, default=48, help="Shapes samples to collect the index over")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's choice, then 1 thread for comparison)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    session, which, index, table, layer, neuron = setup(args.samples)
    print(f"model: {which}; layer {layer} neuron {neuron}; set-up {time.perf_counter() - t0:.1f} s")
    runs = []
    original = torch.get_num_threads()
    threads = [args.threads] if args.threads else [original] + ([1] if original > 1 else [])
    try:
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            r = measure(session, index, table, layer, neuron, args.n, seed=n_threads)
            report(r)
            runs.append(r)
    finally:
        torch.set_num_threads(original)
    result = {"model": which, "layer": layer, "neuron": neuron, "aim_ms": AIM_MS, "runs": runs}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
