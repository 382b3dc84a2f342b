"""Built-in tasks from the held-out docstrings of the built-in corpus; no download.

They sit beside the corpus they are cut from, in the data package: the task protocol
(``spactor.tasks``) is core and imports no plugin package.

The built-in corpus (``spactor.data.sources``, source ``builtin``) holds out
``TASK_HOLDOUT_PERCENT`` = 20% of the standard library's function/class docstrings
(by a CRC-32 of the text: ``is_task_docstring``) and pre-training never reads them (nor
any document with the same text). These tasks are made of them; labels come from where
each docstring sits in the standard library, not from a model:

``pydoc_module``  classification: which top-level standard-library module or package
    (``tkinter``, ``asyncio``, ``email`` ...) a docstring belongs to, among the
    ``num_modules`` (default 8) modules with the most held-out docstrings.
``pydoc_name``  generation: the function's or class's name from its docstring (public
    names only, those not starting with ``_``); metric token F1 over the name's parts
    (``get_value`` = ``get`` + ``value``) by default, ``exact_match`` optional.
``pydoc_cloze``  generation: one word blanked out of a docstring's opening, the target
    that word (``cloze_example``); metric ``exact_match``. The label is the text itself,
    so the task asks for what pre-training on language teaches: a word from its context.

Each held-out docstring appears once (duplicate texts are dropped, keeping the first in
corpus order), and goes to ``test`` when a second, independent CRC-32
(``"split:" + text``) falls below ``TEST_PERCENT`` = 30%, else to ``train``: the
split is fixed for a given Python and never mixes one text into both halves. Every task
splits by the source docstring (``split_records``), so a docstring is on the same side in
all of them.

Sizes on CPython 3.11.7 (``spactor tasks`` prints them for the running Python):
see the README section "Downstream evaluation and studies".
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from dataclasses import dataclass

from spactor.data.sources import DocstringRecord, task_docstring_records
from spactor.registry import TASKS
from spactor.tasks.base import Example, Task

TEST_PERCENT = 30


def is_test(text: str) -> bool:
    return zlib.crc32(("split:" + text).encode("utf-8", "surrogatepass")) % 100 < TEST_PERCENT


def unique_records(records: tuple[DocstringRecord, ...]) -> list[DocstringRecord]:
    seen: set[str] = set()
    out = []
    for r in records:
        if r.text not in seen:
            seen.add(r.text)
            out.append(r)
    return out


def split_records(records: list[DocstringRecord]) -> tuple[list[DocstringRecord], list[DocstringRecord]]:
    """``(train, test)`` of the unique held-out docstrings, by ``is_test`` of the text."""
    train = [r for r in records if not is_test(r.text)]
    test = [r for r in records if is_test(r.text)]
    return train, test


@dataclass
class PydocModuleConfig:
    num_modules: int = 8  # the classes: the modules with the most held-out docstrings
    metric: str = "accuracy"


@TASKS.register("pydoc_module", PydocModuleConfig)
def pydoc_module(cfg: PydocModuleConfig) -> Task:
    """Classify a held-out stdlib docstring by its module (8 classes); offline."""
    if cfg.num_modules < 2:
        raise ValueError(f"task pydoc_module: num_modules must be >= 2, got {cfg.num_modules}")
    records = unique_records(task_docstring_records())
    counts = Counter(r.module for r in records)
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.num_modules]
    labels = sorted(m for m, _ in top)
    train, test = ([Example(r.text, r.module) for r in half if r.module in labels]
                   for half in split_records(records))
    return Task("pydoc_module", "classification", cfg.metric, train, test, labels=labels,
                description="module of a held-out standard-library docstring")


@dataclass
class PydocNameConfig:
    metric: str = "f1"


@TASKS.register("pydoc_name", PydocNameConfig)
def pydoc_name(cfg: PydocNameConfig) -> Task:
    """Generate a function's/class's name from its held-out stdlib docstring; offline."""
    records = [r for r in unique_records(task_docstring_records()) if not r.name.startswith("_")]
    train, test = ([Example(r.text, r.name) for r in half] for half in split_records(records))
    return Task("pydoc_name", "generation", cfg.metric, train, test,
                description="name of the function/class a held-out standard-library docstring documents")


CLOZE_MARKER = "____"
# A word the cloze may blank: letters only, no underscore or digit attached (identifiers
# like ``get_value`` or ``utf8`` are names, not words), at least 4 of them.
_CLOZE_WORD = re.compile(r"\b[A-Za-z]{4,}\b")
_WHITESPACE_WORD = re.compile(r"\S+")


def cloze_example(text: str, max_words: int = 32, min_words: int = 8) -> Example | None:
    """The cloze of one docstring, or None when it has too few words or no candidate.

    The input is the text up to the end of its ``max_words``-th whitespace-separated word
    (so the blank survives the fine-tuning budget's input truncation), with one word
    replaced by ``CLOZE_MARKER``; the target is that word. The word is a ``_CLOZE_WORD``
    inside the middle half of those words (context on both sides), the
    ``crc32("cloze:" + text) % n``-th of the ``n`` candidates: fixed for a given text.
    """
    spans = [m.span() for m in _WHITESPACE_WORD.finditer(text)][:max_words]
    if len(spans) < min_words:
        return None
    window = text[: spans[-1][1]]
    lo, hi = spans[len(spans) // 4][0], spans[(3 * len(spans)) // 4 - 1][1]
    candidates = [m for m in _CLOZE_WORD.finditer(window, lo, hi)]
    if not candidates:
        return None
    word = candidates[zlib.crc32(("cloze:" + text).encode("utf-8", "surrogatepass")) % len(candidates)]
    return Example(window[: word.start()] + CLOZE_MARKER + window[word.end():], word.group())


@dataclass
class PydocClozeConfig:
    max_words: int = 32  # the input is the docstring's first max_words words, one of them blanked
    metric: str = "exact_match"


@TASKS.register("pydoc_cloze", PydocClozeConfig)
def pydoc_cloze(cfg: PydocClozeConfig) -> Task:
    """Fill the blanked word back into a held-out stdlib docstring; offline."""
    if cfg.max_words < 8:
        raise ValueError(f"task pydoc_cloze: max_words must be >= 8, got {cfg.max_words}")
    halves = []
    seen: set[str] = set()  # two docstrings that open alike give one input: keep the first
    for records in split_records(unique_records(task_docstring_records())):
        examples = []
        for r in records:
            example = cloze_example(r.text, cfg.max_words)
            if example is not None and example.input not in seen:
                seen.add(example.input)
                examples.append(example)
        halves.append(examples)
    train, test = halves
    return Task("pydoc_cloze", "generation", cfg.metric, train, test,
                description="a word blanked out of a held-out standard-library docstring")
