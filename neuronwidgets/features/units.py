"""SNMF features as first-class units: the neurons of a virtual site.

    feats = nw.features.fit_features(session, data, layer=1, k=32, sparsity=0.05)   # -> FeatureSet
    fs = nw.features.FeatureSession(session, feats)       # a Session whose "neurons" are the k features
    index = fs.collect(data, path="runs/toy-snmf")         # exemplars, patch maps, stats, categories ...
    trace = fs.trace(image, prompt)                        # feature coefficients on every token
    nw.PatchHeatmap(trace, layer=1, neuron=5)              # feature 5 (a column of F)
    with fs.steered({(1, 5): 4.0}):                        # add 4 x feature 5's direction at mlp_in
        fs.generate(image, prompt)
    fs.decode(k=10).top_tokens(1, 5)                       # LM-head decoding of W_down @ F[:, 5]

A feature's activation on a token is its non-negative least-squares coefficient against F
(the mlp_in activations, the down_proj input, regressed on F's columns), so the collector,
the index, the widgets, the explainers and the scorers read features exactly as they read
neurons. The site is ``"snmf-<digest>"`` (a digest of every layer's F): an index, trace or
session of features is never mixed with neurons, nor with other features, silently
(`neuronwidgets.store.identity.check_same_neurons` compares sites).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from neuronwidgets.constants import MODALITIES
from neuronwidgets.features.snmf import SNMFResult, fit_snmf, nnls_rows
from neuronwidgets.model.adapters.base import site_hooks
from neuronwidgets.model.session import Session

if TYPE_CHECKING:
    from neuronwidgets.datasets.base import Sample
    from neuronwidgets.decode.lm_head import NeuronDecoding
    from neuronwidgets.model.encoding import Encoded
    from neuronwidgets.model.inputs import ImageLike
    from neuronwidgets.model.trace import Trace
    from neuronwidgets.store.index import NeuronIndex

__all__ = ["FeatureSet", "FeatureSession", "fit_features", "gather_activations", "SOURCE_SITE", "FEATURES_FILE"]

#: Where features are fitted and read: the down_proj input.
SOURCE_SITE = "mlp_in"
#: The feature set's file inside a feature index's folder (written by FeatureSession.collect).
FEATURES_FILE = "features.safetensors"
FORMAT = "neuronwidgets.features/1"
#: Most corrections per forward pass when a feature's coefficient is clamped (each one NNLS solve).
CLAMP_STEPS = 10
TEXT_SOURCES = ("prompt", "caption", "generate")


# --------------------------------------------------------------------------- the feature set


class FeatureSet:
    """SNMF features of one or more layers, {layer: SNMFResult}, all with the same k; names the site they make."""

    def __init__(self, results: Mapping[int, SNMFResult], *, model: str = "") -> None:
        if not results:
            raise ValueError("a FeatureSet needs the features of at least one layer")
        ks = {int(r.k) for r in results.values()}
        if len(ks) != 1:
            raise ValueError(f"every layer of a FeatureSet needs the same number of features, got {sorted(ks)}")
        self.results = {int(layer): r for layer, r in sorted(results.items())}
        self.model = model
        self._solvers: dict = {}

    @property
    def layers(self) -> list[int]:
        """The layers that have features."""
        return list(self.results)

    @property
    def k(self) -> int:
        """Features per layer."""
        return self.results[self.layers[0]].k

    def F(self, layer: int) -> torch.Tensor:
        """Feature directions of `layer`: float32 [n_neurons, k], unit columns."""
        return self._result(layer).F

    def _result(self, layer: int) -> SNMFResult:
        if int(layer) not in self.results:
            raise IndexError(f"layer {layer} has no features; this feature set covers layers {self.layers}")
        return self.results[int(layer)]

    def digest(self, length: int = 12) -> str:
        """A digest of every layer's F (and its layer number)."""
        h = hashlib.sha256()
        for layer, r in self.results.items():
            h.update(f"{layer}:{r.digest(64)};".encode())
        return h.hexdigest()[:length]

    @property
    def site(self) -> str:
        """The virtual site these features make: 'snmf-<digest>'."""
        return f"snmf-{self.digest()}"

    def direction(self, layer: int, feature: int) -> torch.Tensor:
        """Feature `feature`'s unit direction in `layer`'s mlp_in space [n_neurons]."""
        return self._result(layer).feature_direction(feature)

    def check_feature(self, layer: int, feature: int) -> tuple[int, int]:
        """(layer, feature) checked against this set, or a clear error."""
        self._result(layer)
        if isinstance(feature, bool) or not isinstance(feature, (int, np.integer)) or not 0 <= int(feature) < self.k:
            raise IndexError(f"feature {feature!r} is out of range: layer {layer} has features 0..{self.k - 1}")
        return int(layer), int(feature)

    def _solver(self, layer: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
        key = (int(layer), str(device))
        hit = self._solvers.get(key)
        if hit is None:
            F = self.F(layer).to(device, torch.float32)
            Q = F.T @ F
            hit = (F, Q, float(torch.linalg.eigvalsh(Q.double()).max()), torch.linalg.pinv(Q.double()))
            self._solvers[key] = hit
        return hit

    @torch.no_grad()
    def coefficients(self, layer: int, acts: torch.Tensor, *, max_iter: int = 500, tol: float = 1e-6) -> torch.Tensor:
        """NNLS coefficients of activations [..., n_neurons] on `layer`'s features: float32 [..., k], >= 0."""
        F, Q, L, P = self._solver(layer, acts.device)
        if acts.shape[-1] != F.shape[0]:
            raise ValueError(f"activations have {acts.shape[-1]} neurons, layer {layer}'s features {F.shape[0]}")
        flat = acts.reshape(-1, acts.shape[-1]).to(torch.float32)
        coeff = nnls_rows(Q, flat @ F, max_iter=max_iter, tol=tol, lipschitz=L, Q_pinv=P)
        return coeff.reshape(*acts.shape[:-1], F.shape[1])

    def save(self, path: str | Path) -> Path:
        """One safetensors file: F of each layer (float32) and the fits' parameters and errors as JSON metadata."""
        from safetensors.torch import save_file

        path = Path(path).expanduser()
        tensors = {f"F.{layer}": r.F.detach().to("cpu", torch.float32).contiguous() for layer, r in self.results.items()}
        meta = {"format": FORMAT, "site": self.site, "source_site": SOURCE_SITE, "model": self.model,
                "layers": json.dumps(self.layers),
                "fits": json.dumps({str(layer): {"params": _plain(r.params), "errors": list(map(float, r.errors))}
                                    for layer, r in self.results.items()})}
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "FeatureSet":
        """Read a file written by `save`, or the features.safetensors of a feature index's folder (or the index)."""
        from safetensors import safe_open

        folder = getattr(path, "path", None)
        if folder is not None:  # a NeuronIndex
            path = folder
        path = Path(path).expanduser()
        if path.is_dir():
            path = path / FEATURES_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no feature set at {str(path)!r}")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{str(path)!r} is not a neuronwidgets feature set (format {meta.get('format')!r})")
            layers = json.loads(meta["layers"])
            fits = json.loads(meta.get("fits", "{}"))
            results = {}
            for layer in layers:
                fit = fits.get(str(layer), {})
                results[int(layer)] = SNMFResult(F=f.get_tensor(f"F.{layer}"), G=None, errors=fit.get("errors", []),
                                                 params=fit.get("params", {}))
        out = cls(results, model=meta.get("model", ""))
        if meta.get("site") and meta["site"] != out.site:
            raise ValueError(f"{str(path)!r} names site {meta['site']!r} but its F digests to {out.site!r}: the file is damaged")
        return out

    def __repr__(self) -> str:
        return f"<FeatureSet {self.site}: {self.k} features in layers {self.layers} (fitted at {SOURCE_SITE})>"


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# --------------------------------------------------------------------------- gathering and fitting


