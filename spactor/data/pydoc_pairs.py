"""``pydoc_pairs``: zero-shot minimal pairs made from the built-in corpus's held-out
docstrings (``spactor.data.sources.task_docstring_records``: pre-training never reads
them), in the same form as BLiMP's (``spactor.tasks.minimal_pairs``).

How a pair is made, deterministically (a CRC-32 of the sentence picks the positions):

* the **good** sentence is the first sentence of a unique held-out docstring: its text
  up to the first ``.`` that ends a word (or the first blank line), whitespace collapsed,
  kept when it has 6 to 24 words and every word is plain prose (letters, with at most a
  leading/trailing quote, comma, colon, semicolon or parenthesis and inner hyphens or
  apostrophes) — no code, no identifiers with ``_``, ``(`` or ``=``;
* its **bad** twin has the same words in another order, so a model that counts words
  cannot tell them apart, only one that knows English (and Python's docs) word order:
  ``adjacent_swap`` swaps two neighbouring different words (``Return the value`` →
  ``Return value the``); ``distant_swap`` swaps two different words at least three
  apart. Every docstring gives one pair of each kind (UID ``adjacent_swap`` /
  ``distant_swap``) when it can.

The sentences are scored by their summed log-likelihood, the good one must score
strictly higher; ``spactor evaluate RUN --task pydoc_pairs`` reports the accuracy overall
and per UID. ``spactor tasks`` prints its size for the running Python.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from spactor.data.pydoc_tasks import unique_records
from spactor.data.sources import task_docstring_records
from spactor.registry import TASKS
from spactor.tasks.minimal_pairs import MinimalPair, MinimalPairsTask

MIN_WORDS, MAX_WORDS = 6, 24
_WORD = re.compile(r"^[\"'(]?[A-Za-z]+(?:[-'][A-Za-z]+)*[\"'),:;]?$")
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)])\.(?=\s|$)")


def first_sentence(text: str) -> str | None:
    """The docstring's opening sentence when it is plain prose of MIN..MAX words."""
    head = re.split(r"\n\s*\n", text.strip(), maxsplit=1)[0]
    end = _SENTENCE_END.search(head)
    sentence = " ".join((head[: end.start()] if end else head).split())
    words = sentence.split(" ")
    if not MIN_WORDS <= len(words) <= MAX_WORDS or not all(_WORD.match(w) for w in words):
        return None
    return sentence + "."


def _bare(word: str) -> str:
    return word.strip("\"'(),:;.").lower()


def swapped(sentence: str, min_gap: int) -> str | None:
    """``sentence`` with two different words ``>= min_gap`` apart swapped (the sentence's
    full stop stays at the end), positions picked by a CRC-32 of it; None if none can be."""
    words = sentence[:-1].split(" ")
    seed = zlib.crc32(f"{min_gap}:{sentence}".encode())
    candidates = [(i, j) for i in range(len(words)) for j in range(i + min_gap, len(words))
                  if (j - i == 1 if min_gap == 1 else True) and _bare(words[i]) != _bare(words[j])]
    if not candidates:
        return None
    i, j = candidates[seed % len(candidates)]
    # A capitalised first word moves with its capital: swap the bare words' case too.
    out = list(words)
    out[i], out[j] = words[j], words[i]
    if i == 0 and words[0][:1].isupper() and not words[j][1:2].isupper():
        out[0] = out[0][:1].upper() + out[0][1:]
        out[j] = out[j][:1].lower() + out[j][1:] if not words[0].isupper() else out[j]
    return " ".join(out) + "."


def pydoc_minimal_pairs() -> list[MinimalPair]:
    pairs = []
    for record in unique_records(task_docstring_records()):
        sentence = first_sentence(record.text)
        if sentence is None:
            continue
        for uid, gap in (("adjacent_swap", 1), ("distant_swap", 3)):
            bad = swapped(sentence, gap)
            if bad is not None and bad != sentence:
                pairs.append(MinimalPair(sentence, bad, uid))
    return pairs


@dataclass
class PydocPairsConfig:
    limit: int | None = None  # score only the first N pairs (None: all)


@TASKS.register("pydoc_pairs", PydocPairsConfig)
def pydoc_pairs(cfg: PydocPairsConfig) -> MinimalPairsTask:
    """Zero-shot minimal pairs (word order) from held-out stdlib docstrings; offline."""
    pairs = pydoc_minimal_pairs()
    if cfg.limit is not None:
        if cfg.limit < 1:
            raise ValueError(f"task pydoc_pairs: limit must be >= 1, got {cfg.limit}")
        pairs = pairs[: cfg.limit]
    return MinimalPairsTask("pydoc_pairs", pairs, description="word-order minimal pairs from held-out docstrings")
