"""The command line: batch jobs that write the same index folders notebooks open.

    neuronwidgets collect --model toy --data shapes:n=2000,seed=0 --top-k 50 --out runs/toy
    torchrun --nproc_per_node 4 -m neuronwidgets collect --model llava-hf/llava-1.5-7b-hf --data DIR --out runs/coco
    neuronwidgets merge runs/a runs/b --out runs/ab
    neuronwidgets explain runs/toy --explainer concept
    neuronwidgets info runs/toy
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from neuronwidgets.datasets.base import SampleList
    from neuronwidgets.model.session import Session

import argparse
import sys
from pathlib import Path

from neuronwidgets.constants import SITES
from neuronwidgets.llm.errors import LLMRequestError


def load_session(model: str, device: str | None, dtype: str | None, site: str, download: bool = False) -> Session:
    from neuronwidgets.model.session import Session

    if model == "toy":
        if device not in (None, "cpu") or dtype not in (None, "float32"):
            raise ValueError("--device and --dtype are for a checkpoint (--model PATH or hub id): the toy runs on the CPU in float32")
        return Session.toy(site=site)
    return Session.from_pretrained(model, device=device, dtype=dtype, site=site, download=download)


def load_data(spec: str, images: str | None = None, limit: int | None = None, captions: str | None = None) -> SampleList:
    """shapes:n=N,seed=S | a folder of images | a COCO annotation file (with --images DIR) | any dataset spec."""
    from neuronwidgets.datasets.coco import coco
    from neuronwidgets.datasets.folder import image_folder
    from neuronwidgets.datasets.spec import from_spec

    if limit is not None and limit < 1:
        raise ValueError(f"--limit is how many images to take, so 1 or more; got {limit}")
    path = Path(spec).expanduser()
    if path.suffix == ".json" and not path.is_file():
        raise FileNotFoundError(f"--data {spec!r}: no such COCO annotation file")
    is_coco = path.suffix == ".json"
    if (images or captions) and not is_coco:
        raise ValueError("--images and --captions go with a COCO annotation file as --data (a folder reads its own captions.json)")
    if is_coco:
        data = coco(path, images=images, captions=captions)
    elif path.is_dir():
        data = image_folder(path)
    elif ":" in spec and spec.split(":", 1)[0] in ("shapes", "folder", "coco"):
        data = from_spec(spec)
    else:
        raise ValueError(f"--data {spec!r}: not a folder, a COCO .json file, or a spec like shapes:n=2000,seed=0")
    return data[:limit] if limit else data


def layer_list(text: str | None) -> list[int] | None:
    """--layers "0,3,31" as [0, 3, 31] (None: all)."""
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--layers takes comma-separated layer numbers such as 0,3,31; got {text!r}") from None


def cmd_collect(args: argparse.Namespace) -> int:
    from neuronwidgets.collect import distributed as dist
    from neuronwidgets.collect.manifest import check_folder_for, run_manifest
    from neuronwidgets.store.index import NeuronIndex

    rank = dist.from_env()
    session = load_session(args.model, args.device, args.dtype, args.site, args.download)
    dist.init(rank, str(session.device))
    data = load_data(args.data, args.images, args.limit, args.captions)
    if args.prompt:
        session.check_prompt(args.prompt)
        for s in data:
            s.prompt = args.prompt
    layers = layer_list(args.layers)
    kw = dict(layers=layers, top_k=args.top_k, random_k=args.random_k, map_k=args.map_k, batch_size=args.batch_size, text=args.text,
              max_text_tokens=args.max_text_tokens, seed=args.seed, overwrite=args.overwrite, map_bits=args.map_bits,
              checkpoint_every=args.checkpoint_every)
    settings = {"model": session.name, "site": session.site, "data": getattr(data, "fingerprint", args.data), "n": len(data),
                "out": str(Path(args.out).resolve()), **kw}
    dist.check_agreement(rank, settings)
    out = Path(args.out)
    if rank.world == 1:
        index = session.collect(data, path=out, **kw)
        print(index)
        return 0
    # The folder is checked as one process would check it: the same collection there is reused, another refused.
    whole = run_manifest(session, data, session.check_layers(layers), list(range(len(data))), token_k=None,
                         **{k: kw[k] for k in ("text", "top_k", "map_k", "random_k", "map_bits", "max_text_tokens", "batch_size", "seed")})
    found = dist.on_main(rank, lambda: check_folder_for(out, whole, args.overwrite))
    if found is not None and found.get("complete"):
        if rank.is_main:
            print(NeuronIndex.load(out))
        dist.finish(rank)
        return 0
    positions = dist.shard_positions(len(data), args.batch_size, rank)
    shard = out / "shards" / f"rank-{rank.rank:03d}-of-{rank.world:03d}"
    session.collect(data, path=shard, indices=positions, progress=True, **kw)
    dist.barrier(rank)
    if rank.is_main:
        shards = [NeuronIndex.load(out / "shards" / f"rank-{r:03d}-of-{rank.world:03d}") for r in range(rank.world)]
        merged = NeuronIndex.merge(shards, out, overwrite=True)  # the folder was checked before the shards ran
        print(merged)
    dist.barrier(rank)
    dist.finish(rank)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from neuronwidgets.store.index import NeuronIndex

    merged = NeuronIndex.merge([NeuronIndex.load(p) for p in args.indexes], args.out, overwrite=args.overwrite)
    print(merged)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from neuronwidgets.store.index import NeuronIndex

    index = NeuronIndex.load(args.index)
    print(index)
    m = index.manifest
    for key in ("model", "site", "text", "top_k", "map_k", "random_k", "map_bits", "n_samples"):
        print(f"  {key:10s} {m.get(key)}")
    print(f"  dataset    {m.get('dataset', {}).get('fingerprint')}")
    import pandas as pd

    with pd.option_context("display.width", 120, "display.max_columns", 20):
        print(index.category_summary(rule=args.rule).to_string(index=False))
    expl = index.explanations()
    if expl is not None:
        print(f"  explanations: {len(expl)} neurons")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    import pandas as pd

    from neuronwidgets.store.index import NeuronIndex

    try:
        from neuronwidgets.explain import (
            ConceptExplainer,
            ConceptSimulator,
            Explainer,
            Simulator,
            explain_all,
        )
    except ImportError as err:  # pragma: no cover
        raise SystemExit(f"explanations are not available: {err}") from err
    index = NeuronIndex.load(args.index)
    holdout = NeuronIndex.load(args.holdout) if args.holdout else None
    scored_on = holdout if holdout is not None else index  # where the held-out records' samples are
    if args.explainer == "concept":
        for name, idx in (("index", index), ("held-out index", holdout)):
            if idx is not None and idx.dataset is None:
                raise SystemExit(f"the concept explainer needs the dataset's concept masks; the {name}'s dataset cannot be rebuilt")
        # Without a held-out index the search leaves the random records alone, to score on.
        explainer = ConceptExplainer(index.dataset, include_random=holdout is not None)
        simulator = ConceptSimulator(scored_on.dataset)
        if holdout is None:
            print("scoring on the index's random records (the concept search reads every top record); "
                  "pass --holdout DIR, an index collected over other samples, to score on top and random records")
    else:
        from neuronwidgets.llm import OpenAIClient

        client = OpenAIClient(model=args.llm_model, base_url=args.base_url)
        explainer, simulator = Explainer(client), Simulator(client, scored_on)
    if args.limit < 1:
        raise ValueError(f"--limit is how many neurons to explain, so 1 or more; got {args.limit}")
    cats = index.categories()
    chosen = cats[cats.category != "inactive"]
    layers = layer_list(args.layers)
    if layers is not None:
        absent = sorted(set(layers) - set(index.layers))
        if absent:
            raise ValueError(f"--layers {absent[0]} is not in the index; its layers are {index.layers}")
        chosen = chosen[chosen.layer.isin(layers)]
    neurons = list(zip(chosen.layer, chosen.neuron))[: args.limit]
    table = explain_all(index, neurons=neurons, explainer=explainer, simulator=simulator, holdout=holdout)
    cols = [c for c in ("layer", "neuron", "category", "text", "score", "score_top", "score_random", "baseline", "error") if c in table]
    with pd.option_context("display.width", 160, "display.max_colwidth", 60):
        print(table[cols].head(20).to_string(index=False))
    failed = table["error"].notna()  # (the table holds the neurons asked for, each with an error column)
    if len(table) and failed.all():  # nothing came out: say why, and exit as an error
        print(f"neuronwidgets explain: error: every neuron failed, e.g. {table['error'][failed].iloc[0]}", file=sys.stderr)
        return 2
    if failed.any():
        print(f"{int(failed.sum())} of {len(table)} neurons failed (see the error column; run the command again to retry them)")
    return 0


DEMO_MIN_N = 24


def cmd_demo(args: argparse.Namespace) -> int:
    from neuronwidgets.demo import run_demo

    if args.n < DEMO_MIN_N:
        raise ValueError(f"--n must be at least {DEMO_MIN_N}: the demo collects five sixths of the images and holds the rest out")
    run_demo(Path(args.out), n=args.n)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neuronwidgets", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="record every neuron over a dataset into an index folder")
    c.add_argument("--model", default="toy", help="'toy', a local checkpoint folder, or a hub id already in the local cache")
    c.add_argument("--download", action="store_true", help="let a hub id --model be downloaded (nothing is downloaded otherwise)")
    c.add_argument("--data", required=True, help="shapes:n=N,seed=S | an image folder | a COCO annotation .json")
    c.add_argument("--images", help="the images folder of a COCO annotation file")
    c.add_argument("--captions", help="a COCO captions file to pair with a COCO instances file")
    c.add_argument("--out", required=True)
    c.add_argument("--layers", help="comma-separated layer ids (default: all)")
    c.add_argument("--top-k", type=int, default=50)
    c.add_argument("--random-k", type=int, default=10)
    c.add_argument("--map-k", type=int, default=30, help="top samples that keep their maps (the rest keep histograms)")
    c.add_argument("--batch-size", type=int, default=16)
    c.add_argument("--text", default="generate", choices=["generate", "caption", "prompt"])
    c.add_argument("--max-text-tokens", type=int, default=64)
    c.add_argument("--map-bits", type=int, default=4, choices=[4, 8])
    c.add_argument("--prompt", help="a prompt template with <image>, used for every image")
    c.add_argument("--site", default="act", choices=list(SITES))
    c.add_argument("--device")
    c.add_argument("--dtype")
    c.add_argument("--limit", type=int)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--checkpoint-every", type=int, default=None,
                   help="write a resumable checkpoint every N batches (default: about once a minute, under 5%% of the time)")
    c.add_argument("--overwrite", action="store_true")
    c.set_defaults(func=cmd_collect)
    m = sub.add_parser("merge", help="merge index folders of disjoint shards")
    m.add_argument("indexes", nargs="+")
    m.add_argument("--out", required=True)
    m.add_argument("--overwrite", action="store_true", help="replace another index (or other files) in --out")
    m.set_defaults(func=cmd_merge)
    i = sub.add_parser("info", help="summarise an index folder")
    i.add_argument("index")
    i.add_argument("--rule", default="paper", choices=["paper", "share"])
    i.set_defaults(func=cmd_info)
    e = sub.add_parser("explain", help="explain and score neurons of an index (stored in the folder)")
    e.add_argument("index")
    e.add_argument("--explainer", default="concept", choices=["concept", "llm"])
    e.add_argument("--llm-model", default="gpt-4o")
    e.add_argument("--base-url")
    e.add_argument("--layers")
    e.add_argument("--limit", type=int, default=50)
    e.add_argument("--holdout", metavar="DIR", help="an index of the same model over other samples, to score the explanations on "
                   "(default: the records of INDEX that the explainer did not read)")
    e.set_defaults(func=cmd_explain)
    d = sub.add_parser("demo", help="the toy model end to end: collect, categorise, explain, export")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--n", type=int, default=600)
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, IndexError, TypeError, LLMRequestError) as err:  # what a user's arguments can cause
        print(f"neuronwidgets {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
