"""Downstream metrics: accuracy, exact match, token F1 (SQuAD-style) and ROUGE-L.

Every metric maps (predictions, references) to a score in [0, 1], averaged over
examples. Text is normalised the same way for the last three: lower-cased, split on
anything that is not a letter or digit (so ``get_value`` is the two tokens ``get``,
``value``), articles dropped.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence

METRICS = ("accuracy", "exact_match", "f1", "rouge_l")
_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
_ARTICLES = frozenset({"a", "an", "the"})


def normalize_tokens(text: str) -> list[str]:
    return [t for t in _TOKEN.findall(text.lower()) if t not in _ARTICLES]


def accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference, compared verbatim (labels)."""
    _check(predictions, references)
    return sum(p == r for p, r in zip(predictions, references)) / len(references)


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions whose normalised tokens equal the reference's."""
    _check(predictions, references)
    return sum(normalize_tokens(p) == normalize_tokens(r) for p, r in zip(predictions, references)) / len(references)


def f1_one(prediction: str, reference: str) -> float:
    pred, ref = normalize_tokens(prediction), normalize_tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    return _f_measure(sum((Counter(pred) & Counter(ref)).values()), len(pred), len(ref))


def _f_measure(overlap: int, predicted: int, reference: int) -> float:
    """Harmonic mean of precision ``overlap/predicted`` and recall ``overlap/reference``."""
    if overlap == 0:
        return 0.0
    precision, recall = overlap / predicted, overlap / reference
    return 2 * precision * recall / (precision + recall)


def f1(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean token-overlap F1 (bag of normalised tokens)."""
    _check(predictions, references)
    return sum(f1_one(p, r) for p, r in zip(predictions, references)) / len(references)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l_one(prediction: str, reference: str) -> float:
    pred, ref = normalize_tokens(prediction), normalize_tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    return _f_measure(lcs_length(pred, ref), len(pred), len(ref))


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (longest common subsequence of normalised tokens, β = 1)."""
    _check(predictions, references)
    return sum(rouge_l_one(p, r) for p, r in zip(predictions, references)) / len(references)


def _check(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("no examples to score")


def metric(name: str) -> Callable[[Sequence[str], Sequence[str]], float]:
    table = {"accuracy": accuracy, "exact_match": exact_match, "f1": f1, "rouge_l": rouge_l}
    if name not in table:
        raise ValueError(f"unknown metric '{name}'; valid: {', '.join(METRICS)}")
    return table[name]
