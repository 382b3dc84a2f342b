"""The ``parquet`` source (optional pyarrow): rows as documents, lazy row groups, skips."""

from __future__ import annotations

import sys

import pytest
import torch

from spactor.data.loader import build_loader
from spactor.data.sources import DataError, ListSource

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from spactor.data.parquet import ParquetSource


def write(path, column, name="text", row_group_size=4, type_=None):
    table = pa.table({name: pa.array(column, type=type_), "id": pa.array(range(len(column)))})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


@pytest.fixture
def corpus(tmp_path, english_paragraphs):
    """Two files of 6 + 5 rows, in row groups of 4."""
    texts = list(english_paragraphs) + [p.upper() for p in english_paragraphs[:5]]
    a = write(tmp_path / "part-0.parquet", texts[:6])
    b = write(tmp_path / "part-1.parquet", texts[6:])
    return [a, b], texts


def test_rows_are_documents_in_order(corpus):
    files, texts = corpus
    source = ParquetSource([str(f) for f in files])
    assert list(source.documents()) == list(enumerate(texts))
    assert "parquet: " in source.describe() and "column 'text'" in source.describe()


def test_start_and_shards_select_by_row_number(corpus):
    files, texts = corpus
    source = ParquetSource([str(files[0].parent / "*.parquet")])
    for start in (0, 3, 4, 7, 11):
        for shard, num_shards in ((0, 1), (1, 2), (2, 3)):
            got = list(source.documents(start, shard, num_shards))
            assert got == [(i, t) for i, t in enumerate(texts) if i >= start and i % num_shards == shard]


def test_loader_over_parquet_is_the_loader_over_its_texts(corpus, small_tokenizer):
    files, texts = corpus
    a = build_loader(ParquetSource([str(f) for f in files]), small_tokenizer, 12, 2, shuffle_window=4, seed=3)
    b = build_loader(ListSource(texts), small_tokenizer, 12, 2, shuffle_window=4, seed=3)
    ia, ib = iter(a), iter(b)
    assert all(torch.equal(next(ia)["original"], next(ib)["original"]) for _ in range(15))


def test_bad_rows_and_files_are_skipped_and_counted(tmp_path, english_paragraphs):
    good = english_paragraphs[0]
    write(tmp_path / "a.parquet", [good, None, "   ", "x" * 60, good])
    write(tmp_path / "b.parquet", [b"caf\xc3\xa9", b"\xff\xfe bad bytes"], type_=pa.binary())
    write(tmp_path / "c.parquet", [good, good], name="body")  # no 'text' column
    pq.write_table(pa.table({"text": pa.array([], type=pa.string())}), tmp_path / "d.parquet")
    (tmp_path / "e.parquet").write_bytes(b"PAR1 this is not parquet at all")
    source = ParquetSource([str(tmp_path / "*.parquet")], max_document_chars=48)
    docs = list(source.documents())
    assert docs == [(0, good), (4, good), (5, "café")]
    assert {k: v for k, v in source.skipped.items() if v} == {
        "missing_field": 3,  # a null, and the two rows of the file without the column
        "empty_text": 1,
        "too_long": 1,
        "invalid_utf8": 1,
        "empty_file": 1,
        "corrupt_file": 1,
    }


def test_skips_are_counted_once_over_shards(tmp_path, english_paragraphs):
    column = [t if i % 3 else None for i, t in enumerate(list(english_paragraphs) * 3)]
    write(tmp_path / "a.parquet", column)
    total = 0
    for shard in range(3):
        source = ParquetSource([str(tmp_path / "a.parquet")])
        list(source.documents(0, shard, 3))
        total += source.skipped["missing_field"]
    assert total == column.count(None)


def test_config_route(corpus):
    from spactor.config import load_config
    from spactor.plugins import load_plugins
    from spactor.train.batches import build_source

    load_plugins()
    files, texts = corpus
    resolved = load_config("quickstart", ["data.source=parquet", f"data.paths=[{files[0]}, {files[1]}]"])
    source = build_source(resolved.cfg.data)
    assert isinstance(source, ParquetSource) and [t for _, t in source.documents()] == texts


def test_missing_pyarrow_is_one_clear_line(corpus, monkeypatch):
    files, _ = corpus
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(
        DataError, match=r"^source 'parquet' needs pyarrow, which is not installed: pip install pyarrow"
    ):
        ParquetSource([str(files[0])])
