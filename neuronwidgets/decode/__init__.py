"""What neurons write and read in token space (LM-head decoding), and what clamping them causes.

    dec = decode_neurons(session, k=10)            # every layer, chunked, on the model's device
    dec.top_tokens(3, 117)                          # promoted tokens of what neuron 3/117 writes
    dec.save("runs/toy")                            # runs/toy/decoding.parquet, beside the index
    dec = NeuronDecoding.load("runs/toy")
    causal_score(session, [(image, prompt)], 3, 117, value=8.0, decoding=dec)   # see causal.py
"""

from neuronwidgets.decode.causal import (
    CausalScore,
    causal_score,
    clamp_sweep,
    next_token_logprobs,
    score_explanation,
)
from neuronwidgets.decode.lm_head import (
    COLUMNS,
    DIRECTIONS,
    FILENAME,
    KINDS,
    DecodingFormatError,
    ModelParts,
    NeuronDecoding,
    decode_directions,
    decode_neurons,
    decoding_for,
    find_parts,
    load_decoding,
    vocab_texts,
)

__all__ = [
    "COLUMNS", "CausalScore", "DIRECTIONS", "DecodingFormatError", "FILENAME", "KINDS", "ModelParts", "NeuronDecoding",
    "causal_score", "clamp_sweep", "decode_directions", "decode_neurons", "decoding_for", "find_parts", "load_decoding",
    "next_token_logprobs", "score_explanation", "vocab_texts",
]
