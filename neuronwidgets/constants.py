"""The vocabulary every stage shares, defined once: token modalities, neuron sites, categories, prompts."""

from __future__ import annotations

#: The two kinds of token a neuron is recorded on: image patches and text tokens.
MODALITIES = ("image", "text")

#: Where a neuron is read. "act": act_fn(gate_proj(x)), the paper's neuron (default).
#: "mlp_in": act_fn(gate_proj(x)) * up_proj(x), the input to down_proj.
SITES = ("act", "mlp_in")

#: A top sample's label under the paper rule (visually / text-activated, both, neither).
LABELS = ("visual", "text", "multi-modal", "unactivated")
#: A neuron's category: the most frequent label of its top samples, or inactive (never above 0).
CATEGORIES = (*LABELS, "inactive")
#: The modality a category's neuron is simulated and scored on ("both" for the rest).
CATEGORY_MODALITY = {"visual": "image", "text": "text"}

#: LLaVA-1.5's conversation format: the prompt the toy and the paper's set-up use.
PROMPT_TEMPLATE = "USER: <image>\n{question} ASSISTANT:"
#: The paper's question whose greedy answer gives the text tokens.
DESCRIBE_QUESTION = "Could you describe the image?"
DESCRIBE_PROMPT = PROMPT_TEMPLATE.format(question=DESCRIBE_QUESTION)
