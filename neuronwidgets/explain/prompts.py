"""The chat prompts of the LLM explainer and simulator, versioned (the version is part of every cache key).

Change a prompt's wording -> bump its version, so cached replies to the old wording are not reused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from PIL import Image

from neuronwidgets.llm.messages import image_part, message, text_part
from neuronwidgets.render import show_token, token_lines

EXPLAIN_VERSION = "explain-v1"
SIMULATE_VERSION = "simulate-v1"

EXPLAIN_SYSTEM = (
    "We are studying neurons in the language model of a vision-language model. Each neuron is one unit of an MLP "
    "layer; it reads every token of the input, both the image patches and the text tokens, and looks for something "
    "particular in them. You are shown the inputs on which one neuron fires most, with its activations on a 0-10 "
    "scale (0: not at all, 10: its strongest). Work out what the neuron responds to."
)
IMAGE_GUIDE = (
    "Each image example is shown twice, side by side: on the left as the model saw it, on the right with the "
    "neuron's activations drawn over it: every patch is faded towards white by how little the neuron fires there, "
    "so the patches that stay clear are where it fires most."
)
TEXT_GUIDE = "Text examples list one token per line as: token<TAB>activation (0-10)."
EXPLAIN_ASK = (
    "What does this neuron respond to? Answer with the explanation only: one short phrase of at most 15 words, "
    "no preamble and no full sentence (for example: red objects; the word \"circle\"; round shapes and the words naming them)."
)

SIMULATE_SYSTEM = (
    "We are studying neurons in the language model of a vision-language model. Each neuron looks for something "
    "particular in its input, image patches and text tokens alike. Given an explanation of what a neuron responds "
    "to, predict its activation on every part of a new input, as an integer from 0 (not at all) to 10 (its strongest). "
    "Most parts of most inputs do not activate a neuron: use 0 wherever the explanation does not apply."
)


def sparse_repeat(tokens: Sequence[str], levels: Sequence[int]) -> str:
    """When fewer than a fifth of the levels are non-zero, the non-zero ones listed again (as neuron-explainer does)."""
    nonzero = [(t, v) for t, v in zip(tokens, levels) if v > 0]
    if not levels or not nonzero or len(nonzero) >= len(levels) / 5:
        return ""
    return "\nThe same activations, zeros left out:\n" + token_lines([t for t, _ in nonzero], [v for _, v in nonzero])


def explain_messages(images: Sequence[tuple[Image.Image, int]], texts: Sequence[tuple[list[str], list[int]]],
                     detail: str = "auto") -> list[dict[str, Any]]:
    """The explainer's request: example images (drawn with their overlays, with peak levels) and token lists."""
    parts: list[dict[str, Any]] = []
    guide = []
    if images:
        guide.append(IMAGE_GUIDE)
    if texts:
        guide.append(TEXT_GUIDE)
    parts.append(text_part(" ".join(guide) or "No examples."))
    for i, (img, peak) in enumerate(images, 1):
        parts.append(text_part(f"Image example {i} (strongest activation in it: {peak}/10):"))
        parts.append(image_part(img, detail))
    for i, (tokens, levels) in enumerate(texts, 1):
        body = token_lines(tokens, levels) + sparse_repeat(tokens, levels)
        parts.append(text_part(f"Text example {i}:\n{body}"))
    parts.append(text_part(EXPLAIN_ASK))
    return [message("system", EXPLAIN_SYSTEM), message("user", *parts)]


_LABELS = ("explanation", "answer", "this neuron responds to", "the neuron responds to", "this neuron fires on",
           "the neuron fires on")
_PREAMBLE = re.compile(r"^(sure|certainly|of course|okay|ok|here('s| is| are))\b", re.IGNORECASE)
_FENCE = re.compile(r"^`{3}\w*$")


def clean_explanation(reply: str) -> str:
    """The explanation phrase from a reply: its first line of content, without a label, markdown, quotes or a full stop.

    Models often wrap the phrase: in a code fence, after "Explanation:" (on its own line or bold),
    after a line of preamble ("Sure! Here is ..."). Quotes go only where they wrap the whole phrase.
    """
    lines = [ln.strip() for ln in reply.strip().splitlines() if ln.strip() and not _FENCE.match(ln.strip())]
    for i, text in enumerate(lines):
        if _PREAMBLE.match(text) and i + 1 < len(lines):  # "Sure! Here is ...", then the answer
            continue
        text = text.strip("*_` ")
        for label in _LABELS:
            if text.lower().startswith(label) and (len(text) == len(label) or not text[len(label)].isalnum()):
                text = text[len(label):].lstrip("*_ ").lstrip(":").strip("*_` ")
                break
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'" and text[0] not in text[1:-1]:
            text = text[1:-1].strip()
        text = text.rstrip(".").strip()
        if text:
            return text
    return ""


def simulate_image_messages(explanation: str, grid_image: Image.Image, rows: int, cols: int, detail: str = "auto") -> list[dict[str, Any]]:
    """The simulator's request for one image: the explanation and the image with its patch grid labelled."""
    ask = (
        f"Explanation of the neuron: {explanation}\n\n"
        f"The image below is divided into a grid of {rows} rows and {cols} columns of patches. Rows are numbered "
        f"0 to {rows - 1} from the top (numbers on the left edge), columns 0 to {cols - 1} from the left (numbers on the "
        f"top edge). Predict the neuron's activation on every patch. Reply with only a JSON object of the form "
        f'{{"activations": [[...], ...]}}: a list of {rows} rows, row 0 first, each a list of {cols} integers from 0 to 10.'
    )
    return [message("system", SIMULATE_SYSTEM), message("user", text_part(ask), image_part(grid_image, detail))]


def simulate_text_messages(explanation: str, tokens: Sequence[str]) -> list[dict[str, Any]]:
    """The simulator's request for one token sequence: the explanation and the numbered tokens."""
    listing = "\n".join(f"{i}\t{show_token(t)}" for i, t in enumerate(tokens))
    ask = (
        f"Explanation of the neuron: {explanation}\n\n"
        f"The text has {len(tokens)} tokens, listed one per line as: position<TAB>token.\n{listing}\n\n"
        f"Predict the neuron's activation on every token. Reply with only a JSON object of the form "
        f'{{"activations": [...]}}: a list of {len(tokens)} integers from 0 to 10, one per token, in order.'
    )
    return [message("system", SIMULATE_SYSTEM), message("user", ask)]


def reask_messages(messages: list[dict[str, Any]], reply: str, problem: str) -> list[dict[str, Any]]:
    """The conversation again, with the unusable reply and a request to answer in the required form."""
    return [
        *messages,
        {"role": "assistant", "content": reply},
        message("user", f"Your reply could not be used: {problem}. Reply again with only the JSON object, in exactly the form asked for."),
    ]


def expected_form(shape: tuple[int, ...]) -> str:
    """Words for the JSON shape a simulator reply must have."""
    if len(shape) == 2:
        return f"{shape[0]} rows of {shape[1]} integers from 0 to 10"
    return f"a list of {shape[0]} integers from 0 to 10"
