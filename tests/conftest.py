"""Shared pytest fixtures. Keep them generic: several test packages use them."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

# A few paragraphs of plain English for sources and packing tests.
ENGLISH_PARAGRAPHS = (
    "The quick brown fox jumps over the lazy dog.",
    "Pre-training a text model starts with a corpus.\nIt is cut into chunks of tokens.",
    "Span corruption replaces random spans of the input with sentinel tokens.",
    "The model learns to reconstruct the missing spans from the context around them.",
    "Replaced token detection asks whether each token is original or was sampled.",
    "A small generator proposes plausible replacements for masked positions.",
)


@pytest.fixture(scope="session")
def english_paragraphs() -> tuple[str, ...]:
    """The paragraphs that ``text_files`` and ``jsonl_gz_file`` contain, in order."""
    return ENGLISH_PARAGRAPHS


@pytest.fixture(scope="session")
def english_corpus() -> tuple[str, ...]:
    """Real English documents (~80 reference-manual topics that ship with Python)."""
    from pydoc_data.topics import topics

    return tuple(topics[key] for key in sorted(topics))


@pytest.fixture(scope="session")
def small_tokenizer(english_corpus):
    """A 512-piece unigram tokenizer with T5 conventions; trains in about a second."""
    from spactor.data.tokenizer import Tokenizer

    return Tokenizer.train(english_corpus, vocab_size=512, num_threads=1)


@pytest.fixture
def text_files(tmp_path: Path) -> list[Path]:
    """Two plain-text files of blank-line separated ``english_paragraphs`` (3 + 3)."""
    paths = []
    for i in range(2):
        path = tmp_path / f"part-{i}.txt"
        path.write_text("\n\n".join(ENGLISH_PARAGRAPHS[3 * i : 3 * i + 3]) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


@pytest.fixture
def jsonl_gz_file(tmp_path: Path) -> Path:
    """A gzipped JSON-lines file in C4's format, one of ``english_paragraphs`` per line."""
    path = tmp_path / "c4-train.00000-of-00001.json.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i, text in enumerate(ENGLISH_PARAGRAPHS):
            f.write(json.dumps({"text": text, "url": f"https://example.com/{i}"}) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, english_corpus, small_tokenizer) -> list[str]:
    """Overrides that point a recipe at a small local corpus and tokenizer, on CPU."""
    root = tmp_path_factory.mktemp("tiny_data")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(english_corpus), encoding="utf-8")
    model = root / "spiece.model"
    small_tokenizer.save(model)
    return [
        "data.source=text",
        f"data.paths=[{corpus}]",
        f"data.tokenizer={model}",
        "data.input_length=64",
        "data.validation_fraction=0.05",
        "runtime.device=cpu",
        "runtime.progress=false",
    ]


@pytest.fixture(scope="session")
def tiny_overrides(tiny_data) -> list[str]:
    """``tiny_data`` plus a tiny model and a small batch: a step takes milliseconds."""
    return tiny_data + [
        "model.size=tiny",
        "trainer.batch_size=4",
        "trainer.eval_batches=2",
        "trainer.eval_every=0",
        "trainer.checkpoint_every=0",
    ]
