"""Pre-tokenised caches: ``prepare`` → ``prepared`` source → the same chunks as the raw source."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spactor.data.loader import build_loader
from spactor.data.prepared import (
    META_FILE,
    TOKENS_FILE,
    PreparedSource,
    prepare,
    token_dtype,
    tokenizer_fingerprint,
)
from spactor.data.sources import DataError, JsonlSource, ListSource
from spactor.data.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def paragraphs(english_corpus) -> list[str]:
    """~200 English paragraphs of varied length."""
    return [p.strip() for doc in english_corpus[:30] for p in doc.split("\n\n") if len(p.strip()) > 20][:200]


@pytest.fixture
def jsonl_with_bad_lines(tmp_path, paragraphs) -> Path:
    """JSON lines with records to skip, so document numbers have gaps."""
    path = tmp_path / "corpus.jsonl"
    lines = []
    for i, text in enumerate(paragraphs):
        if i % 17 == 5:
            lines.append("{not json")
        if i % 23 == 7:
            lines.append(json.dumps({"url": "no text field"}))
        lines.append(json.dumps({"text": text}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def take(loader, n):
    it = iter(loader)
    return [next(it)["original"] for _ in range(n)]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_cache_files_and_meta(tmp_path, jsonl_with_bad_lines, small_tokenizer):
    source = JsonlSource([str(jsonl_with_bad_lines)])
    stats = prepare(source, small_tokenizer, tmp_path / "cache", block_documents=16)
    out = tmp_path / "cache"
    meta = json.loads((out / META_FILE).read_text())
    raw = [(i, text) for i, text in JsonlSource([str(jsonl_with_bad_lines)]).documents()]
    ids = [small_tokenizer.encode(t) for _, t in raw]
    assert meta["documents"] == stats.documents == len(raw)
    assert meta["records"] == raw[-1][0] + 1
    assert meta["tokens"] == stats.tokens == sum(map(len, ids))
    assert meta["skipped"] == {"invalid_json": 12, "missing_field": 9} == stats.skipped
    assert meta["dtype"] == "uint16" and meta["version"] == 1
    assert meta["tokenizer"]["sha256"] == tokenizer_fingerprint(small_tokenizer)
    assert meta["source"]["type"] == "jsonl" and str(jsonl_with_bad_lines) in meta["source"]["description"]
    tokens = np.fromfile(out / TOKENS_FILE, dtype=np.uint16)
    offsets = np.load(out / "index.npy")
    assert offsets.dtype == np.int64 and offsets[0] == 0 and offsets[-1] == len(tokens)
    assert [tokens[offsets[j] : offsets[j + 1]].tolist() for j in range(len(ids))] == ids
    assert np.load(out / "doc_ids.npy").tolist() == [i for i, _ in raw]  # the gaps are kept
    assert Tokenizer.load(out / "spiece.model").model_proto == small_tokenizer.model_proto
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp directories left


def test_token_dtype():
    assert token_dtype(512) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


@pytest.mark.parametrize("shuffle_window", [0, 16])
def test_train_loader_over_the_cache_gives_the_raw_chunks(
    tmp_path, jsonl_with_bad_lines, small_tokenizer, shuffle_window
):
    prepare(JsonlSource([str(jsonl_with_bad_lines)]), small_tokenizer, tmp_path / "cache")

    def loader(source, **kw):
        return build_loader(
            source,
            small_tokenizer,
            32,
            4,
            seed=7,
            shuffle_window=shuffle_window,
            validation_fraction=0.1,
            **kw,
        )

    raw = JsonlSource([str(jsonl_with_bad_lines)])
    cached = PreparedSource([str(tmp_path / "cache")])
    n = 3 * sum(map(len, small_tokenizer.encode_batch([t for _, t in raw.documents()]))) // (32 * 4)
    assert same(take(loader(raw), n), take(loader(cached), n))  # ~3 epochs, hold-out and shuffle included
    for kw in ({"split": "validation"}, {"rank": 1, "world_size": 2}, {"num_workers": 2}):
        a = loader(JsonlSource([str(jsonl_with_bad_lines)]), **kw)
        b = loader(PreparedSource([str(tmp_path / "cache")]), **kw)
        if kw.get("split") == "validation":
            assert same([x["original"] for x in a], [x["original"] for x in b])
        else:
            assert same(take(a, 12), take(b, 12))


def test_a_raw_run_resumes_on_the_cache(tmp_path, jsonl_with_bad_lines, small_tokenizer):
    """The loader state is the same four numbers either way: a run can move onto a cache."""
    prepare(JsonlSource([str(jsonl_with_bad_lines)]), small_tokenizer, tmp_path / "cache")
    raw = build_loader(
        JsonlSource([str(jsonl_with_bad_lines)]), small_tokenizer, 24, 4, shuffle_window=8, seed=1
    )
    it = iter(raw)
    for _ in range(7):
        next(it)
    state = pickle.loads(pickle.dumps(raw.state_dict()))
    expected = [next(it)["original"] for _ in range(15)]
    cached = build_loader(
        PreparedSource([str(tmp_path / "cache")]), small_tokenizer, 24, 4, shuffle_window=8, seed=1
    )
    cached.load_state_dict(state)
    assert same(take(cached, 15), expected)


def test_cache_made_with_another_tokenizer_is_refused(tmp_path, paragraphs, small_tokenizer):
    prepare(ListSource(paragraphs), small_tokenizer, tmp_path / "cache")
    other = Tokenizer.train(paragraphs, vocab_size=300, num_threads=1)
    source = PreparedSource([str(tmp_path / "cache")])
    with pytest.raises(DataError, match="tokenised with another tokenizer.*spiece.model"):
        build_loader(source, other, 16, 2)
    build_loader(source, small_tokenizer, 16, 2)  # its own tokenizer is fine


def test_several_caches_continue_the_numbering(tmp_path, paragraphs, small_tokenizer):
    prepare(ListSource(paragraphs[:50]), small_tokenizer, tmp_path / "a")
    prepare(ListSource(paragraphs[50:80]), small_tokenizer, tmp_path / "b")
    source = PreparedSource([str(tmp_path / "a"), str(tmp_path / "b")])
    docs = list(source.documents())
    assert [i for i, _ in docs] == list(range(80)) and len(source) == 80
    assert [d.tolist() for _, d in docs] == small_tokenizer.encode_batch(paragraphs[:80])
    assert [i for i, _ in source.documents(start=47, shard=1, num_shards=3)] == [
        i for i in range(47, 80) if i % 3 == 1
    ]
    assert [d.tolist() for d in source.iter_from(48)][:3] == small_tokenizer.encode_batch(paragraphs[48:51])
    assert len(list(PreparedSource([str(tmp_path / "*")]).documents())) == 80  # globs of directories
    with pytest.raises(DataError, match="token ids, not text"):
        list(source)  # e.g. training a tokenizer on it


def test_writing_is_atomic(tmp_path, paragraphs, small_tokenizer):
    out = tmp_path / "cache"
    prepare(ListSource(paragraphs[:10]), small_tokenizer, out)
    with pytest.raises(DataError, match="already exists"):
        prepare(ListSource(paragraphs[:20]), small_tokenizer, out)

    class Broken(ListSource):
        def _records(self, start, shard, num_shards):
            yield from list(super()._records(start, shard, num_shards))[:5]
            raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        prepare(Broken(paragraphs), small_tokenizer, out, overwrite=True, block_documents=2)
    assert json.loads((out / META_FILE).read_text())["documents"] == 10  # the old cache is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no temp directory left behind
    prepare(ListSource(paragraphs[:20]), small_tokenizer, out, overwrite=True)
    assert json.loads((out / META_FILE).read_text())["documents"] == 20


def test_damaged_or_missing_caches_are_errors(tmp_path, paragraphs, small_tokenizer):
    with pytest.raises(DataError, match="no such directory"):
        PreparedSource([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a prepared cache"):
        PreparedSource([str(tmp_path / "empty")])
    prepare(ListSource(paragraphs[:10]), small_tokenizer, tmp_path / "cache")
    tokens = tmp_path / "cache" / TOKENS_FILE
    tokens.write_bytes(tokens.read_bytes()[:-2])
    with pytest.raises(DataError, match="damaged"):
        PreparedSource([str(tmp_path / "cache")])
    with pytest.raises(DataError, match="no usable documents"):
        prepare(ListSource([]), small_tokenizer, tmp_path / "none")


def spactor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spactor", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_cli_prepare_writes_meta_with_counts_and_shows_progress(
    tmp_path, jsonl_with_bad_lines, small_tokenizer
):
    model = tmp_path / "spiece.model"
    small_tokenizer.save(model)
    out = tmp_path / "cache"
    args = [
        "data",
        "prepare",
        "data.source=jsonl",
        f"data.paths=[{jsonl_with_bad_lines}]",
        f"data.tokenizer={model}",
    ]
    done = spactor(*args, "--out", str(out), "--block-docs", "32")
    assert done.returncode == 0, done.stderr
    meta = json.loads((out / META_FILE).read_text())
    assert meta["documents"] == 200 and meta["skipped"] == {"invalid_json": 12, "missing_field": 9}
    assert meta["source"]["config"]["paths"] == [str(jsonl_with_bad_lines)]
    assert f"wrote {out}: 200 documents" in done.stdout and "skipped 21 records" in done.stdout
    assert f"data.tokenizer={out / 'spiece.model'}" in done.stdout
    last = done.stderr.strip().splitlines()[-1]  # progress on stderr: counts, skips, tokens, rate
    assert last.startswith("prepare: 200 documents, skipped invalid_json=12, missing_field=9, ")
    assert f"{meta['tokens']:,} tokens written" in last and "docs/s" in last

    again = spactor(*args, "--out", str(out))
    assert again.returncode == 2 and "already exists; pass --force" in again.stderr
    forced = spactor(*args, "--out", str(out), "--force", "--json", "--no-progress")
    assert forced.returncode == 0 and "prepare:" not in forced.stderr  # (the skip warnings are logged)
    assert json.loads(forced.stdout)["tokens"] == meta["tokens"]


def test_config_route_and_validation(tmp_path, paragraphs, small_tokenizer):
    from spactor.config import ConfigError, load_config
    from spactor.plugins import load_plugins
    from spactor.train.batches import build_source

    load_plugins()

    prepare(ListSource(paragraphs[:10]), small_tokenizer, tmp_path / "cache")
    resolved = load_config("quickstart", ["data.source=prepared", f"data.paths=[{tmp_path / 'cache'}]"])
    source = build_source(resolved.cfg.data)
    assert isinstance(source, PreparedSource) and len(source) == 10
    with pytest.raises(ConfigError, match="data.paths"):
        load_config("quickstart", ["data.source=prepared"])


@pytest.mark.skipif(not hasattr(os, "umask"), reason="POSIX permissions")
def test_cache_is_not_private(tmp_path, paragraphs, small_tokenizer):
    prepare(ListSource(paragraphs[:5]), small_tokenizer, tmp_path / "cache")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o777 & ~mask
    assert (tmp_path / "cache" / META_FILE).stat().st_mode & 0o777 == 0o666 & ~mask
