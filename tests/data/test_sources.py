import gzip
import json
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spactor.data.sources import (
    BuiltinSource,
    DataError,
    JsonlSource,
    JsonlSourceConfig,
    ListSource,
    TextSource,
    TextSourceConfig,
    first_document,
)
from spactor.registry import SOURCES


def test_registered():
    assert {"text", "jsonl", "builtin"} <= set(SOURCES.names())


def test_text_paragraphs_and_globs(text_files, tmp_path, english_paragraphs):
    paragraphs = list(english_paragraphs)
    src = SOURCES.get("text").factory(TextSourceConfig(paths=[str(tmp_path / "part-*.txt")]))
    assert list(src) == paragraphs  # files in sorted order, split on blank lines
    assert "part-0.txt" in src.describe()
    # explicit files keep the given order
    assert list(TextSource([str(text_files[1]), str(text_files[0])])) == paragraphs[3:] + paragraphs[:3]


def test_text_blank_line_runs_and_gzip(tmp_path):
    path = tmp_path / "doc.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n\nfirst line\nsecond line\n  \n\n\nthird\r\n")
    assert list(TextSource([str(path)])) == ["first line\nsecond line", "third"]


@pytest.mark.parametrize("kind", ["text", "jsonl"])
def test_missing_paths_raise(kind, tmp_path):
    cfg = TextSourceConfig if kind == "text" else JsonlSourceConfig
    factory = SOURCES.get(kind).factory
    with pytest.raises(DataError, match="no such file: .*absent.txt"):
        factory(cfg(paths=[str(tmp_path / "absent.txt")]))
    with pytest.raises(DataError, match="glob matches no files: .*nothing-"):
        factory(cfg(paths=[str(tmp_path / "nothing-*.jsonl")]))
    with pytest.raises(DataError, match="directory"):
        factory(cfg(paths=[str(tmp_path)]))
    with pytest.raises(DataError, match="at least one path"):
        factory(cfg(paths=[]))


def test_jsonl_gz(jsonl_gz_file, english_paragraphs):
    src = SOURCES.get("jsonl").factory(JsonlSourceConfig(paths=[str(jsonl_gz_file)]))
    assert list(src) == list(english_paragraphs)
    assert sum(src.skipped.values()) == 0


def test_jsonl_bad_lines_are_counted(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps({"text": "good one"}),
        "{not json",
        json.dumps({"content": "wrong field"}),
        json.dumps({"text": 3}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"text": "   "}),
        "",
        json.dumps({"text": "good two"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    src = JsonlSource([str(path)])
    docs = list(src.documents())
    assert docs == [(0, "good one"), (7, "good two")]  # index = line number
    assert src.skipped == {"invalid_json": 2, "missing_field": 2, "non_string_field": 1, "empty_text": 1}
    assert "invalid_json=2" in src.describe()


def test_jsonl_only_parses_its_shard(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("{broken\n" + json.dumps({"text": "doc"}) + "\n")
    src = JsonlSource([str(path)])
    assert list(src.documents(shard=1, num_shards=2)) == [(1, "doc")]
    assert src.skipped["invalid_json"] == 0  # line 0 belongs to the other shard


def test_custom_text_field(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"body": "hello"}) + "\n")
    assert list(JsonlSource([str(path)], text_field="body")) == ["hello"]


def test_empty_source_raises(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("{bad\n")
    with pytest.raises(DataError, match="no usable documents"):
        first_document(JsonlSource([str(path)]))
    with pytest.raises(DataError, match="no usable documents"):
        first_document(ListSource([]))


def test_builtin_corpus():
    modules_before = set(sys.modules)
    src = SOURCES.get("builtin").factory(SOURCES.get("builtin").config_cls())
    docs = src.docs
    assert len(docs) > 1000
    assert sum(map(len, docs)) > 500_000
    assert any(d.startswith('The "assert" statement') for d in docs)  # a pydoc topic
    assert any(d.startswith("JSON (JavaScript Object Notation)") for d in docs)  # json's docstring
    assert min(map(len, docs)) >= 20
    assert "documents" in src.describe() and "characters" in src.describe()
    # parsed, never imported
    assert not {"antigravity", "this", "idlelib"} & (set(sys.modules) - modules_before)
    assert BuiltinSource().docs is docs  # cached per process


@given(
    n=st.integers(0, 30),
    start=st.integers(0, 35),
    num_shards=st.integers(1, 6),
    data=st.data(),
)
def test_documents_filter_by_start_and_shard(n, start, num_shards, data):
    shard = data.draw(st.integers(0, num_shards - 1))
    src = ListSource([f"doc {i}" for i in range(n)])
    got = list(src.documents(start, shard, num_shards))
    assert got == [(i, f"doc {i}") for i in range(start, n) if i % num_shards == shard]


def test_shards_partition_documents(text_files, jsonl_gz_file):
    for src in (TextSource([str(p) for p in text_files]), JsonlSource([str(jsonl_gz_file)]), BuiltinSource()):
        everything = list(src.documents())
        parts = [list(src.documents(0, s, 4)) for s in range(4)]
        assert sorted(i for part in parts for i, _ in part) == [i for i, _ in everything]
        assert dict(everything) == {i: t for part in parts for i, t in part}
