"""Explainer: a vision-capable chat model explains a neuron from its top exemplars (the paper's method).

A visual neuron's exemplars go as images (plain, and with its patch activations drawn over
them); a text neuron's as token lists with 0-10 activations; a multi-modal neuron's as both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from neuronwidgets.explain.data import category_of, sample_of
from neuronwidgets.explain.explanation import Explanation
from neuronwidgets.explain.prompts import (
    EXPLAIN_VERSION,
    clean_explanation,
    explain_messages,
)
from neuronwidgets.llm.messages import count_images
from neuronwidgets.records import discretize
from neuronwidgets.render import exemplar

if TYPE_CHECKING:
    from neuronwidgets.datasets.base import Sample
    from neuronwidgets.llm.client import OpenAIClient
    from neuronwidgets.store.index import NeuronIndex


class ExplanationError(ValueError):
    """The chat model's reply holds no usable explanation."""


#: Longest explanation taken (the prompt asks for at most 15 words; a longer reply is an essay, not a phrase).
MAX_WORDS = 40


class Explainer:
    """Explain neurons with a chat model: `Explainer(client).explain(index, layer=3, neuron=117)` -> Explanation.

    `data`: where the exemplars' images are (default: `index.dataset`).
    """

    name = "llm"

    def __init__(self, client: OpenAIClient, data: NeuronIndex | Sequence[Sample] | None = None, *, n_images: int = 8,
                 n_texts: int = 10, min_side: int = 224, style: str = "white", detail: str = "auto",
                 prompt_version: str = EXPLAIN_VERSION, category_rule: str = "paper") -> None:
        self.client = client
        self.data = data
        self.n_images = n_images
        self.n_texts = n_texts
        self.min_side = min_side
        self.style = style
        self.detail = detail
        self.prompt_version = prompt_version
        self.category_rule = category_rule

    def __repr__(self) -> str:
        return f"<Explainer {getattr(self.client, 'model', '?')!r} prompt {self.prompt_version!r}>"

    @property
    def settings(self) -> dict:
        """What shapes a request besides the model, the prompt version and the neuron's records.

        explain_all explains again when it changes.
        """
        return {"n_images": self.n_images, "n_texts": self.n_texts, "min_side": self.min_side, "style": self.style,
                "detail": self.detail, "category_rule": self.category_rule}

    def messages(self, index: NeuronIndex, layer: int, neuron: int,
                 category: str | None = None) -> tuple[list[dict[str, Any]], list[str], str]:
        """(the chat request, the sample ids it shows, the category) for one neuron: to inspect before paying."""
        category = category or category_of(index, layer, neuron, self.category_rule)
        top = index.records(layer, neuron, "top")
        vmax = index.neuron_max(layer, neuron)
        images, texts, used = [], [], []
        if category != "text":
            for rec in top[: self.n_images]:
                sample = sample_of(self.data if self.data is not None else index, rec)
                picture = exemplar(sample.get_image(), rec.patch_map, vmax, min_side=self.min_side, style=self.style)
                images.append((picture, int(discretize(rec.patch_map, vmax).max(initial=0))))
                used.append(rec.sample_id)
        if category != "visual":
            for rec in [r for r in top if len(r.text_tokens)][: self.n_texts]:
                texts.append((list(rec.text_tokens), discretize(rec.text_activations, vmax).tolist()))
                used.append(rec.sample_id)
        return explain_messages(images, texts, self.detail), list(dict.fromkeys(used)), category

    def explain(self, index: NeuronIndex, layer: int, neuron: int, category: str | None = None) -> Explanation:
        """Explain one neuron of `index` (category from `index.categories()` unless given)."""
        category = category or category_of(index, layer, neuron, self.category_rule)
        base = dict(layer=layer, neuron=neuron, category=category, model=self.client.model,
                    prompt_version=self.prompt_version, explainer=self.name)
        if category == "inactive":
            return Explanation(**base, text="inactive (never activates above 0)")
        messages, used, category = self.messages(index, layer, neuron, category)
        reply = self.client.chat(messages, prompt_version=self.prompt_version)
        text = clean_explanation(reply.text)
        problem = ("was cut off (max_tokens)" if reply.finish_reason == "length" else "is empty" if not text
                   else f"is {len(text.split())} words long, not a short phrase" if len(text.split()) > MAX_WORDS else None)
        if problem:
            forget = getattr(self.client, "forget", None)
            if forget is not None:  # a cached unusable reply would come back on every retry
                forget(reply.key)
            raise ExplanationError(f"the model's explanation of layer {layer} neuron {neuron} {problem}; reply: {reply.text[:200]!r}")
        extra = {"raw_reply": reply.text, "n_images": count_images(messages), "neuron_max": float(index.neuron_max(layer, neuron))}
        return Explanation(**base, text=text, exemplars=used, extra=extra)
