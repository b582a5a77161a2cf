"""Decode MLP neurons' weights into tokens through the final norm and the LM head (the logit lens on weights).

For neuron ``n`` of layer ``l`` of a Llama-style MLP
(``down_proj(act_fn(gate_proj(x)) * up_proj(x))``) three directions of the residual stream
are decoded:

- ``writes``: what the neuron adds to the residual stream per unit of activation, its
  down_proj column ``W_down[:, n]``.
- ``reads_up`` / ``reads_gate``: the residual direction its up_proj / gate_proj row
  responds to, ``W_up[n, :]`` / ``W_gate[n, :]``; with ``fold_input_norm=True`` (the default)
  multiplied elementwise by the layer's ``post_attention_layernorm`` weight, which the MLP's
  input passes through, so the row is expressed in residual-stream coordinates.

A direction ``d`` is decoded as ``logits = W_U (g * d)``: ``W_U`` the LM head's weight
``[vocab, hidden]``, ``g`` the final RMSNorm's weight applied elementwise (Gemma's norms
scale by ``1 + weight``, and that is what is used for them). The norm's
division by the root mean square is left out (no mean/variance normalisation), as in the
logit-lens literature on weights (Geva et al. 2022; Dar et al. 2023; "Decoding specialised
feature neurons in LLMs with the final projection layer"): it is one positive factor per
direction, so it changes no ranking of one neuron's tokens, only the logits' scale. An LM
head bias, if any, is left out too (it is the same for every neuron), and so is a final
logit soft-cap (monotone: it changes no ranking). ``promoted`` tokens
are the ``k`` largest logits, ``suppressed`` the ``k`` smallest (most negative).

Decoding is chunked over neurons: at most ``chunk_size`` rows of ``[neurons, vocab]`` logits
exist at a time, and only the top-k of each is kept, so memory stays bounded whatever the
layer width (LLaVA-1.5-7B: 11008 neurons x 32000 tokens per layer). The matmuls run on the
model's device, in float32 unless told otherwise.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn

from neuronwidgets.checks import whole_number
from neuronwidgets.model.intervene import language_model_of

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from neuronwidgets.model.session import Session
    from neuronwidgets.store.index import NeuronIndex

KINDS = ("writes", "reads_up", "reads_gate")
DIRECTIONS = ("promoted", "suppressed")
COLUMNS = ["layer", "neuron", "kind", "direction", "rank", "token_id", "token", "logit"]
FILENAME = "decoding.parquet"
_META_KEY = b"neuronwidgets.decoding"
#: Bytes of [chunk, vocab] float32 logits held at once when no chunk_size is given.
DEFAULT_CHUNK_BYTES = 256 * 2**20


class DecodingFormatError(ValueError):
    """A decoding file that is not what `NeuronDecoding.save` writes."""


@dataclass
class ModelParts:
    """The raw modules decoding needs: decoder layers, the final norm, the LM head."""

    layers: Sequence[nn.Module]
    norm: nn.Module
    lm_head: nn.Module


def find_parts(model: nn.Module | Session) -> ModelParts:
    """Decoder layers, final norm and LM head of a transformers causal LM or VLM (or a Session).

    The decoder stack is found by `neuronwidgets.model.intervene.language_model_of`
    (``model.model.language_model`` for LLaVA, older ``model.language_model.model``, a plain
    ``LlamaForCausalLM``'s ``model.model``); the final norm is its ``.norm``; the LM head is
    ``model.lm_head`` or ``get_output_embeddings()``.
    """
    if not isinstance(model, nn.Module) and isinstance(getattr(model, "model", None), nn.Module):
        model = model.model  # a Session
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a transformers model (nn.Module) or a Session, got {type(model).__name__}")
    try:
        lm = language_model_of(model)
    except TypeError:
        lm = None
    layers = getattr(lm, "layers", None)
    norm = getattr(lm, "norm", None)
    head = getattr(model, "lm_head", None)
    if head is None and hasattr(model, "get_output_embeddings"):
        head = model.get_output_embeddings()
    missing = [name for name, part in (("decoder layers", layers), ("final norm", norm), ("LM head", head)) if part is None]
    if missing:
        raise TypeError(f"cannot find the {', '.join(missing)} of {type(model).__name__}: "
                        "decoding supports Llama-style causal LMs and the VLMs built on them")
    return ModelParts(layers=layers, norm=norm, lm_head=head)


def norm_scale(norm: nn.Module) -> torch.Tensor | None:
    """The elementwise scale a final RMSNorm applies: its weight (Gemma's norms: 1 + weight); None without a weight."""
    weight = getattr(norm, "weight", None)
    if weight is None:
        return None
    weight = weight.detach()
    return 1.0 + weight if type(norm).__name__.startswith("Gemma") else weight


def vocab_texts(tokenizer: PreTrainedTokenizerBase | None, vocab_size: int) -> list[str]:
    """Each token id's own text, as the session shows tokens ('\u2581' as a space); ids past the tokenizer as '<id N>'."""
    if tokenizer is None:
        return [f"<id {i}>" for i in range(vocab_size)]
    n = min(vocab_size, len(tokenizer))
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    texts = [(p or "").replace("\u2581", " ").replace("\u0120", " ").replace("\u010a", "\n") for p in pieces]
    return texts + [f"<id {i}>" for i in range(n, vocab_size)]


def _directions(mlp: nn.Module, layer_module: nn.Module, kind: str, fold_input_norm: bool) -> torch.Tensor:
    """The kind's directions of one layer as [neurons, hidden] (a view where possible)."""
    if kind == "writes":
        return mlp.down_proj.weight.detach().T  # [hidden, neurons] -> [neurons, hidden]
    proj = mlp.up_proj if kind == "reads_up" else mlp.gate_proj
    rows = proj.weight.detach()  # [neurons, hidden]
    if fold_input_norm:
        ln = getattr(layer_module, "post_attention_layernorm", None)
        scale = norm_scale(ln) if ln is not None else None
        if scale is not None:
            rows = rows * scale.to(rows.dtype)
    return rows


def chunk_rows(vocab: int, chunk_size: int | None) -> int:
    """Neurons per chunk: `chunk_size`, or as many as fit DEFAULT_CHUNK_BYTES of float32 logits."""
    if chunk_size is None:
        return max(1, DEFAULT_CHUNK_BYTES // (4 * vocab))
    chunk_size = whole_number(chunk_size, "chunk_size")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    return chunk_size


@torch.inference_mode()
def decode_directions(directions: torch.Tensor, unembed: torch.Tensor, norm_weight: torch.Tensor | None, k: int,
                      chunk_size: int | None = None, dtype: torch.dtype = torch.float32
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k promoted and suppressed tokens of each row of `directions` [n, hidden], chunked over rows.

    Returns four tensors on the CPU: promoted ids/logits [n, k] (largest first) and
    suppressed ids/logits [n, k] (most negative first).
    """
    device = unembed.device
    vocab = unembed.shape[0]
    k = min(k, vocab)
    w_u = unembed.to(dtype)
    g = None if norm_weight is None else norm_weight.detach().to(device=device, dtype=dtype)
    step = chunk_rows(vocab, chunk_size)
    n = directions.shape[0]
    out = [torch.empty(n, k, dtype=torch.int32), torch.empty(n, k, dtype=torch.float32),
           torch.empty(n, k, dtype=torch.int32), torch.empty(n, k, dtype=torch.float32)]
    for start in range(0, n, step):
        stop = min(n, start + step)
        d = directions[start:stop].to(device=device, dtype=dtype)
        if g is not None:
            d = d * g
        logits = d @ w_u.T  # [chunk, vocab]
        top = torch.topk(logits, k, dim=1, largest=True, sorted=True)
        bottom = torch.topk(logits, k, dim=1, largest=False, sorted=True)
        out[0][start:stop] = top.indices.to("cpu", torch.int32)
        out[1][start:stop] = top.values.to("cpu", torch.float32)
        out[2][start:stop] = bottom.indices.to("cpu", torch.int32)
        out[3][start:stop] = bottom.values.to("cpu", torch.float32)
        del logits, top, bottom, d
    return tuple(out)


def decode_neurons(model: nn.Module | Session, tokenizer: PreTrainedTokenizerBase | None = None,
                   layers: Sequence[int] | None = None, k: int = 10,
                   kinds: Sequence[str] = KINDS, chunk_size: int | None = None, fold_input_norm: bool = True,
                   dtype: torch.dtype = torch.float32, progress: bool = False,
                   path: str | Path | None = None) -> "NeuronDecoding":
    """Decode every neuron of `layers` (all by default) into its top-k promoted and suppressed tokens.

    `model` is a transformers LLaVA or causal LM, or a Session (whose tokenizer is then used
    unless one is given). See the module docstring for what is decoded and how the final
    norm is applied. `path` (a folder, or a NeuronIndex: its folder) also saves the result
    there as decoding.parquet, beside the index's files.
    """
    if tokenizer is None and not isinstance(model, nn.Module):
        tokenizer = getattr(model, "tokenizer", None)
    name = getattr(model, "name", "")
    parts = find_parts(model)
    n_layers = len(parts.layers)
    if layers is None:
        layers = list(range(n_layers))
    else:
        if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
            layers = [layers]
        given = [whole_number(x, "layer") for x in layers]
        for x in given:
            if not -n_layers <= x < n_layers:
                raise IndexError(f"layer {x} does not exist: the model has layers 0..{n_layers - 1} (or -{n_layers}..-1)")
        layers = sorted({x % n_layers for x in given})  # negative: from the last, as in Python
        if not layers:
            raise ValueError(f"no layers given: pass layers=None for all {n_layers}")
    kinds = [kinds] if isinstance(kinds, str) else list(dict.fromkeys(kinds))
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    k = whole_number(k, "k")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    unembed = parts.lm_head.weight.detach()
    norm_weight = norm_scale(parts.norm)
    vocab = unembed.shape[0]
    results: dict[tuple[int, str], tuple] = {}
    started = time.perf_counter()
    todo = [(layer, kind) for layer in layers for kind in kinds]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="decoding neurons", unit="layer-kind")
    for layer, kind in todo:
        layer_module = parts.layers[layer]
        mlp = getattr(layer_module, "mlp", None)
        if mlp is None or not all(hasattr(mlp, p) for p in ("down_proj", "up_proj", "gate_proj")):
            raise TypeError(f"layer {layer} has no Llama-style MLP (gate_proj, up_proj, down_proj)")
        dirs = _directions(mlp, layer_module, kind, fold_input_norm)
        results[(layer, kind)] = decode_directions(dirs, unembed, norm_weight, k, chunk_size, dtype)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    meta = {
        "model": str(name or getattr(getattr(parts.lm_head, "weight", None), "shape", "")),
        "vocab_size": int(vocab),
        "k": int(min(k, vocab)),
        "kinds": kinds,
        "layers": layers,
        "n_neurons": {str(layer): int(parts.layers[layer].mlp.down_proj.in_features) for layer in layers},
        "norm": "final RMSNorm weight applied elementwise; no 1/rms factor; LM head bias left out",
        "fold_input_norm": bool(fold_input_norm),
        "dtype": str(dtype).replace("torch.", ""),
        "seconds": round(time.perf_counter() - started, 3),
    }
    frame = _to_frame(results, vocab_texts(tokenizer, vocab))
    decoding = NeuronDecoding(frame, meta)
    if path is not None:
        decoding.save(_folder_of(path))
    return decoding


def _folder_of(where) -> Path:
    """A folder from a path or from an object with a `.path` (a NeuronIndex)."""
    if isinstance(where, (str, os.PathLike)):
        return Path(where).expanduser()
    folder = getattr(where, "path", None)
    if folder is None:
        raise ValueError(f"{type(where).__name__} has no folder to save a decoding beside (an in-memory index?)")
    return Path(folder)


_LOADED: dict = {}


def decoding_for(index: NeuronIndex) -> "NeuronDecoding | None":
    """The decoding saved in `index`'s folder (decoding.parquet), or None when there is none or it decodes other neurons."""
    folder = getattr(index, "path", None)
    file = Path(folder) / FILENAME if folder is not None else None
    if file is None or not file.is_file():
        return None
    stat = file.stat()
    key = (str(file.resolve()), stat.st_mtime_ns, stat.st_size)
    decoding = _LOADED.get(key)
    if decoding is None:
        decoding = NeuronDecoding.load(file)
        _LOADED.clear()  # one decoding kept: a 7B model's is a few hundred MB
        _LOADED[key] = decoding
    n = getattr(index, "n_neurons", None)
    saved = set((decoding.meta.get("n_neurons") or {}).values())
    if n is not None and saved and saved != {int(n)}:
        import warnings

        warnings.warn(f"{str(Path(folder) / FILENAME)!r} decodes layers of {sorted(saved)} neurons, the index has {n}: "
                      "not used", stacklevel=2)
        return None
    return decoding


def _to_frame(results: dict, texts: list[str]) -> pd.DataFrame:
    """The tidy table from {(layer, kind): (pid, plogit, sid, slogit)}, built in (layer, neuron, kind, direction, rank) order."""
    codes_of_id, uniques = pd.factorize(pd.Series(texts))
    layers = sorted({layer for layer, _ in results})
    kinds = [kind for kind in KINDS if any(kd == kind for _, kd in results)]
    cols: dict[str, list] = {c: [] for c in ("layer", "neuron", "kind", "direction", "rank", "token_id", "logit")}
    for layer in layers:
        per_kind = [results[(layer, kind)] for kind in kinds]
        n, k = per_kind[0][0].shape
        # [n, kinds, 2 directions, k]
        ids = np.stack([np.stack([r[0].numpy(), r[2].numpy()], axis=1) for r in per_kind], axis=1)
        vals = np.stack([np.stack([r[1].numpy(), r[3].numpy()], axis=1) for r in per_kind], axis=1)
        shape = ids.shape
        size = ids.size
        cols["layer"].append(np.full(size, layer, dtype=np.int32))
        cols["neuron"].append(np.broadcast_to(np.arange(n, dtype=np.int32)[:, None, None, None], shape).reshape(-1))
        kind_codes = np.array([KINDS.index(kd) for kd in kinds], dtype=np.int8)
        cols["kind"].append(np.broadcast_to(kind_codes[None, :, None, None], shape).reshape(-1))
        cols["direction"].append(np.broadcast_to(np.arange(2, dtype=np.int8)[None, None, :, None], shape).reshape(-1))
        cols["rank"].append(np.broadcast_to(np.arange(k, dtype=np.int16)[None, None, None, :], shape).reshape(-1))
        cols["token_id"].append(ids.reshape(-1).astype(np.int32))
        cols["logit"].append(vals.reshape(-1).astype(np.float32))
    dtypes = {"layer": np.int32, "neuron": np.int32, "kind": np.int8, "direction": np.int8, "rank": np.int16,
              "token_id": np.int32, "logit": np.float32}
    arrays = {c: (np.concatenate(v) if v else np.empty(0, dtypes[c])) for c, v in cols.items()}
    frame = pd.DataFrame({
        "layer": arrays["layer"],
        "neuron": arrays["neuron"],
        "kind": pd.Categorical.from_codes(arrays["kind"], categories=list(KINDS)),
        "direction": pd.Categorical.from_codes(arrays["direction"], categories=list(DIRECTIONS)),
        "rank": arrays["rank"],
        "token_id": arrays["token_id"],
        "token": pd.Categorical.from_codes(codes_of_id[arrays["token_id"].astype(np.int64)], categories=uniques),
        "logit": arrays["logit"],
    })
    return frame[COLUMNS]


@dataclass
class NeuronDecoding:
    """Per neuron, the top promoted and suppressed tokens of what it writes and reads (a tidy table).

    `frame` has the columns layer, neuron, kind (writes | reads_up | reads_gate), direction
    (promoted | suppressed), rank (0 = strongest), token_id, token, logit; `meta` says how it
    was made.
    """

    frame: pd.DataFrame
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        missing = [c for c in COLUMNS if c not in self.frame.columns]
        if missing:
            raise DecodingFormatError(f"a decoding table needs the columns {COLUMNS}; missing {missing}")
        key = self.frame["layer"].to_numpy(np.int64) << 32 | self.frame["neuron"].to_numpy(np.int64)
        if len(key) > 1 and not (np.diff(key) >= 0).all():
            self.frame = self.frame.sort_values(["layer", "neuron", "kind", "direction", "rank"], kind="stable",
                                                ignore_index=True)
            key = self.frame["layer"].to_numpy(np.int64) << 32 | self.frame["neuron"].to_numpy(np.int64)
        self._key = key

    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        layers = sorted(set(self.frame["layer"].unique().tolist()))
        n = len(self.frame[["layer", "neuron"]].drop_duplicates()) if len(self.frame) else 0
        return (f"<NeuronDecoding: {n} neurons in layers {layers[:8]}{'...' if len(layers) > 8 else ''}, "
                f"top {self.meta.get('k', '?')} tokens, kinds {self.meta.get('kinds', list(KINDS))}>")

    @property
    def layers(self) -> list[int]:
        """The decoded layers."""
        return sorted(int(x) for x in self.frame["layer"].unique())

    def neuron_rows(self, layer: int, neuron: int) -> pd.DataFrame:
        """All rows of one neuron (every kind and direction)."""
        layer = whole_number(layer, "layer")
        neuron = whole_number(neuron, "neuron")
        key = layer << 32 | neuron
        lo, hi = np.searchsorted(self._key, [key, key + 1])
        if lo == hi:
            if layer not in self.layers:
                raise KeyError(f"layer {layer} is not in this decoding (it holds layers {self.layers})")
            raise KeyError(f"neuron {neuron} of layer {layer} is not in this decoding")
        return self.frame.iloc[lo:hi]

    def top_tokens(self, layer: int, neuron: int, kind: str = "writes", direction: str = "promoted",
                   k: int | None = None) -> pd.DataFrame:
        """One neuron's top tokens of one kind and direction, strongest first: rank, token_id, token, logit."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {direction!r}; choose from {', '.join(DIRECTIONS)}")
        rows = self.neuron_rows(layer, neuron)
        rows = rows[(rows["kind"] == kind).to_numpy() & (rows["direction"] == direction).to_numpy()]
        if not len(rows):
            raise KeyError(f"kind {kind!r} was not decoded (this decoding holds {self.meta.get('kinds')})")
        if k is not None:
            rows = rows.iloc[: whole_number(k, "k")]
        return rows[["rank", "token_id", "token", "logit"]].reset_index(drop=True)

    def token_lists(self, layer: int, neuron: int, k: int | None = None) -> dict:
        """Plain data for widgets: {kind: {direction: [{"token", "token_id", "logit"}, ...]}}."""
        rows = self.neuron_rows(layer, neuron)
        if k is not None:
            rows = rows[rows["rank"].to_numpy() < k]
        out: dict = {}
        for (kind, direction), group in rows.groupby(["kind", "direction"], observed=True, sort=False):
            out.setdefault(str(kind), {})[str(direction)] = [
                {"token": str(t), "token_id": int(i), "logit": float(v)}
                for t, i, v in zip(group["token"], group["token_id"], group["logit"])
            ]
        return out

    # --- files -----------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """Write `folder`/decoding.parquet (atomically; the table, with `meta` as JSON in the file's metadata)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        folder = Path(folder).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(self.frame, preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[_META_KEY] = json.dumps(self.meta).encode()
        table = table.replace_schema_metadata(meta)
        target = folder / FILENAME
        fd, tmp = tempfile.mkstemp(prefix=".decoding-", suffix=".parquet.tmp", dir=folder)
        os.close(fd)
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NeuronDecoding":
        """Read a decoding: a folder holding decoding.parquet (an index folder), or the file itself."""
        import pyarrow.parquet as pq

        path = Path(path).expanduser()
        file = path / FILENAME if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no neuron decoding at {str(file)!r}: make one with nw.decode_neurons(...).save(folder)")
        try:
            table = pq.read_table(file)
        except Exception as err:  # pyarrow raises several kinds
            raise DecodingFormatError(f"{str(file)!r} is not a readable Parquet file: {err}") from err
        raw = (table.schema.metadata or {}).get(_META_KEY)
        if raw is None:
            raise DecodingFormatError(f"{str(file)!r} is a Parquet file but not a neuron decoding (no decoding metadata)")
        try:
            meta = json.loads(raw)
        except ValueError as err:
            raise DecodingFormatError(f"{str(file)!r}: its decoding metadata is not JSON") from err
        frame = table.to_pandas()
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise DecodingFormatError(f"{str(file)!r} lacks the columns {missing}")
        for col, allowed in (("kind", KINDS), ("direction", DIRECTIONS)):
            values = frame[col]
            seen = values.cat.categories if isinstance(values.dtype, pd.CategoricalDtype) else values.unique()
            bad = {str(v) for v in seen} - set(allowed)
            if bad:
                raise DecodingFormatError(f"{str(file)!r}: unknown {col} values {sorted(bad)}")
            if not (isinstance(values.dtype, pd.CategoricalDtype) and list(values.cat.categories) == list(allowed)):
                frame[col] = pd.Categorical(values.astype(str), categories=list(allowed))
        return cls(frame[COLUMNS], meta)


def load_decoding(path: str | os.PathLike) -> NeuronDecoding:
    """`NeuronDecoding.load`: a folder holding decoding.parquet, or the file."""
    return NeuronDecoding.load(path)