def gather_activations(session: Session, dataset: Iterable[Sample | tuple], layers: Sequence[int] | int, *, text: str = "caption",
                       modalities: Sequence[str] = MODALITIES, batch_size: int = 8, max_text_tokens: int = 64,
                       tokens_per_sample: int | None = None, seed: int = 0,
                       progress: bool = False) -> tuple[dict[int, np.ndarray], pd.DataFrame]:
    """mlp_in activations of `layers` over a dataset's tokens: ({layer: float32 [tokens, n_neurons]}, token table).

    text: which text tokens count, as in `collect`: "caption" (the sample's caption read after its
    prompt; the default here), "generate" (the model's greedy answer, fed back) or "prompt" (the
    prompt's own text tokens, special tokens left out). Image tokens are every image patch.
    tokens_per_sample: a seeded random subset of each sample's tokens (memory at scale).
    The table has one row per gathered token: sample, position, modality, row, col, token.
    """
    from neuronwidgets.datasets.convert import as_samples

    if text not in TEXT_SOURCES:
        raise ValueError(f"text must be one of {TEXT_SOURCES}, got {text!r}")
    bad = set(modalities) - set(MODALITIES)
    if bad or not modalities:
        raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {tuple(modalities)!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size!r}")
    samples = as_samples(dataset)
    if not len(samples):
        raise ValueError("the dataset is empty: no activations to gather")
    layers = session.check_layers(layers)
    base = session.base if isinstance(session, FeatureSession) else session
    special = set(base.tokenizer.all_special_ids)
    rng = np.random.default_rng(seed)
    chunks: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    rows: list[pd.DataFrame] = []
    starts = range(0, len(samples), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="gather activations", unit="batch")
    for start in starts:
        items = [samples[i] for i in range(start, min(len(samples), start + batch_size))]
        images = [s.get_image() for s in items]
        prompts = [s.prompt for s in items]
        if text == "caption":
            missing = [s.id for s in items if not s.caption]
            if missing:
                raise ValueError(f"text='caption' but samples {missing[:3]} have no caption; use text='generate' or 'prompt'")
            conts = [" " + s.caption.strip() for s in items]
        elif text == "generate":
            conts = base.generate_ids(images, prompts, max_new_tokens=max_text_tokens)
        else:
            conts = None
        traces = base.trace_batch(images, prompts, layers=layers, continuations=conts, site=SOURCE_SITE)
        for offset, trace in enumerate(traces):
            tok = trace.tokens
            keep = np.zeros(len(tok), bool)
            if "image" in modalities:
                keep |= (tok["modality"] == "image").to_numpy()
            if "text" in modalities:
                is_text = (tok["modality"] == "text").to_numpy()
                if text == "prompt":
                    keep |= is_text & (tok["part"] == "prompt").to_numpy() & ~tok["token_id"].isin(special).to_numpy()
                else:
                    cont = np.flatnonzero(is_text & (tok["part"] == "continuation").to_numpy())[:max_text_tokens]
                    keep[cont] = True
            pos = np.flatnonzero(keep)
            if tokens_per_sample is not None and len(pos) > tokens_per_sample:
                pos = np.sort(rng.choice(pos, tokens_per_sample, replace=False))
            for layer in layers:
                chunks[layer].append(trace.activations(layer)[pos])
            sel = tok.iloc[pos]
            rows.append(pd.DataFrame({"sample": start + offset, "position": pos, "modality": sel["modality"].to_numpy(),
                                      "row": sel["row"].to_numpy(), "col": sel["col"].to_numpy(),
                                      "token": sel["token"].to_numpy()}))
    acts = {layer: np.ascontiguousarray(np.concatenate(chunks[layer])) for layer in layers}
    return acts, pd.concat(rows, ignore_index=True)


