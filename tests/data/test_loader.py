import copy
import itertools
import json
import pickle
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from spactor.data import loader as loader_mod
from spactor.data.loader import PackedChunks, build_loader, is_validation
from spactor.data.sources import DataError, JsonlSource, ListSource


@pytest.fixture(scope="module")
def docs(english_corpus) -> list[str]:
    """~20 short English documents of varied length (a few chunks per epoch)."""
    paragraphs = [p.strip() for doc in english_corpus[:5] for p in doc.split("\n\n") if len(p.strip()) > 30]
    return paragraphs[:20]


def stream(tok, docs, indices):
    return [t for j in indices for t in tok.encode(docs[j]) + [tok.eos_id]]


def take(loader_or_iter, n):
    it = iter(loader_or_iter)
    return [next(it)["original"] for _ in range(n)]


def test_batches_are_the_packed_stream(small_tokenizer, docs):
    loader = build_loader(ListSource(docs), small_tokenizer, raw_length=16, batch_size=4, shuffle_window=0)
    batches = take(loader, 6)
    assert all(b.shape == (4, 16) and b.dtype == torch.long for b in batches)
    flat = torch.cat(batches).flatten().tolist()
    expected = stream(small_tokenizer, docs, range(len(docs)))
    assert flat == expected[: len(flat)]


def test_document_separator_none_joins_documents_as_t5(small_tokenizer, docs):
    """T5's reduce_concat_tokens: the documents' ids back to back, no EOS between them;
    for text and for pre-tokenised documents alike."""
    tok = small_tokenizer
    expected = [t for d in docs for t in tok.encode(d)]
    for source_docs in (docs, [tok.encode(d) for d in docs]):
        source = ListSource(source_docs)
        loader = build_loader(source, tok, 16, 4, shuffle_window=0, document_separator="none")
        flat = torch.cat(take(loader, 4)).flatten().tolist()
        assert flat == expected[: len(flat)]
        assert tok.eos_id not in flat
    with pytest.raises(ValueError, match="document_separator"):
        PackedChunks(ListSource(docs), tok, 16, document_separator="newline")


def test_train_loops_over_epochs(small_tokenizer, docs):
    epoch = stream(small_tokenizer, docs, range(len(docs)))
    raw_length, batch_size = 32, 4
    n = 3 * len(epoch) // (raw_length * batch_size)  # about three epochs
    loader = build_loader(ListSource(docs), small_tokenizer, raw_length, batch_size, shuffle_window=0)
    flat = torch.cat(take(loader, n)).flatten().tolist()
    assert flat == (epoch * 4)[: len(flat)]  # the stream runs on across epoch boundaries


def test_shuffle_window_permutes_documents_per_epoch(small_tokenizer, docs):
    tok = small_tokenizer
    loader = build_loader(ListSource(docs), tok, raw_length=1, batch_size=1, shuffle_window=8)
    epoch = stream(tok, docs, range(len(docs)))
    flat = torch.cat(take(loader, 2 * len(epoch))).flatten().tolist()
    first, second = flat[: len(epoch)], flat[len(epoch) :]
    assert first != epoch and second != first  # shuffled, and differently each epoch
    assert Counter(first) == Counter(epoch) == Counter(second)  # same documents


