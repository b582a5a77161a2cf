"""A word-level tokenizer with byte fallback, built in code (no download).

Known words become one token each; anything else falls back to characters and then to
UTF-8 bytes, so whatever a user types is tokenized and decoded faithfully (never <unk>).
It has the structure of Llama's SentencePiece tokenizer (Metaspace + BPE + byte fallback),
so it plugs into `LlavaProcessor` like a real checkpoint's tokenizer.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

SPACE = "\u2581"  # SentencePiece's word-boundary marker
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
CHARACTERS = list(string.ascii_letters + string.digits + string.punctuation) + ["\n"]


def build_tokenizer_object(words: Iterable[str]) -> Tokenizer:
    """Return a `tokenizers.Tokenizer` whose vocabulary holds every word in `words` whole."""
    vocab: dict[str, int] = {}

    def add(piece: str) -> None:
        if piece not in vocab:
            vocab[piece] = len(vocab)

    for piece in SPECIAL_TOKENS + BYTE_TOKENS + [SPACE] + CHARACTERS:
        add(piece)
    for ch in CHARACTERS:
        add(SPACE + ch)
    merges: list[tuple[str, str]] = []
    seen_merges: set[tuple[str, str]] = set()
    for ch in CHARACTERS:
        pair = (SPACE, ch)
        seen_merges.add(pair)
        merges.append(pair)
    for word in sorted(set(words)):
        # Build each word left to right from its first character: every merge's left
        # side starts with the space marker, so merges of different words never compete.
        piece = SPACE + word[0]
        for ch in word[1:]:
            pair = (piece, ch)
            piece = piece + ch
            if ch not in vocab:
                add(ch)
            add(piece)
            if pair not in seen_merges:
                seen_merges.add(pair)
                merges.append(pair)
    bpe = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="first", split=True)
    tok.decoder = decoders.Sequence(
        [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def build_tokenizer(words: Iterable[str]):
    """Return a transformers fast tokenizer (Llama conventions: <s> first, </s> to end)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer_object(words),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        add_bos_token=True,
        padding_side="left",
    )
