"""Session: a model, its processor and its device behind one small surface (trace, generate, collect)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from neuronwidgets.checks import whole_number
from neuronwidgets.model.adapters import adapter_for
from neuronwidgets.model.adapters.base import check_site
from neuronwidgets.model.adapters.layout import ImageLayout
from neuronwidgets.model.encoding import Encoded, Encoder, image_list
from neuronwidgets.model.inputs import ImageLike, load_image
from neuronwidgets.model.loading import HUB_KWARGS, load_model, load_processor, looks_like_path, model_source
from neuronwidgets.model.trace import Trace

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin

    from neuronwidgets.datasets.base import Sample
    from neuronwidgets.store.index import NeuronIndex


class Session:
    """A vision-language model on its device, with the neuron site it records.

    >>> session = Session.toy()
    >>> trace = session.trace(image, "USER: <image>\\nWhat is the red shape? ASSISTANT:")
    """

    def __init__(self, model: PreTrainedModel, processor: ProcessorMixin, *, name: str = "", site: str = "act") -> None:
        self.model = model.eval()
        self.processor = processor
        self.adapter = adapter_for(model, processor)
        self.encoder = Encoder(processor, self.adapter, model.get_input_embeddings().num_embeddings)
        self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self.site = check_site(site)

    # --- construction ----------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | None = None, dtype: torch.dtype | str | None = None,
                        site: str = "act", download: bool = False, **kwargs: Any) -> Session:
        """Load a checkpoint (local folder or cached hub id): CUDA when present, half precision there.

        Nothing is downloaded unless `download=True` (LLaVA-1.5-7B is 14 GB): a hub id must
        already be in the Hugging Face cache.
        """
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype is None:
            dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
        elif isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        source = model_source(name_or_path)
        asked_offline = "local_files_only" in kwargs  # the caller's own choice: no advice about download=
        kwargs.setdefault("local_files_only", not download)
        # The processor too comes from where the weights do (cache_dir, revision, token, ...); it is
        # read first, so a checkpoint that is not there fails before gigabytes of weights are read.
        hub = {k: v for k, v in kwargs.items() if k in HUB_KWARGS}
        try:
            processor = load_processor(source, **hub)
            model = load_model(source, dtype=dtype, **kwargs)
        except OSError as err:
            if not kwargs["local_files_only"] or Path(source).exists():
                raise
            if looks_like_path(name_or_path):
                raise FileNotFoundError(f"no model folder at {source!r}") from err
            if asked_offline:
                raise FileNotFoundError(f"{source!r} is not in the Hugging Face cache (local_files_only=True)") from err
            raise FileNotFoundError(
                f"{source!r} is neither a local model folder nor in the Hugging Face cache, and neuronwidgets "
                f"downloads no weights unless asked: pass download=True (on the command line --download), or fetch it "
                f"first with `huggingface-cli download {source}`"
            ) from err
        return cls(model.to(device), processor, name=str(name_or_path), site=site)

    @classmethod
    def from_model(cls, model: PreTrainedModel, processor: ProcessorMixin, site: str = "act", name: str | None = None) -> Session:
        """Wrap a model and processor you already have."""
        return cls(model, processor, name=name or "", site=site)

    @classmethod
    def toy(cls, site: str = "act", path: str | Path | None = None) -> Session:
        """The bundled tiny LLaVA trained on the Shapes world: offline, CPU, seconds.

        `path` (or the NEURONWIDGETS_TOY_DIR variable) loads a toy you retrained yourself.
        """
        import os

        path = path or os.environ.get("NEURONWIDGETS_TOY_DIR")
        if path is None:
            from neuronwidgets.toy import WEIGHTS_DIR

            path = WEIGHTS_DIR
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"no toy model in {str(path)!r} (config.json missing): reinstall neuronwidgets, "
                                    "or rebuild the weights with `python -m neuronwidgets.toy.train --out <folder>`")
        from transformers.utils import logging as hf_logging

        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a 5 MB model needs no "Loading weights" bar in every notebook
        try:
            session = cls.from_pretrained(path, device="cpu", dtype=torch.float32, site=site)
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        session.name = "neuronwidgets-toy"
        return session

    # --- facts -----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The model's weight dtype (float16 on CUDA by default)."""
        return next(self.model.parameters()).dtype

    @property
    def n_layers(self) -> int:
        """Decoder layers of the language model."""
        return self.adapter.n_layers

    @property
    def n_neurons(self) -> int:
        """MLP neurons per layer."""
        return self.adapter.n_neurons

    @property
    def grid(self) -> tuple[int, int] | None:
        """(rows, cols) of the image's patch grid; None for a family whose grid varies per input (see `image_layout`)."""
        return self.adapter.grid if self.adapter.fixed_grid else None

    def image_layout(self, enc: Encoded) -> ImageLayout:
        """Where an encoded input's image tokens are: image, view, row and col of each (its grids: `.grids`)."""
        return self.encoder.layout(enc)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The processor's tokenizer."""
        return self.processor.tokenizer

    def __repr__(self) -> str:
        return (
            f"<Session {self.name!r} on {self.device} ({str(self.dtype).replace('torch.', '')}): "
            f"{self.n_layers} layers x {self.n_neurons} neurons at site {self.site!r}, "
            f"{f'{self.grid[0]}x{self.grid[1]} patches' if self.grid else 'a patch grid per input'}>"
        )

    # --- inputs ----------------------------------------------------------------
    def check_prompt(self, prompt: str, n_images: int = 1) -> str:
        """The prompt the model reads (a LLaVA-1.5 prompt in the model's own format, see `ModelAdapter.adapt_prompt`), if it
        holds the image placeholder once per image; else a ValueError showing a good prompt."""
        return self.encoder.check_prompt(prompt, n_images)

    def encode(self, image: ImageLike, prompt: str, continuation: str | Sequence[int] | None = None) -> Encoded:
        """Token ids with the image placeholder expanded, and the image's pixel values."""
        return self.encoder.encode_batch([image], [prompt], [continuation])[0]

    def encode_batch(self, images: Sequence[ImageLike], prompts: Sequence[str],
                     continuations: Sequence[str | Sequence[int] | None] | None = None) -> list[Encoded]:
        """`encode` for several inputs in one processor call (see `Encoder.encode_batch`)."""
        return self.encoder.encode_batch(images, prompts, continuations)

    def token_table(self, enc: Encoded, layout: ImageLayout | None = None) -> pd.DataFrame:
        """One row per position: position, token_id, token, modality, part, row, col, image, view, view_row, view_col."""
        return self.encoder.token_table(enc, layout)

    def check_layers(self, layers: Sequence[int] | int | None) -> list[int]:
        """Layer numbers as a sorted list without repeats (None: all; negative: from the last); a clear error when out of range."""
        n = self.n_layers
        if layers is None:
            return list(range(n))
        if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
            layers = [layers]  # one layer (a str is refused below, not read character by character)
        out = []
        for layer in layers:
            given = layer = whole_number(layer, "a layer")
            if layer < 0:  # counted from the last, as in Python: -1 is the last layer
                layer += n
            if not 0 <= layer < n:
                raise IndexError(f"layer {given} is out of range: this model has layers 0..{n - 1} (or -{n}..-1 from the last)")
            out.append(layer)
        if not out:
            raise ValueError(f"no layers given: pass layers=None for all {n}, or layer numbers in 0..{n - 1}")
        return sorted(set(out))

    # --- the forward pass --------------------------------------------------------
    @torch.inference_mode()
    def forward_record(self, batch: Sequence[Encoded], layers: Sequence[int], site: str | None = None,
                       on_activation: Callable[[int, torch.Tensor], None] | None = None) -> tuple[dict[int, torch.Tensor], list[int]]:
        """Run a right-padded batch and return ({layer: [B, T, N] on device}, lengths).

        With `on_activation(layer, acts)`, each layer goes to the callback as it is computed
        and the returned dict stays empty (see `ModelAdapter.record`).

        Right padding keeps every real token at the position it has when run alone, and the
        causal mask keeps pads out of the real tokens' view: batched == unbatched.
        """
        site = check_site(site or self.site)
        lengths = [len(e.input_ids) for e in batch]
        width = max(lengths)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, e in enumerate(batch):
            input_ids[i, : lengths[i]] = torch.tensor(e.input_ids)
            mask[i, : lengths[i]] = 1
        inputs = self.adapter.model_inputs(batch, width, self.dtype, self.device)  # the pixels, and what else the family reads
        with self.adapter.record(layers, site, on_activation) as store:
            self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device), use_cache=False, logits_to_keep=1,
                       **inputs)
        return store, lengths

    def trace(self, image: ImageLike, prompt: str, layers: Sequence[int] | None = None, continuation: str | Sequence[int] | None = None,
              site: str | None = None) -> Trace:
        """Run one image and prompt and record every neuron of `layers` (default: all) on every token."""
        continuations = None if continuation is None else [continuation]
        return self.trace_batch([image], [prompt], layers=layers, continuations=continuations, site=site)[0]

    def trace_batch(self, images: Sequence[ImageLike], prompts: Sequence[str] | str, layers: Sequence[int] | None = None,
                    continuations: Sequence[str | Sequence[int] | None] | None = None, site: str | None = None) -> list[Trace]:
        """`trace` for several inputs in one forward pass (a prompt string is used for all)."""
        if isinstance(prompts, str):
            prompts = [prompts] * len(images)
        if len(prompts) != len(images):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        if not len(images):
            raise ValueError("no images given: trace_batch needs at least one image and prompt")
        continuations = continuations or [None] * len(images)
        layers = self.check_layers(layers)
        site = check_site(site or self.site)
        pils = [image_list(im) if isinstance(im, (list, tuple)) else load_image(im) for im in images]
        encoded = self.encode_batch(pils, prompts, continuations)
        store, lengths = self.forward_record(encoded, layers, site)
        # One host copy for all recorded layers: [layers, B, T, N].
        stacked = torch.stack([store[layer] for layer in layers]).float().cpu().numpy()
        traces = []
        for i, enc in enumerate(encoded):
            layout = self.encoder.layout(enc)
            several = isinstance(pils[i], list)  # several images in one prompt
            traces.append(
                Trace(
                    tokens=self.token_table(enc, layout),
                    layers=list(layers),
                    site=site,
                    grid=self.grid if self.adapter.fixed_grid else layout.grids[0],
                    n_neurons=self.n_neurons,
                    image=pils[i][0] if several else pils[i],
                    images=pils[i] if several else None,
                    grids=None if self.adapter.fixed_grid else layout.grids,
                    crop=self.adapter.crop,
                    prompt=self.adapter.adapt_prompt(prompts[i]),  # the prompt the model read
                    continuation=continuations[i] if isinstance(continuations[i], str) else None,
                    model_name=self.name,
                    _acts=np.ascontiguousarray(stacked[:, i, : lengths[i]]),
                )
            )
        return traces

    # --- generation ----------------------------------------------------------------
    @torch.inference_mode()
    def generate_ids(self, images: Sequence[ImageLike], prompts: Sequence[str], max_new_tokens: int = 48, *,
                     clamp: dict | None = None, ablate: Iterable | None = None, means: dict | None = None,
                     site: str | None = None) -> list[list[int]]:
        """Greedy answers as token ids (no end-of-sequence, no padding), batched with left padding.

        `clamp` / `ablate` / `means` / `site`: neurons set while generating (see `clamped`).
        """
        with self.clamped(clamp, ablate=ablate, means=means, site=site):
            return self._generate_ids(images, prompts, max_new_tokens)

    # --- interventions (neuronwidgets.model.intervene) ------------------------------------------
    def clamped(self, clamp: dict | None = None, *, ablate: Iterable | None = None, means: dict | None = None,
                site: str | None = None) -> contextlib.AbstractContextManager[None]:
        """A context in which neurons are set at every position: `clamp` {(layer, neuron): value}, `ablate` [(layer, neuron)].

        Ablated neurons read 0, or their mean where `means` {(layer, neuron): mean} gives one;
        `site` defaults to the session's. Hooks are removed in a `finally` when the block ends.
        """
        from neuronwidgets.model.intervene import ablation_spec
        from neuronwidgets.model.intervene import clamp as clamp_context

        spec = ablation_spec(clamp, ablate, means)
        return clamp_context(self.adapter.decoder_layers(), spec, site=check_site(site or self.site), means=means)

    def _generate_ids(self, images: Sequence[ImageLike], prompts: Sequence[str], max_new_tokens: int) -> list[list[int]]:
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        if not len(images):
            return []
        prompts = [self.check_prompt(p) for p in prompts]  # the datasets' LLaVA-1.5 prompts in the model's format
        pils = [load_image(im) for im in images]
        tok = self.tokenizer
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            nested = getattr(self.adapter, "nested_images", False)  # the families' processors take a list of images per prompt
            enc = self.processor(images=[[im] for im in pils] if nested else pils, text=list(prompts), return_tensors="pt", padding=True,
                                 **getattr(self.adapter, "processor_kwargs", {}))
        finally:
            tok.padding_side = side
        accepted = getattr(self.adapter, "accepted_inputs", None)  # a family: what its model's forward takes
        enc = {k: v.to(self.device) for k, v in enc.items() if isinstance(v, torch.Tensor) and (accepted is None or k in accepted)}
        enc["pixel_values"] = enc["pixel_values"].to(self.dtype)
        # An answer never holds the image token: a (random or odd) model that emits it would give text that cannot be
        # read back as a continuation (collect's text="generate" feeds answers back in).
        out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                                  suppress_tokens=[int(self.adapter.image_token_id)])
        new = out[:, enc["input_ids"].shape[1] :].tolist()
        stop = {tok.eos_token_id, tok.pad_token_id}
        answers = []
        for seq in new:
            cut = next((j for j, t in enumerate(seq) if t in stop), len(seq))
            answers.append(seq[:cut])
        return answers

    def generate(self, image: ImageLike, prompt: str, max_new_tokens: int = 48, *, clamp: dict | None = None,
                 ablate: Iterable | None = None, means: dict | None = None, site: str | None = None) -> str:
        """The model's greedy answer to `prompt` about `image`: the answer text only.

        `clamp={(layer, neuron): value}` / `ablate=[(layer, neuron)]` set neurons while it generates (see `clamped`).
        """
        ids = self.generate_ids([image], [prompt], max_new_tokens=max_new_tokens, clamp=clamp, ablate=ablate,
                                means=means, site=site)[0]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def describe(self, image: ImageLike, max_new_tokens: int = 48) -> str:
        """The model's description of `image` (the paper's text side)."""
        from neuronwidgets.constants import DESCRIBE_QUESTION

        return self.generate(image, self.adapter.prompt_template.format(question=DESCRIBE_QUESTION), max_new_tokens)

    # --- collection ------------------------------------------------------------------
    def collect(self, dataset: Iterable[Sample | tuple], **kwargs: Any) -> NeuronIndex:
        """Stream `dataset` through the model into a NeuronIndex (see `neuronwidgets.collect`)."""
        from neuronwidgets.collect.runner import collect

        return collect(self, dataset, **kwargs)