def test_validation_split_is_disjoint_and_finite(small_tokenizer, docs):
    tok, fraction = small_tokenizer, 0.3
    val_idx = [j for j in range(len(docs)) if is_validation(j, fraction)]
    train_idx = [j for j in range(len(docs)) if not is_validation(j, fraction)]
    assert val_idx and train_idx
    src = ListSource(docs)
    val = build_loader(src, tok, 1, 16, split="validation", validation_fraction=fraction)
    val_flat = torch.cat([b["original"] for b in val]).flatten().tolist()
    assert val_flat == stream(tok, docs, val_idx)
    assert torch.cat([b["original"] for b in val]).flatten().tolist() == val_flat  # a second pass restarts
    train = build_loader(src, tok, 1, 16, validation_fraction=fraction, shuffle_window=0)
    n_train = len(stream(tok, docs, train_idx))
    train_flat = torch.cat(take(train, n_train // 16)).flatten().tolist()
    assert train_flat == stream(tok, docs, train_idx)[: len(train_flat)]


def test_validation_drops_final_partial_chunk(small_tokenizer, docs):
    val = build_loader(ListSource(docs), small_tokenizer, 64, 3, split="validation", validation_fraction=0.5)
    batches = [b["original"] for b in val]
    expected = stream(small_tokenizer, docs, [j for j in range(len(docs)) if is_validation(j, 0.5)])
    assert torch.cat(batches).flatten().tolist() == expected[: len(expected) // 64 * 64]


def test_ranks_and_workers_take_rows_of_the_same_global_batches(small_tokenizer, docs, monkeypatch):
    """Global batch k is the same chunks however many ranks and workers make it: rank r
    holds rows [r*B, (r+1)*B) of it, worker w the batches k with k % workers == w."""
    tok, raw_length, global_batch, n_batches = small_tokenizer, 8, 4, 12
    one = take(build_loader(ListSource(docs), tok, raw_length, global_batch, shuffle_window=8, seed=5), n_batches)
    for world_size, num_workers in ((2, 1), (4, 1), (2, 3)):
        local = global_batch // world_size
        for rank, worker in itertools.product(range(world_size), range(num_workers)):
            info = SimpleNamespace(id=worker, num_workers=num_workers)
            monkeypatch.setattr(loader_mod, "get_worker_info", lambda info=info: info)
            ds = PackedChunks(ListSource(docs), tok, raw_length, rank=rank, world_size=world_size,
                              shuffle_window=8, seed=5, batch_size=local)
            chunks = list(itertools.islice(iter(ds), local * len(range(worker, n_batches, num_workers))))
            for i, k in enumerate(range(worker, n_batches, num_workers)):
                got = torch.stack(chunks[i * local:(i + 1) * local])
                assert torch.equal(got, one[k][rank * local:(rank + 1) * local]), (world_size, num_workers, rank, k)


def test_real_workers_give_the_batches_of_no_workers(small_tokenizer, docs):
    make = lambda n: build_loader(ListSource(docs), small_tokenizer, 8, 4, shuffle_window=8, seed=1,  # noqa: E731
                                  num_workers=n, rank=1, world_size=2)
    assert all(torch.equal(a, b) for a, b in zip(take(make(0), 10), take(make(2), 10)))


def test_real_workers_cover_the_split_once(small_tokenizer, docs):
    tok = small_tokenizer
    val = build_loader(
        ListSource(docs), tok, 1, 32, split="validation", validation_fraction=0.5, num_workers=2
    )
    got = Counter(torch.cat([b["original"] for b in val]).flatten().tolist())
    assert got == Counter(stream(tok, docs, [j for j in range(len(docs)) if is_validation(j, 0.5)]))


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("shuffle_window", [0, 8])
def test_exact_resume(small_tokenizer, docs, num_workers, shuffle_window):
    def make():
        return build_loader(
            ListSource(docs),
            small_tokenizer,
            24,
            4,
            num_workers=num_workers,
            shuffle_window=shuffle_window,
            seed=3,
        )

    loader = make()
    it = iter(loader)
    for _ in range(5):
        next(it)
    state = pickle.loads(pickle.dumps(loader.state_dict()))  # as if read back from disk
    expected = [next(it)["original"] for _ in range(12)]  # crosses epoch boundaries
    del it

    resumed = make()
    resumed.load_state_dict(state)
    got = take(resumed, 12)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_resume_validation_to_the_end(small_tokenizer, docs):
    def make():
        return build_loader(
            ListSource(docs), small_tokenizer, 8, 2, split="validation", validation_fraction=0.5
        )

    loader = make()
    it = iter(loader)
    next(it), next(it)
    state = copy.deepcopy(loader.state_dict())
    rest = [b["original"] for b in it]
    resumed = make()
    resumed.load_state_dict(state)
    got = [b["original"] for b in resumed]
    assert len(got) == len(rest) > 0 and all(torch.equal(a, b) for a, b in zip(got, rest))


def test_dataset_state_round_trip_mid_block(small_tokenizer, docs):
    ds = PackedChunks(ListSource(docs), small_tokenizer, 8, encode_batch_size=4, shuffle_window=0)
    it = iter(ds)
    for _ in range(7):
        next(it)
    state = ds.state_dict()
    assert state["emitted"] > 0 and len(state["carry"]) < 8  # small: no token buffers
    expected = [next(it) for _ in range(20)]
    ds2 = PackedChunks(ListSource(docs), small_tokenizer, 8, encode_batch_size=4, shuffle_window=0)
    ds2.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(itertools.islice(ds2, 20), expected))


@pytest.mark.parametrize("saved_by", [(0, 1), (1, 2), (0, 4)])
@pytest.mark.parametrize("resumed_on", [(0, 1), (1, 2), (3, 4)])
def test_resume_on_another_number_of_ranks_continues_the_stream(small_tokenizer, docs, saved_by, resumed_on):
    """Any rank's state is a position in the one stream: a resume on another world size
    continues with the next global batch (rows of it for the resuming rank)."""
    tok, global_batch = small_tokenizer, 4
    reference = take(build_loader(ListSource(docs), tok, 8, global_batch, shuffle_window=8, seed=2), 9)
    rank, world = saved_by
    saver = build_loader(ListSource(docs), tok, 8, global_batch // world, rank=rank, world_size=world,
                         shuffle_window=8, seed=2)
    take(saver, 5)  # global batches 0..4 consumed
    state = pickle.loads(pickle.dumps(saver.state_dict()))
    rank, world = resumed_on
    local = global_batch // world
    resumed = build_loader(ListSource(docs), tok, 8, local, rank=rank, world_size=world, shuffle_window=8, seed=2)
    resumed.load_state_dict(state)
    for got, want in zip(take(resumed, 4), reference[5:]):
        assert torch.equal(got, want[rank * local:(rank + 1) * local])


def test_resume_with_other_workers_or_batch_is_an_error(small_tokenizer, docs):
    loader = build_loader(ListSource(docs), small_tokenizer, 8, 4)
    take(loader, 1)
    state = loader.state_dict()
    other = build_loader(ListSource(docs), small_tokenizer, 8, 4, num_workers=2)
    with pytest.raises(Exception, match="same data.num_workers|_snapshot|worker"):
        other.load_state_dict(state)
        take(other, 1)
    ds = PackedChunks(ListSource(docs), small_tokenizer, 8, batch_size=2)
    with pytest.raises(DataError, match="same trainer.batch_size"):
        ds.load_state_dict(state["dataset_state"])


def test_empty_inputs_are_errors(small_tokenizer):
    with pytest.raises(DataError, match="no usable documents"):
        build_loader(ListSource([]), small_tokenizer, 8, 2)
    with pytest.raises(DataError, match="validation split is empty"):
        build_loader(ListSource(["a b c"]), small_tokenizer, 8, 2, split="validation")
    with pytest.raises(DataError, match="no document of list: 3 documents falls in the 1.00% hold-out"):
        build_loader(
            ListSource(["a", "b", "c"]), small_tokenizer, 8, 2, split="validation", validation_fraction=0.01
        )
    # One document is enough for any number of ranks: they all read the one stream.
    lonely = build_loader(ListSource(["just one document, told twice"]), small_tokenizer, 2, 2, rank=1, world_size=2)
    assert take(lonely, 2)[0].shape == (2, 2)


def test_validation_rows_past_the_end_are_empty_and_ranks_cover_the_split(small_tokenizer, docs):
    kw = {"split": "validation", "validation_fraction": 0.3}
    whole = torch.cat([b["original"] for b in build_loader(ListSource(docs), small_tokenizer, 8, 64, **kw)])
    assert 0 < len(whole) < 64  # one partial global batch
    world_size = 64 // 4
    parts = [[b["original"] for b in build_loader(ListSource(docs), small_tokenizer, 8, 4, rank=r,
                                                   world_size=world_size, **kw)] for r in range(world_size)]
    assert parts[-1] == []  # this rank's rows lie past the end of the split
    assert torch.equal(torch.cat([b for p in parts for b in p]), whole)


def test_skip_counters_count_one_pass(small_tokenizer, tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        "\n".join(["{bad", json.dumps({"text": "a document long enough to fill chunks"}), "{bad"])
    )
    src = JsonlSource([str(path)])
    val = build_loader(src, small_tokenizer, 4, 2, split="validation", validation_fraction=0.9999)
    list(val)
    assert src.skipped["invalid_json"] == 2  # the start-up checks did not count


def test_resume_with_workers_on_another_number_of_ranks(small_tokenizer, docs):
    """Real worker processes: a 1-rank state resumes on rank 1 of 2 with the same workers."""
    def make(rank, world):
        return build_loader(ListSource(docs), small_tokenizer, 8, 4 // world, rank=rank, world_size=world,
                            shuffle_window=8, seed=2, num_workers=2)

    reference = take(build_loader(ListSource(docs), small_tokenizer, 8, 4, shuffle_window=8, seed=2), 8)
    saver = make(0, 1)
    it = iter(saver)
    for _ in range(3):
        next(it)
    state = pickle.loads(pickle.dumps(saver.state_dict()))
    del it
    resumed = make(1, 2)
    resumed.load_state_dict(state)
    for got, want in zip(take(resumed, 4), reference[3:]):
        assert torch.equal(got, want[2:4])


def test_a_state_of_the_old_one_process_stream_still_resumes(small_tokenizer, docs):
    loader = build_loader(ListSource(docs), small_tokenizer, 8, 4, shuffle_window=8, seed=2)
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = copy.deepcopy(loader.state_dict())
    expected = [next(it)["original"] for _ in range(4)]
    # what the rank-sharded loader (state version 1) saved on one rank without workers
    old = {k: v for k, v in state["dataset_state"].items() if k not in ("global_batch", "worker", "num_workers",
                                                                         "chunks")}
    old.update(version=1, shard=0, num_shards=1)
    resumed = build_loader(ListSource(docs), small_tokenizer, 8, 4, shuffle_window=8, seed=2)
    resumed.load_state_dict({**state, "dataset_state": old})
    assert all(torch.equal(a, b) for a, b in zip(take(resumed, 4), expected))
    with pytest.raises(DataError, match="sharded documents over 2"):
        PackedChunks(ListSource(docs), small_tokenizer, 8).load_state_dict({**old, "num_shards": 2})


def test_tokenizer_threads_share_the_node_between_ranks_and_workers(monkeypatch):
    from spactor.data.loader import tokenizer_threads

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert tokenizer_threads(1) == -1  # the only tokenising process: every core
    assert tokenizer_threads(2) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # torchrun --nproc_per_node=8
    assert tokenizer_threads(1) == 2
    assert tokenizer_threads(2) == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert tokenizer_threads(2) == 1  # never below one
