"""Weighted mixing: exact proportions, a reproducible order, resumable numbering."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from spactor.data.loader import build_loader, skipped_counts
from spactor.data.mixture import MixtureSource, Schedule, integer_weights
from spactor.data.prepared import PreparedSource, prepare
from spactor.data.sources import DataError, JsonlSource, ListSource

WEIGHTS = ([0.7, 0.3], [5, 3, 2], [1, 1, 1], [0.1, 0.2, 0.3, 0.4], [1, 2, 0.5], [0.01, 0.99], [3, 1, 1, 1, 1])


def parts(*sizes: int) -> list[ListSource]:
    return [ListSource([f"{chr(97 + k)}{i}" for i in range(n)]) for k, n in enumerate(sizes)]


def test_integer_weights():
    assert integer_weights([0.7, 0.3]) == [7, 3]
    assert integer_weights([1, 2, 0.5]) == [2, 4, 1]
    assert integer_weights([2, 4]) == [1, 2]
    assert integer_weights([1 / 3, 2 / 3]) == [1, 2]
    rounded = integer_weights([1e-6, 1.0])  # would need 1,000,001 slots: rounded to 10,000
    assert sum(rounded) <= 10_000 and rounded[0] >= 1
    for bad in ([], [1, 0], [1, -2], [1, float("nan")], [True]):
        with pytest.raises(DataError):
            integer_weights(bad)


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_proportions_hold_exactly_per_period_and_closely_in_every_window(weights, seed):
    schedule = Schedule(weights, seed)
    quotas = np.array(integer_weights(weights))
    p = np.array(weights, dtype=float) / sum(weights)
    seq = np.array([schedule.part(t) for t in range(3 * schedule.period + 11)])
    counts = np.vstack([np.zeros(len(weights)), np.cumsum(np.eye(len(weights))[seq], axis=0)])
    for start in range(0, len(seq) - schedule.period + 1, 3):  # any period-long window: exact
        assert (counts[start + schedule.period] - counts[start] == quotas).all()
    for length in range(1, min(len(seq), 120)):  # any window: within 2 documents per part
        window = counts[length:] - counts[:-length]
        assert np.abs(window - length * p).max() < 2
    for t in (0, 1, 5, schedule.period, len(seq)):  # counts_before / slot_of are the arithmetic view
        assert schedule.counts_before(t).tolist() == counts[t].astype(int).tolist()
    for k in range(len(weights)):
        slots = np.flatnonzero(seq == k)
        assert [schedule.slot_of(k, n) for n in range(len(slots))] == slots.tolist()


def test_documents_follow_the_weights_and_the_seed():
    mixed = MixtureSource(parts(300, 300, 300), [0.5, 0.3, 0.2], seed=4)
    docs = [text for _, text in mixed.documents()]
    # first_exhausted: ends at the slot that would read a 301st 'a' (half of every 10 slots)
    assert len(docs) == mixed.schedule.slot_of(0, 300) and 600 <= len(docs) < 610
    first_100 = [d[0] for d in docs[:100]]
    assert (first_100.count("a"), first_100.count("b"), first_100.count("c")) == (50, 30, 20)
    for k, letter in enumerate("abc"):  # each part in its own order, each document once
        mine = [d for d in docs if d[0] == letter]
        assert mine == [f"{letter}{i}" for i in range(len(mine))]
    again = [text for _, text in MixtureSource(parts(300, 300, 300), [0.5, 0.3, 0.2], seed=4).documents()]
    assert again == docs  # reproducible
    orders = {
        tuple(t for _, t in MixtureSource(parts(300, 300, 300), [0.5, 0.3, 0.2], seed=s).documents())[:10]
        for s in range(6)
    }
    assert len(orders) > 1  # the seed changes the order (not the proportions)


def test_until_all_exhausted_repeats_small_parts():
    mixed = MixtureSource(parts(40, 5), [1, 1], until="all_exhausted")
    docs = [text for _, text in mixed.documents()]
    assert len(docs) == mixed.end()
    a, b = [d for d in docs if d[0] == "a"], [d for d in docs if d[0] == "b"]
    assert a == [f"a{i}" for i in range(40)]  # every document of the large part, once
    assert b == [f"b{i % 5}" for i in range(len(b))] and abs(len(a) - len(b)) <= 1  # the small one, cycled
    with pytest.raises(DataError, match="until must be"):
        MixtureSource(parts(3, 3), [1, 1], until="never")


@pytest.mark.parametrize("until", ["first_exhausted", "all_exhausted"])
def test_numbering_is_stable_under_start_and_sharding(until):
    mixed = MixtureSource(parts(37, 11, 23), [0.5, 0.2, 0.3], seed=9, until=until)
    full = list(mixed.documents())
    assert [i for i, _ in full] == list(range(len(full)))
    for start in (0, 1, 13, 40):
        for shard, num_shards in ((0, 1), (1, 3), (2, 4)):
            got = list(mixed.documents(start, shard, num_shards))
            assert got == [(i, d) for i, d in full if i >= start and i % num_shards == shard]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_resumes_a_mixture_exactly(small_tokenizer, english_corpus, num_workers):
    paragraphs = [p for doc in english_corpus[:20] for p in doc.split("\n\n") if len(p) > 30]

    def make():
        mixed = MixtureSource([ListSource(paragraphs[:60]), ListSource(paragraphs[60:90])], [2, 1], seed=1)
        return build_loader(mixed, small_tokenizer, 24, 4, shuffle_window=8, seed=5, num_workers=num_workers)

    loader = make()
    it = iter(loader)
    for _ in range(6):
        next(it)
    state = pickle.loads(pickle.dumps(loader.state_dict()))
    expected = [next(it)["original"] for _ in range(14)]  # crosses epoch boundaries
    del it
    resumed = make()
    resumed.load_state_dict(state)
    it = iter(resumed)
    assert all(torch.equal(next(it)["original"], e) for e in expected)


def test_a_prepared_part_mixes_like_its_raw_source(tmp_path, small_tokenizer, english_corpus):
    paragraphs = [p for doc in english_corpus[:20] for p in doc.split("\n\n") if len(p) > 30]
    prepare(ListSource(paragraphs[:50]), small_tokenizer, tmp_path / "cache")
    raw = MixtureSource([ListSource(paragraphs[:50]), ListSource(paragraphs[50:80])], [3, 2], seed=2)
    mixed = MixtureSource(
        [PreparedSource([str(tmp_path / "cache")]), ListSource(paragraphs[50:80])], [3, 2], seed=2
    )
    assert mixed.pretokenized and not raw.pretokenized
    a = build_loader(raw, small_tokenizer, 16, 4, shuffle_window=8, validation_fraction=0.1)
    b = build_loader(mixed, small_tokenizer, 16, 4, shuffle_window=8, validation_fraction=0.1)
    ia, ib = iter(a), iter(b)
    assert all(torch.equal(next(ia)["original"], next(ib)["original"]) for _ in range(20))
    from spactor.data.tokenizer import Tokenizer

    other = Tokenizer.train(paragraphs, vocab_size=300, num_threads=1)
    with pytest.raises(DataError, match="another tokenizer"):
        build_loader(mixed, other, 16, 4)


def test_skipped_records_are_counted_once_across_workers(tmp_path, small_tokenizer, english_paragraphs):
    path = tmp_path / "bad.jsonl"
    lines = []
    for i, text in enumerate(english_paragraphs * 5):
        lines.append(json.dumps({"text": text}))
        if i % 4 == 0:
            lines.append("{broken")
    path.write_text("\n".join(lines) + "\n")
    expected = JsonlSource([str(path)])
    list(expected.documents())
    assert expected.skipped["invalid_json"] == 8

    def mixed():
        return MixtureSource([JsonlSource([str(path)]), ListSource(list(english_paragraphs) * 10)], [1, 1])

    for num_workers in (0, 2):
        loader = build_loader(mixed(), small_tokenizer, 8, 2, shuffle_window=0, num_workers=num_workers)
        it = iter(loader)
        for _ in range(60):  # well past the first epoch (the jsonl part ends it)
            next(it)
        assert skipped_counts(loader)["invalid_json"] == 8


def test_config_route(tmp_path, english_paragraphs, text_files):
    from spactor.config import load_config
    from spactor.plugins import load_plugins
    from spactor.train.batches import build_source

    load_plugins()
    sources = f"[{{type: text, weight: 0.7, paths: [{text_files[0]}, {text_files[1]}]}}, {{type: builtin, weight: 0.3}}]"
    resolved = load_config("quickstart", ["data.source=mixture", f"data.source_options.sources={sources}"])
    source = build_source(resolved.cfg.data)
    assert isinstance(source, MixtureSource) and source.schedule.quotas.tolist() == [7, 3]
    docs = [text for _, text in source.documents()]
    assert (
        docs[:10].count(english_paragraphs[0]) == 1 and len(docs) == 8
    )  # the text part (6 documents) ends it
    assert "mixture (seed 0" in source.describe() and "70.0% text" in source.describe()

    for bad, message in (
        ("[{type: nope, weight: 1}]", "unknown source 'nope'"),
        ("[{weight: 1}]", "needs a type"),
        ("[{type: builtin, weight: 0}]", "weight must be a positive number"),
        ("[{type: builtin, min_char: 3}]", "has no option 'min_char'"),
        ("[]", "needs data.source_options.sources"),
    ):
        resolved = load_config("quickstart", ["data.source=mixture", f"data.source_options.sources={bad}"])
        with pytest.raises(DataError, match=message):
            build_source(resolved.cfg.data)
