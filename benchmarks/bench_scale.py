"""The index at LLaVA-1.5-7B's neuron count: collection time and memory, categories, a concept explanation, the explorer.

    python benchmarks/bench_scale.py                          # 32 layers x 11008 neurons, 24x24 patches, 96 images, top_k=50
    python benchmarks/bench_scale.py --layers 4 --json out.json
    python benchmarks/bench_scale.py --layers 4 --replicate 32   # index figures at 32 layers from a 4-layer collection

The model is a random LLaVA built from a config: LLaVA-1.5-7B's MLP (layers x intermediate
neurons) and its 24x24 patch grid (vision image_size 336, patch 14), every width tiny, with a
processor made offline (neuronwidgets.toy.build). So the forward pass is cheap and the figures
are those of the index's own work at that neuron count. Printed (and written with --json):
  collect_s, collect_peak_rss_gib      session.collect over the images (text: the captions), the
                                       process's peak resident memory while it runs (sampled) and the
                                       ratios against a plain pass (the same generation and forward
                                       pass over the same images, nothing recorded) run just before
  disk_bytes_per_neuron                the index folder's bytes / (layers x neurons)
  categories_s, categories_cached_s    index.categories(): first call, then again (cached)
  category_chart_s                     index.category_chart() after categories() (altair imported before)
  concept_explain_s                    ConceptExplainer(data).explain(index, layer, neuron), first call
  explorer_start_s, prompt_edit_s      NeuronExplorer(session, index), then one prompt edit
With --replicate L, the collected layers' files are copied to make an index of L layers (the
same arrays under other layer numbers): categories and explanations at L layers without a
collection of L layers (collection figures stay those of the layers collected).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import neuronwidgets as nw  # noqa: E402


class PeakRSS:
    """The largest resident set size of this process while the block runs, sampled every few ms (GiB)."""

    def __init__(self, every: float = 0.005):
        self.every, self.peak = every, 0
        self._stop = threading.Event()

    @staticmethod
    def now() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(self.every)

    def __enter__(self):
        gc.collect()
        self.start = self.now()
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())

    @property
    def peak_gib(self) -> float:
        return self.peak / 2**30

    @property
    def growth_gib(self) -> float:
        return (self.peak - self.start) / 2**30


def build_session(layers: int, neurons: int, hidden: int = 32, seed: int = 0):
    """A random LLaVA with `layers` x `neurons` MLP neurons and a 24x24 patch grid, every width tiny."""
    from neuronwidgets.datasets.shapes import SHAPES_WORDS
    from neuronwidgets.toy.build import build_model, build_processor

    processor = build_processor(SHAPES_WORDS, image_size=336, patch_size=14)
    model = build_model(processor, image_size=336, patch_size=14, vision_hidden=hidden, vision_layers=1, vision_heads=2,
                        text_hidden=hidden, text_layers=layers, text_heads=2, intermediate=neurons, seed=seed)
    return nw.Session.from_model(model, processor, name=f"random-llava-{layers}x{neurons}")


def plain_pass(session, data, batch_size: int, text: str, max_text_tokens: int = 64) -> None:
    """What collect runs per batch but for the reductions: the text (generated or read) and the forward pass."""
    for lo in range(0, len(data), batch_size):
        items = [data[i] for i in range(lo, min(lo + batch_size, len(data)))]
        images, prompts = [s.get_image() for s in items], [s.prompt for s in items]
        if text == "generate":
            conts = session.generate_ids(images, prompts, max_new_tokens=max_text_tokens)
        elif text == "caption":
            conts = [" " + s.caption for s in items]
        else:
            conts = None
        session.forward_record(session.encode_batch(images, prompts, conts), [], on_activation=None)


def replicate_layers(path: Path, n_layers: int) -> None:
    """Make the index at `path` one of `n_layers` layers by copying its layers' arrays under new layer numbers."""
    import pandas as pd
    from safetensors.numpy import load_file, save_file

    manifest = json.loads((path / "manifest.json").read_text())
    have = list(manifest["layers"])
    stats = pd.read_parquet(path / "stats.parquet")
    frames = []
    for layer in range(n_layers):
        src = have[layer % len(have)]
        frames.append(stats[stats.layer == src].assign(layer=layer))
        if layer in have:
            continue
        arrays = load_file(str(path / "layers" / f"layer_{src:03d}.safetensors"))
        note = json.dumps({"format_version": manifest["format_version"], "layer": layer}, sort_keys=True)
        save_file(arrays, str(path / "layers" / f"layer_{layer:03d}.safetensors"), metadata={"neuronwidgets": note})
        del arrays
    pd.concat(frames, ignore_index=True).to_parquet(path / "stats.parquet", index=False)
    manifest["layers"] = list(range(n_layers))
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--neurons", type=int, default=11008)
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--text", default="caption", choices=("generate", "caption", "prompt"),
                    help="the text tokens (default caption: a random model's greedy text may hold the image token)")
    ap.add_argument("--hidden", type=int, default=32, help="the model's (tiny) hidden width")
    ap.add_argument("--replicate", type=int, default=0, help="copy the collected layers into an index of this many layers")
    ap.add_argument("--neuron", type=int, nargs=2, default=None, metavar=("LAYER", "NEURON"),
                    help="the neuron to explain (default: the first visual one of the last layer, else neuron 0)")
    ap.add_argument("--path", default=None, help="write the index here (default: a temporary folder, removed)")
    ap.add_argument("--skip-plain", action="store_true", help="leave out the plain pass")
    ap.add_argument("--skip-explorer", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    res: dict = {"layers": args.layers, "neurons": args.neurons, "images": args.images, "top_k": args.top_k,
                 "batch_size": args.batch_size, "text": args.text}
    session = build_session(args.layers, args.neurons, args.hidden)
    data = nw.datasets.shapes(n=args.images, seed=0)
    res["grid"] = list(session.grid)
    print(f"model {session.name}: {session.n_layers} layers x {session.n_neurons} neurons, grid {session.grid}; "
          f"{len(data)} images, top_k {args.top_k}, text {args.text!r}", flush=True)
    res["rss_before_gib"] = PeakRSS.now() / 2**30

    if not args.skip_plain:
        plain_pass(session, data[: args.batch_size], args.batch_size, args.text)  # warm-up
        with PeakRSS() as plain_mem:
            _, res["plain_s"] = timed(lambda: plain_pass(session, data, args.batch_size, args.text))
        res["plain_peak_rss_gib"] = plain_mem.peak_gib
        print(f"plain pass {res['plain_s']:.1f}s, peak RSS {plain_mem.peak_gib:.2f} GiB", flush=True)

    tmp = tempfile.mkdtemp(prefix="bench_scale_")
    path = Path(args.path) if args.path else Path(tmp) / "index"
    try:
        with PeakRSS() as mem:
            index, res["collect_s"] = timed(lambda: session.collect(data, top_k=args.top_k, batch_size=args.batch_size, path=path,
                                                                     text=args.text, progress=False, overwrite=True))
        res["collect_peak_rss_gib"] = mem.peak_gib
        res["collect_rss_growth_gib"] = mem.growth_gib
        if "plain_s" in res:
            res["collect_vs_plain_time"] = res["collect_s"] / res["plain_s"]
            res["collect_vs_plain_peak_rss"] = res["collect_peak_rss_gib"] / res["plain_peak_rss_gib"]
        disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        res["disk_bytes_per_neuron"] = disk / (len(index.layers) * index.n_neurons)
        print(f"collect {res['collect_s']:.1f}s, peak RSS {mem.peak_gib:.2f} GiB (+{mem.growth_gib:.2f}), "
              f"{res['disk_bytes_per_neuron']:.0f} B/neuron", flush=True)
        del index
        gc.collect()

        if args.replicate:
            replicate_layers(path, args.replicate)
            res["index_layers"] = args.replicate
        index = nw.NeuronIndex.load(path, dataset=data)
        with PeakRSS() as cat_mem:
            cats, res["categories_s"] = timed(index.categories)
        _, res["categories_cached_s"] = timed(index.categories)
        _, res["altair_import_s"] = timed(lambda: __import__("altair"))  # once per process, not the chart's own work
        _, res["category_chart_s"] = timed(index.category_chart)
        res["categories_peak_rss_gib"] = cat_mem.peak_gib
        res["categories_neurons"] = len(cats)
        res["category_counts"] = {str(k): int(v) for k, v in cats["category"].value_counts().items()}
        print(f"categories of {len(cats)} neurons {res['categories_s']:.2f}s (cached {res['categories_cached_s']:.4f}s), "
              f"chart {res['category_chart_s']:.2f}s", flush=True)

        if args.neuron:
            layer, neuron = args.neuron
        else:
            last = cats[cats.layer == cats.layer.max()]
            visual = last[last.category == "visual"]
            layer, neuron = int(last.layer.iloc[0]), int((visual if len(visual) else last).neuron.iloc[0])
        explainer = nw.ConceptExplainer(data)
        exp, res["concept_explain_s"] = timed(lambda: explainer.explain(index, layer, neuron))
        _, res["concept_explain_again_s"] = timed(lambda: explainer.explain(index, layer, (neuron + 1) % index.n_neurons))
        res["explained"] = {"layer": layer, "neuron": neuron, "category": exp.category, "text": exp.text}
        print(f"concept explanation of layer {layer} neuron {neuron} ({exp.category}: {exp.text!r}) {res['concept_explain_s']:.2f}s, "
              f"another neuron {res['concept_explain_again_s']:.2f}s", flush=True)

        if not args.skip_explorer and not args.replicate:  # the explorer traces the model: its layers must be the index's
            try:
                explorer_cls = nw.NeuronExplorer
            except Exception as err:  # noqa: BLE001 - no widget stack installed
                print(f"(explorer not importable: {type(err).__name__}: {err})")
            else:
                explorer, res["explorer_start_s"] = timed(lambda: explorer_cls(session, index, layer=layer, neuron=neuron))

                def edit():
                    explorer.prompt = explorer.prompt + " What is it?"
                    explorer.wait()

                _, res["prompt_edit_s"] = timed(edit)
                print(f"explorer start {res['explorer_start_s']:.2f}s, prompt edit {res['prompt_edit_s']:.2f}s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["process_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    print()
    for k, v in res.items():
        print(f"{k:28s} {v:.4g}" if isinstance(v, float) else f"{k:28s} {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