def fit_features(session: Session, dataset: Iterable[Sample | tuple], layer: int | Sequence[int], k: int, *, sparsity: float = 0.01,
                 text: str = "caption", modalities: Sequence[str] = MODALITIES, batch_size: int = 8,
                 tokens_per_sample: int | None = None, seed: int = 0, progress: bool = False,
                 **fit_kwargs: Any) -> FeatureSet:
    """Fit k SNMF features per layer on the mlp_in activations of a dataset's tokens (see `gather_activations`, `fit_snmf`)."""
    layers = session.check_layers(layer)
    acts, _ = gather_activations(session, dataset, layers, text=text, modalities=modalities, batch_size=batch_size,
                                 tokens_per_sample=tokens_per_sample, seed=seed, progress=progress)
    results = {}
    for one in layers:
        X = torch.from_numpy(acts.pop(one))  # [tokens, neurons]
        r = fit_snmf(X.T, k, sparsity=sparsity, seed=seed, **fit_kwargs)
        r.params.update(layer=one, site=SOURCE_SITE, text=text, modalities=list(modalities), n_samples=len(dataset))
        results[one] = r
    base = session.base if isinstance(session, FeatureSession) else session
    return FeatureSet(results, model=base.name)


# --------------------------------------------------------------------------- the session of features


