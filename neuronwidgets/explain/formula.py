"""Concept formulas: "red", "red AND circle", "red OR blue", "(red OR blue) AND NOT circle" — parse, evaluate, print."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

Formula = tuple  # ("term", name) | ("and", a, b) | ("or", a, b) | ("not", a)

_SPLIT = re.compile(r"(\(|\)|\bAND\b|\bOR\b|\bNOT\b)")


def normalize(name: str) -> str:
    """A concept or token name as compared: lower case, outer spaces and punctuation dropped."""
    return re.sub(r"^[\W_]+|[\W_]+$", "", str(name).strip().lower())


def is_term(name: str) -> bool:
    """Whether a name can stand in a formula as one term (no parentheses, no AND/OR/NOT)."""
    return bool(name) and not _SPLIT.search(name)


def parse(text: str) -> Formula:
    """Parse a formula; AND and OR bind left to right, NOT binds tightest, parentheses group."""
    tokens = [t.strip() for t in _SPLIT.split(text) if t.strip()]
    if not tokens:
        raise ValueError("empty concept formula")
    pos = 0

    def term() -> Formula:
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError(f"concept formula {text!r} ends too early")
        tok = tokens[pos]
        pos += 1
        if tok == "NOT":
            return ("not", term())
        if tok == "(":
            inner = expr()
            if pos >= len(tokens) or tokens[pos] != ")":
                raise ValueError(f"concept formula {text!r} has an unclosed '('")
            pos += 1
            return inner
        if tok in ("AND", "OR", ")"):
            raise ValueError(f"concept formula {text!r}: unexpected {tok!r}")
        return ("term", normalize(tok))

    def expr() -> Formula:
        nonlocal pos
        left = term()
        while pos < len(tokens) and tokens[pos] in ("AND", "OR"):
            op = tokens[pos].lower()
            pos += 1
            left = (op, left, term())
        return left

    out = expr()
    if pos != len(tokens):
        raise ValueError(f"concept formula {text!r}: unexpected {tokens[pos]!r}")
    return out


def terms(f: Formula) -> list[str]:
    """The concept names in a formula, in order, without repeats."""
    if f[0] == "term":
        return [f[1]]
    return list(dict.fromkeys(t for child in f[1:] for t in terms(child)))


def canonical(f: Formula) -> tuple:
    """A hashable form equal for formulas that differ only in the order of AND / OR operands."""
    if f[0] == "term":
        return f
    if f[0] == "not":
        return ("not", canonical(f[1]))
    parts = []
    for child in f[1:]:
        c = canonical(child)
        parts.extend(c[1] if c[0] == f[0] else [c])
    return (f[0], frozenset(parts))


def to_text(f: Formula, top: bool = True) -> str:
    """The formula as text; nested binary parts in parentheses."""
    if f[0] == "term":
        return f[1]
    if f[0] == "not":
        return "NOT " + to_text(f[1], top=False)
    s = f"{to_text(f[1], top=False)} {f[0].upper()} {to_text(f[2], top=False)}"
    return s if top else f"({s})"


def evaluate(f: Formula, lookup: Callable[[str], np.ndarray], soft: bool = False) -> np.ndarray:
    """The formula over arrays: boolean (&, |, ~) or soft in 0..1 (min, max, 1 - x)."""
    kind = f[0]
    if kind == "term":
        return lookup(f[1])
    if kind == "not":
        x = evaluate(f[1], lookup, soft)
        return 1.0 - x if soft else ~x
    a, b = evaluate(f[1], lookup, soft), evaluate(f[2], lookup, soft)
    if kind == "and":
        return np.minimum(a, b) if soft else a & b
    return np.maximum(a, b) if soft else a | b
