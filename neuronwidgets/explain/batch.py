"""explain_all: explain (and score) many neurons, stored in the index folder as a Parquet table, resumable.

The table (`explanations.parquet`) has one row per neuron: the explanation's fields (as
`Explanation.to_row`), then, when a simulator is given, its scores and its baseline's. Rows
are saved every `save_every` neurons and when the run stops for any reason; a rerun skips
neurons already explained by the same explainer, model, prompt version and settings (the
`explainer_settings` column: a ConceptExplainer's threshold, an Explainer's number of
images, ...; rows from before that column are kept), and retries those that failed (their
`error` column says why).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from neuronwidgets.explain.data import categories, is_index
from neuronwidgets.explain.explainer import ExplanationError
from neuronwidgets.explain.explanation import Explanation
from neuronwidgets.explain.scoring import NoHeldOutRecords, score
from neuronwidgets.explain.simulator import SimulationParseError
from neuronwidgets.llm.errors import LLMRequestError
from neuronwidgets.store.layout import EXPLANATIONS

if TYPE_CHECKING:
    from neuronwidgets.explain.base import NeuronExplainer, NeuronSimulator
    from neuronwidgets.records import ActivationRecord
    from neuronwidgets.store.index import NeuronIndex

TABLE = EXPLANATIONS
EXPLANATION_COLUMNS = ["layer", "neuron", "category", "text", "concept", "explainer", "model", "prompt_version", "explainer_settings",
                       "exemplars", "extra"]
SCORE_COLUMNS = ["score", "score_top", "score_random", "baseline", "baseline_top", "baseline_random", "baseline_layer",
                 "baseline_neuron", "baseline_text", "modality", "n_unparsed", "simulator", "held_out"]
COLUMNS = EXPLANATION_COLUMNS + SCORE_COLUMNS + ["error"]
#: Failures that are recorded in a row (and retried on the next run) instead of stopping the batch.
RECOVERABLE = (LLMRequestError, ExplanationError, SimulationParseError)


def _neurons(index, neurons) -> list[tuple[int, int]]:
    if neurons is None:
        table = categories(index)
        table = table[table["category"] != "inactive"]
        return [(int(a), int(b)) for a, b in zip(table["layer"], table["neuron"])]
    if isinstance(neurons, pd.DataFrame):
        return [(int(a), int(b)) for a, b in zip(neurons["layer"], neurons["neuron"])]
    out = []
    for item in neurons:
        if np.ndim(item) != 1 or len(item) != 2:
            raise TypeError(f"neurons must be (layer, neuron) pairs or a DataFrame with layer and neuron columns; got {item!r}")
        out.append((int(item[0]), int(item[1])))
    return list(dict.fromkeys(out))


def _save(rows: dict[tuple[int, int], dict], file: Path | None) -> pd.DataFrame:
    df = pd.DataFrame([rows[k] for k in sorted(rows)], columns=COLUMNS)
    for col in ("baseline_layer", "baseline_neuron", "n_unparsed"):
        df[col] = df[col].astype("Int64")
    for col in ("score", "score_top", "score_random", "baseline", "baseline_top", "baseline_random"):
        df[col] = df[col].astype("float64")
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=".explanations-", suffix=".parquet")
        os.close(fd)
        try:
            df.to_parquet(tmp, index=False)
            os.replace(tmp, file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return df


def _empty_row(exp: Explanation) -> dict:
    row = {c: None for c in COLUMNS}
    row.update(exp.to_row())
    return row


def explain_all(index: NeuronIndex, neurons: Iterable[tuple[int, int]] | pd.DataFrame | None = None,
                explainer: NeuronExplainer | None = None, simulator: NeuronSimulator | None = None, *,
                holdout: NeuronIndex | list[ActivationRecord] | None = None, path: str | os.PathLike | None = None,
                resume: bool = True, progress: bool = True, workers: int | None = None, save_every: int = 25,
                n_top: int | None = 20, n_random: int | None = 20) -> pd.DataFrame:
    """Explain `neurons` of `index` (default: every neuron that is not inactive) and, with a simulator, score them.

    explainer: an Explainer or ConceptExplainer (default: ConceptExplainer on the index's dataset).
    simulator: scores each explanation on `holdout` (see `score`) beside a baseline taken from
        another neuron's row of the same table.
    path: the table file (default: explanations.parquet in the index folder; in memory only
        for an index without a folder).
    workers: neurons in flight at once (default: the explainer's client's max_concurrency, else 1).
    """
    if explainer is None:
        from neuronwidgets.explain.concept import ConceptExplainer

        explainer = ConceptExplainer()
    todo = _neurons(index, neurons)
    if simulator is not None:
        _check_holdout(index, holdout, explainer, todo)
    held_out = _held_out_tag(holdout)
    file = Path(path).expanduser() if path is not None else (Path(index.path) / TABLE if getattr(index, "path", None) else None)
    rows: dict[tuple[int, int], dict] = {}
    if resume and file is not None and file.exists():
        for r in pd.read_parquet(file).to_dict("records"):
            rows[(int(r["layer"]), int(r["neuron"]))] = {c: r.get(c) for c in COLUMNS}
    client = getattr(explainer, "client", None)
    workers = workers or getattr(client, "max_concurrency", 1)
    model = getattr(client, "model", "concept")
    version = getattr(explainer, "prompt_version", None)
    if version is None:
        from neuronwidgets.explain.concept import CONCEPT_VERSION

        version = CONCEPT_VERSION
    settings = _settings_tag(explainer)

    def done(key) -> bool:
        r = rows.get(key)
        return bool(r) and _isnull(r.get("error")) and r.get("explainer") == explainer.name and r.get("model") == model \
            and r.get("prompt_version") == version \
            and (_isnull(r.get("explainer_settings")) or settings is None or r["explainer_settings"] == settings)

    def explain_one(key):
        try:
            row = _empty_row(explainer.explain(index, *key))
        except RECOVERABLE as err:
            return key, None, f"explain: {type(err).__name__}: {err}"
        row["explainer_settings"] = settings
        return key, row, None

    pending = [k for k in todo if not done(k)]
    bar = tqdm(total=len(todo), initial=len(todo) - len(pending), desc="explain", unit="neuron", disable=not progress)
    try:
        _run(pending, explain_one, workers, rows, file, save_every, bar, client)
        if simulator is not None:
            table = _save(rows, None)
            # Scored means the simulator column is set: a NaN score (a constant simulation) is a result too.
            # ... on the held-out records asked for now (else scored again; tables from before the column: kept).
            scoring = [k for k in todo if k in rows and _isnull(rows[k].get("error"))
                       and (_isnull(rows[k].get("simulator"))
                            or not _isnull(rows[k].get("held_out")) and not _same_held_out(rows[k]["held_out"], held_out))]
            bar.close()  # a bar of its own (a reset bar keeps its first start and shows negative rates)
            bar = tqdm(total=len(todo), initial=len(todo) - len(scoring), desc="score", unit="neuron",
                       disable=not progress or not scoring)

            def score_one(key):
                row = dict(rows[key])
                for attempt in range(2):
                    exp = Explanation.from_row(row)
                    try:
                        result = score(exp, index, simulator, holdout=holdout, baseline_table=table, n_top=n_top,
                                       n_random=n_random, workers=1)
                        break
                    except NoHeldOutRecords as err:
                        # An explanation from an earlier run that read every record: explain it again, now.
                        _, fresh, error = explain_one(key) if attempt == 0 else (key, None, None)
                        if fresh is None:
                            return key, None, error or f"score: {type(err).__name__}: {err}"
                        row = fresh
                    except RECOVERABLE as err:
                        return key, None, f"score: {type(err).__name__}: {err}"
                s = result.summary()
                row.update({k: s.get(k) for k in SCORE_COLUMNS})
                row["baseline_top"], row["baseline_random"] = result.baseline_scores["top"], result.baseline_scores["random"]
                row["held_out"] = held_out
                return key, row, None

            _run(scoring, score_one, workers, rows, file, save_every, bar, client)
    finally:
        bar.close()
        out = _save(rows, file) if rows else pd.DataFrame(columns=COLUMNS)
    keep = set(todo)
    return out[[(int(a), int(b)) in keep for a, b in zip(out["layer"], out["neuron"])]].reset_index(drop=True)


def _settings_tag(explainer) -> str | None:
    """The explainer's `settings` as the table stores them (JSON, keys sorted); None for an explainer without any.

    Sets come out sorted and numpy scalars as plain numbers, so equal settings give the same
    text in every process (else a resumed run would explain everything again).
    """
    if not hasattr(type(explainer), "settings") and "settings" not in getattr(explainer, "__dict__", {}):
        return None  # (a `settings` property that fails raises, instead of reading as "none")
    settings = explainer.settings
    return None if settings is None else json.dumps(_plain(settings), sort_keys=True)


def _plain(value):
    """value as JSON-able Python, the same for equal values: dict keys as text, sets sorted, numpy as Python."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v) for v in value), key=repr)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.generic, np.ndarray)):
        return _plain(value.tolist())
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _held_out_tag(holdout) -> str:
    """What the scores are computed on, as stored in the table's held_out column (a change means scoring again)."""
    if holdout is None:
        return "index"  # the index's records that the explainer did not read
    if is_index(holdout):
        manifest = getattr(holdout, "manifest", {}) or {}
        fingerprint = (manifest.get("dataset") or {}).get("fingerprint")
        if not fingerprint:
            return f"holdout:{getattr(holdout, 'path', '?')}"
        which = manifest.get("positions")  # which samples of the dataset: another slice of it is another hold-out
        return f"holdout:{fingerprint}:{manifest.get('n_samples')}" + (f":{which[:12]}" if which else "")
    return f"records:{len(list(holdout))}"


def _same_held_out(stored: str, now: str) -> bool:
    """Whether a row's held_out tag names the hold-out scored now.

    A tag from before positions were added names its dataset and size alone.
    """
    return stored == now or (now.startswith("holdout:") and stored == now.rsplit(":", 1)[0])


def _check_holdout(index, holdout, explainer, todo) -> None:
    """Refuse, before any work, a scoring that cannot happen: nothing held out, or a held-out index that does not fit."""
    fix = ("pass holdout= (a NeuronIndex of the same model collected over other samples, e.g. "
           "session.collect(other_data); on the command line --holdout DIR)")
    if holdout is None:
        unread = getattr(explainer, "unread_kinds", None)  # known for the concept search
        if unread is None or not todo:
            return
        if not unread:
            raise ValueError(f"{explainer!r} reads every top and random record of a neuron, so the index holds none back "
                             f"to score the explanations on: {fix}, or ConceptExplainer(include_random=False) to score "
                             "on the random records alone")
        if unread == ("random",) and not index.records(*todo[0], "random"):
            raise ValueError(f"{explainer!r} reads every top record of a neuron and this index has no random records "
                             f"(collected with random_k=0), so nothing is held out to score on: {fix}")
        return
    if not is_index(holdout):
        return
    if holdout is index or (getattr(index, "path", None) is not None and getattr(holdout, "path", None) == index.path):
        raise ValueError(f"the held-out index is the index itself: its records are the ones the explainer read; {fix}")
    shared = _shared_samples(index, holdout)
    if shared:
        raise ValueError(f"the held-out index holds {len(shared)} of the index's own samples (e.g. {sorted(shared)[:3]}): "
                         f"scores on them would not be held out; {fix}")
    layers = getattr(holdout, "layers", None)  # a duck-typed index may not list them
    missing = sorted({layer for layer, _ in todo} - set(layers)) if layers is not None else []
    if missing:
        raise ValueError(f"the held-out index has no layer {missing[0]} (its layers: {holdout.layers}); "
                         "collect it with the layers you explain")
    for attr in ("model", "n_neurons"):
        a, b = getattr(index, attr, None), getattr(holdout, attr, None)
        if a is not None and b is not None and a != b:
            raise ValueError(f"the held-out index's {attr} is {b!r} where the index's is {a!r}: it must come from the same model")


def _shared_samples(index, holdout) -> set[str]:
    """Ids of the samples both indexes hold when they were collected over one dataset (a copy of the index, an overlapping slice).

    Indexes of different datasets share none, whatever their ids (two folders may both hold a 0001.jpg).
    """
    fingerprint = lambda i: ((getattr(i, "manifest", None) or {}).get("dataset") or {}).get("fingerprint")  # noqa: E731
    a, b = getattr(index, "samples", None), getattr(holdout, "samples", None)
    if (fingerprint(index) is None or fingerprint(index) != fingerprint(holdout)
            or not isinstance(a, pd.DataFrame) or not isinstance(b, pd.DataFrame)):
        return set()
    shared = set(a["sample"]) & set(b["sample"])  # positions in the one dataset
    return set(a.loc[a["sample"].isin(shared), "sample_id"].astype(str))


def _isnull(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA


def _run(keys, fn, workers, rows, file, save_every, bar, client) -> None:
    """Run `fn` over keys (threads when workers > 1), store each row, save every `save_every` and at the end."""
    if not keys:
        return
    last = time.monotonic()
    n = 0

    def store(key, row, error):
        nonlocal n, last
        if row is None:
            row = dict(rows.get(key) or {c: None for c in COLUMNS})
            row.update({"layer": key[0], "neuron": key[1], "error": error})
        rows[key] = row
        n += 1
        bar.update(1)
        if client is not None:
            bar.set_postfix(tokens=client.usage.total_tokens, cached=client.usage.cache_hits, refresh=False)
        if n % save_every == 0 or time.monotonic() - last > 60:
            _save(rows, file)
            last = time.monotonic()

    if workers <= 1:
        for k in keys:
            store(*fn(k))
        return
    pool = ThreadPoolExecutor(max_workers=workers)
    futures = [pool.submit(fn, k) for k in keys]
    stored = set()
    try:
        for fut in as_completed(futures):
            store(*fut.result())
            stored.add(fut)
    except BaseException:
        # An unexpected error or Ctrl-C: cancel what has not started, keep what has finished
        # (the caller saves the table), and re-raise.
        pool.shutdown(wait=True, cancel_futures=True)
        for fut in futures:
            if fut not in stored and fut.done() and not fut.cancelled() and fut.exception() is None:
                store(*fut.result())
        raise
    finally:
        pool.shutdown(wait=False)