class FeatureSession(Session):
    """A Session whose neurons are SNMF features: `collect`, `trace`, widgets and scorers see k features per layer.

    It shares the wrapped session's model (nothing is copied). Its site is the feature set's
    ('snmf-<digest>'); its layers are the feature set's. `clamp` / `ablate` set a feature's
    coefficient (the mlp_in activation moves along the feature's direction by the difference);
    `steered` adds alpha times a feature's direction.
    """

    def __init__(self, session: Session, features: FeatureSet) -> None:  # noqa: D107 - no Session.__init__: the model is shared
        if isinstance(session, FeatureSession):
            session = session.base
        n = session.n_neurons
        wrong = {layer: features.F(layer).shape[0] for layer in features.layers if features.F(layer).shape[0] != n}
        if wrong:
            raise ValueError(f"the features of layers {sorted(wrong)} have {sorted(set(wrong.values()))} neurons, "
                             f"the model's layers {n}: fitted on another model?")
        bad = [layer for layer in features.layers if not 0 <= layer < session.n_layers]
        if bad:
            raise IndexError(f"feature layers {bad} do not exist: the model has layers 0..{session.n_layers - 1}")
        self.base = session
        self.features = features
        self.model = session.model
        self.processor = session.processor
        self.adapter = session.adapter
        self.encoder = session.encoder
        self.name = session.name
        self.site = features.site

    @property
    def n_neurons(self) -> int:
        """Features per layer (the units this session records)."""
        return self.features.k

    def __repr__(self) -> str:
        return (f"<FeatureSession {self.name!r} on {self.device}: {self.features.k} SNMF features in layers "
                f"{self.features.layers} at site {self.site!r} (from {SOURCE_SITE})>")

    def check_layers(self, layers: Sequence[int] | int | None) -> list[int]:
        """As Session.check_layers, within the layers that have features (None: all of them)."""
        if layers is None:
            return list(self.features.layers)
        out = self.base.check_layers(layers)
        missing = [layer for layer in out if layer not in self.features.layers]
        if missing:
            raise IndexError(f"layers {missing} have no features; this feature session covers layers {self.features.layers}")
        return out

    def _check_site(self, site: str | None) -> None:
        if site is not None and site != self.site:
            raise ValueError(f"a FeatureSession records its features (site {self.site!r}), not site {site!r}; "
                             "use the wrapped session (.base) for neurons")

    @torch.inference_mode()
    def forward_record(self, batch: Sequence[Encoded], layers: Sequence[int], site: str | None = None,
                       on_activation: Callable[[int, torch.Tensor], None] | None = None
                       ) -> tuple[dict[int, torch.Tensor], list[int]]:
        """Run a batch; each layer's mlp_in activations become feature coefficients [B, T, k] (float32)."""
        self._check_site(site)
        layers = self.check_layers(layers)
        if on_activation is not None:
            def convert(layer: int, acts: torch.Tensor) -> None:
                on_activation(layer, self.features.coefficients(layer, acts))

            store, lengths = self.base.forward_record(batch, layers, SOURCE_SITE, on_activation=convert)
            return store, lengths
        store, lengths = self.base.forward_record(batch, layers, SOURCE_SITE)
        return {layer: self.features.coefficients(layer, acts) for layer, acts in store.items()}, lengths

    def trace_batch(self, images: Sequence[ImageLike], prompts: Sequence[str] | str, layers: Sequence[int] | None = None,
                    continuations: Sequence[str | Sequence[int] | None] | None = None, site: str | None = None) -> list[Trace]:
        """Traces of feature coefficients: `trace.neuron(layer, j)` is feature j on every token."""
        self._check_site(site)
        layers = self.check_layers(layers)
        traces = self.base.trace_batch(images, prompts, layers=layers, continuations=continuations, site=SOURCE_SITE)
        out = []
        for tr in traces:
            acts = torch.from_numpy(tr._acts)  # [layers, tokens, neurons]
            coeff = torch.stack([self.features.coefficients(layer, acts[i]) for i, layer in enumerate(tr.layers)])
            out.append(dataclasses.replace(tr, site=self.site, n_neurons=self.features.k,
                                           _acts=np.ascontiguousarray(coeff.numpy(), dtype=np.float32)))
        return out

    def trace(self, image: ImageLike, prompt: str, layers: Sequence[int] | None = None,
              continuation: str | Sequence[int] | None = None, site: str | None = None) -> Trace:
        """One input's trace of feature coefficients."""
        return self.trace_batch([image], [prompt], layers=layers, continuations=None if continuation is None else [continuation],
                                site=site)[0]

    # --- interventions -----------------------------------------------------------------
    def clamped(self, clamp: dict | None = None, *, ablate: Iterable | None = None, means: dict | None = None,
                site: str | None = None) -> contextlib.AbstractContextManager[None]:
        """Set features' coefficients at every position: `clamp` {(layer, feature): value}, `ablate` [(layer, feature)] (0 or mean)."""
        self._check_site(site)
        from neuronwidgets.model.intervene import ABLATE, MEAN, ablation_spec

        spec = ablation_spec(clamp, ablate, means)
        values: dict[int, dict[int, float]] = {}
        for key, value in spec.items():
            if not isinstance(key, tuple) or len(key) != 2:
                raise TypeError(f"a feature is a (layer, feature) pair, got {key!r}")
            layer, j = self.features.check_feature(*key)
            if value == ABLATE:
                value = 0.0
            elif value == MEAN:
                if not means or key not in means:
                    raise KeyError(f"feature {key} is to be set to its mean, but `means` holds no mean for it")
                value = means[key]
            values.setdefault(layer, {})[j] = float(value)
        return self._hooks(values, steer={})

    def steered(self, steer: Mapping[tuple[int, int], float]) -> contextlib.AbstractContextManager[None]:
        """Add alpha times feature j's unit direction to layer's mlp_in (the down_proj input) at every position: {(layer, j): alpha}."""
        adds: dict[int, dict[int, float]] = {}
        for key, alpha in dict(steer).items():
            if not isinstance(key, tuple) or len(key) != 2:
                raise TypeError(f"a feature is a (layer, feature) pair, got {key!r}")
            layer, j = self.features.check_feature(*key)
            alpha = float(alpha)
            if not np.isfinite(alpha):
                raise ValueError(f"the steering strength of feature {key} must be finite, got {alpha}")
            adds.setdefault(layer, {})[j] = alpha
        return self._hooks({}, steer=adds)

    @contextlib.contextmanager
    def _hooks(self, clamp: dict[int, dict[int, float]], steer: dict[int, dict[int, float]]) -> Iterator[None]:
        fns = {layer: _feature_hook(self.features, layer, clamp.get(layer, {}), steer.get(layer, {}))
               for layer in sorted(set(clamp) | set(steer))}
        with site_hooks(self.adapter.decoder_layers(), fns, SOURCE_SITE):
            yield

    def generate_ids(self, images: Sequence[ImageLike], prompts: Sequence[str], max_new_tokens: int = 48, *,
                     clamp: dict | None = None, ablate: Iterable | None = None, means: dict | None = None, site: str | None = None,
                     steer: Mapping | None = None) -> list[list[int]]:
        """Greedy answers with features clamped (`clamp`, `ablate`) and/or steered (`steer` {(layer, j): alpha})."""
        with self.clamped(clamp, ablate=ablate, means=means, site=site), self.steered(steer or {}):
            return self._generate_ids(images, prompts, max_new_tokens)

    def generate(self, image: ImageLike, prompt: str, max_new_tokens: int = 48, *, clamp: dict | None = None,
                 ablate: Iterable | None = None, means: dict | None = None, site: str | None = None,
                 steer: Mapping | None = None) -> str:
        """The greedy answer text, with features clamped or steered while it generates."""
        ids = self.generate_ids([image], [prompt], max_new_tokens, clamp=clamp, ablate=ablate, means=means, site=site,
                                steer=steer)[0]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # --- collection and decoding ---------------------------------------------------------
    def collect(self, dataset: Iterable[Sample | tuple], **kwargs: Any) -> NeuronIndex:
        """`collect` over features; with a `path`, the feature set is saved in the folder as features.safetensors."""
        from neuronwidgets.collect.runner import collect

        index = collect(self, dataset, **kwargs)
        if getattr(index, "path", None) is not None:
            self.features.save(Path(index.path) / FEATURES_FILE)
        return index

    @classmethod
    def for_index(cls, session: Session, index: NeuronIndex) -> "FeatureSession":
        """The FeatureSession of a feature index: its features.safetensors, checked against the index's site."""
        features = FeatureSet.load(index)
        site = index.manifest.get("site") if hasattr(index, "manifest") else None
        if site is not None and site != features.site:
            raise ValueError(f"the index records site {site!r}, its features file makes {features.site!r}")
        return cls(session, features)

    @torch.inference_mode()
    def decode(self, k: int = 10, layers: Sequence[int] | None = None, chunk_size: int | None = None) -> NeuronDecoding:
        """LM-head decoding of each feature's write direction W_down @ F[:, j] (final norm's weight, then the LM head).

        A NeuronDecoding whose `neuron` column is the feature (kind "writes" only); saved beside a
        feature index (`.save(index.path)`), the card and the explorer read it as for neurons.
        """
        from neuronwidgets.decode.lm_head import NeuronDecoding, _to_frame, decode_directions, find_parts, norm_scale, vocab_texts

        parts = find_parts(self.model)
        layers = self.check_layers(layers)
        unembed = parts.lm_head.weight.detach()
        results = {}
        for layer in layers:
            W = parts.layers[layer].mlp.down_proj.weight.detach()  # [hidden, neurons]
            dirs = (W.float() @ self.features.F(layer).to(W.device)).T  # [k, hidden]
            results[(layer, "writes")] = decode_directions(dirs, unembed, norm_scale(parts.norm), k, chunk_size)
        meta = {"model": self.name, "site": self.site, "vocab_size": int(unembed.shape[0]), "k": int(min(k, unembed.shape[0])),
                "kinds": ["writes"], "layers": layers, "n_neurons": {str(layer): self.features.k for layer in layers},
                "norm": "final RMSNorm weight applied elementwise; no 1/rms factor; LM head bias left out",
                "directions": "W_down @ F[:, j] (SNMF feature j at mlp_in)"}
        return NeuronDecoding(_to_frame(results, vocab_texts(self.tokenizer, int(unembed.shape[0]))), meta)


def _feature_hook(features: FeatureSet, layer: int, clamp: dict[int, float], steer: dict[int, float]):
    """A `site_hooks` function at mlp_in: set clamped features' coefficients (x += (v - c_j(x)) f_j), then add alpha_j f_j."""
    idx = sorted(clamp)
    values = torch.tensor([clamp[j] for j in idx], dtype=torch.float32)
    add = None
    if steer:
        F = features.F(layer)
        add = sum(alpha * F[:, j] for j, alpha in steer.items())

    def hook(x: torch.Tensor) -> torch.Tensor:
        out = x.float()
        if idx:
            F = features.F(layer).to(x.device)[:, idx]
            target = values.to(x.device)
            for _ in range(CLAMP_STEPS):  # a shift along f_j can move the NNLS active set: correct until it reads v
                miss = target - features.coefficients(layer, out)[..., idx]
                if float(miss.abs().max()) <= 1e-5 * (1 + float(target.abs().max())):
                    break
                out = out + miss @ F.T
        if add is not None:
            out = out + add.to(x.device)
        return out.to(x.dtype)

    return hook
