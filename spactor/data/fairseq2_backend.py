"""``data.backend=fairseq2``: the train/validation stream built as a fairseq2 ``DataPipeline``.

Optional (``pip install 'spactor[fairseq2]'``): fairseq2 0.8 pins torch 2.9.1, so it
lives in an environment of its own (``.ci/fairseq2`` builds one and runs
``tests/data/test_fairseq2_backend.py`` there). Without fairseq2 importable, asking for
this backend is a one-line ``DataError``.

The pipeline gives the same batches as the default loader (``spactor.data.loader``) for
the same source, tokenizer, seed and shard layout — ``data.num_workers`` loader workers
are emulated as that many shards read in round robin, as ``DataLoader`` does — so a run
can switch backends without changing its data::

    epochs (0, 1, ... for train; 0 for validation)
      └ yield_from: this shard's documents of the split, by document number
                    (the default's sharding and hold-out; fairseq2's positional
                    ``shard`` would differ once a source skips records)
          → bucket(shuffle_window or encode_batch_size)            blocks of documents
          → map(permute, keyed by seed, epoch, shard, block)        same order as default
          → map(SentencePiece ids + EOS, batched)                   tokenise
          → yield_from(documents) → yield_from(tokens)              one token stream
      → bucket(raw_length, drop_remainder)                          pack into chunks
      → map(LongTensor) → bucket(batch_size) → map(collate)          batches
    one batch from each emulated worker's pipeline in turn

Sources are spactor's (``text``, ``jsonl``, ``parquet``, ``prepared``, ``mixture``, ...),
read through fairseq2's ``read_iterator``, so numbering, skipping and skip counts are
the ones the rest of spactor reports. The position is fairseq2's own ``state_dict``
(each document reader pickles as four integers; the source and tokenizer are not in
it), so ``state_dict()`` / ``load_state_dict()`` resume the exact batches.

The native pipelines hold Python callables; none of them refers back to the loader (they
share a small context object instead), so a loader that goes away frees its pipelines at
once. fairseq2n 0.8.1 aborts the interpreter at exit when a pipeline is still alive then
or when one whose first stage is a never-iterated ``read_iterator`` was built; a loader
kept until the end of a program should be ``close()``d.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np
import torch

from spactor.data.loader import (
    PackedChunks,
    _check_validation_documents,
    _with_all_reasons,
    collate_chunks,
    is_validation,
)
from spactor.data.sources import DataError, Source, first_document
from spactor.data.tokenizer import Tokenizer

STATE_VERSION = 1
BACKENDS = ("default", "fairseq2")


def fairseq2_available() -> bool:
    try:
        _fairseq2()
    except DataError:
        return False
    return True


def _fairseq2() -> Any:
    try:
        from fairseq2.data import data_pipeline
    except (ImportError, OSError) as e:  # OSError: fairseq2n without libsndfile / oneTBB
        raise DataError(
            f"data.backend=fairseq2 needs fairseq2 ({type(e).__name__}: {e}); install it in an environment of "
            "its own: pip install 'spactor[fairseq2]' (it pins torch 2.9.1; see the README)"
        ) from None
    return data_pipeline


class _Context:
    """What the pipeline's callables need: the source, the split, the shuffle and
    tokenising settings, and the first epoch's skip counts. Refers to no pipeline."""

    def __init__(self, chunks: PackedChunks) -> None:
        self.chunks = chunks  # the default dataset: argument checks and block encoding
        self.source = chunks.source
        self.split = chunks.split
        self.validation_fraction = chunks.validation_fraction
        self.rank = chunks.rank
        self.seed = chunks.seed
        self.shuffle_window = chunks.shuffle_window
        self.encode_batch_size = chunks.encode_batch_size
        self.skipped: dict[str, int] = {}

    def split_documents(self, start: int, shard: int, num_shards: int) -> Iterator[tuple[int, Any]]:
        want_validation = self.split == "validation"
        for index, doc in self.source.documents(start, shard, num_shards):
            if is_validation(index, self.validation_fraction) == want_validation:
                yield index, doc

    def encode_block(self, block: list[tuple[int, Any]]) -> list[list[int]]:
        """Ids + EOS of each document of a block, encoded ``encode_batch_size`` at a time."""
        docs = [doc for _, doc in block]
        out: list[list[int]] = []
        for lo in range(0, len(docs), self.encode_batch_size):
            out.extend(self.chunks._encode(docs[lo : lo + self.encode_batch_size], -1))
        return out

    def tally(self, before: dict[str, int]) -> None:
        for reason, count in self.source.skipped.items():
            delta = count - before.get(reason, 0)
            if delta > 0:
                self.skipped[reason] = self.skipped.get(reason, 0) + delta


# The context of the loader whose pipelines are being restored: document readers
# unpickled from a fairseq2 state attach to it (the state holds positions only).
_RESTORING: contextvars.ContextVar[_Context | None] = contextvars.ContextVar("_RESTORING", default=None)


class _ShardDocuments:
    """``(index, document)`` of one shard's split for one epoch. Pickles as its
    position; the first epoch's skipped records are counted as they are read."""

    def __init__(self, ctx: _Context | None, shard: int, num_shards: int, epoch: int) -> None:
        self.ctx = ctx
        self.shard = shard
        self.num_shards = num_shards
        self.epoch = epoch
        self.next_index = 0
        self.seen = False  # whether this epoch has yielded a document
        self._docs: Iterator[tuple[int, Any]] | None = None

    def __iter__(self) -> _ShardDocuments:
        return self

    def __next__(self) -> tuple[int, Any]:
        ctx = self.ctx
        if ctx is None:
            raise RuntimeError("a restored fairseq2 document reader was not attached to a loader")
        if self._docs is None:
            self._docs = ctx.split_documents(self.next_index, self.shard, self.num_shards)
        source = ctx.source
        before = dict(source.skipped) if self.epoch == 0 else None
        try:
            index, doc = next(self._docs)
        except StopIteration:
            if not self.seen and self.next_index == 0 and ctx.split == "train":
                raise DataError(
                    f"train shard {self.shard} of {self.num_shards} (rank {ctx.rank}) has no documents: "
                    f"the source has fewer documents than ranks x workers, or the hold-out leaves none. "
                    f"Source: {source.describe()}"
                ) from None
            raise
        finally:
            if before is not None:
                ctx.tally(before)
        self.seen = True
        self.next_index = index + 1
        return index, doc

    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("shard", "num_shards", "epoch", "next_index", "seen")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.ctx = _RESTORING.get()
        self._docs = None


def _shard_pipeline(
    dp: Any, ctx: _Context, shard: int, num_shards: int, raw_length: int, batch_size: int
) -> Any:
    """Batches of one shard (one emulated loader worker)."""
    train = ctx.split == "train"
    # Epoch numbers. (Not a read_iterator: fairseq2n 0.8.1 aborts the process at exit if
    # a pipeline starting with a never-iterated read_iterator was built.)
    epochs = dp.DataPipeline.count(start=0) if train else dp.read_sequence([0])
    return (
        epochs.yield_from(partial(_epoch_pipeline, dp, ctx, shard, num_shards))
        .bucket(raw_length, drop_remainder=True)
        .map(_as_tensor)
        .bucket(batch_size, drop_remainder=train)
        .map(collate_chunks)
        .and_return()
    )


def _epoch_pipeline(dp: Any, ctx: _Context, shard: int, num_shards: int, epoch: int) -> Any:
    """The token stream of one shard's epoch."""

    def fresh(_: Any = None) -> _ShardDocuments:
        return _ShardDocuments(ctx, shard, num_shards, epoch)

    builder = dp.read_iterator(fresh(), fresh, infinite=False)
    builder = builder.bucket(ctx.shuffle_window or ctx.encode_batch_size)
    if ctx.shuffle_window:
        builder = builder.map(partial(_permute, ctx.seed, epoch, shard))
    builder = builder.map(ctx.encode_block)
    builder = builder.yield_from(partial(_read_sequence, dp))  # documents
    builder = builder.yield_from(partial(_read_sequence, dp))  # tokens
    return builder.and_return()


def _read_sequence(dp: Any, items: list[Any]) -> Any:
    return dp.read_sequence(items).and_return()


def _permute(seed: int, epoch: int, shard: int, block: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """The default loader's shuffle: an RNG keyed by (seed, epoch, shard, first document)."""
    order = np.random.default_rng([seed, epoch, shard, block[0][0]]).permutation(len(block))
    return [block[i] for i in order]


def _as_tensor(chunk: list[int]) -> torch.Tensor:
    return torch.tensor(chunk, dtype=torch.long)


class Fairseq2Loader:
    """Batches ``{"original": LongTensor (B, raw_length)}`` from fairseq2 pipelines; the
    arguments and the batches are those of :func:`spactor.data.loader.build_loader`."""

    def __init__(
        self,
        source: Source,
        tokenizer: Tokenizer,
        raw_length: int,
        batch_size: int,
        *,
        split: str = "train",
        validation_fraction: float = 0.0,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle_window: int = 1024,
        encode_batch_size: int = 64,
        num_workers: int = 0,
        document_separator: str = "eos",
    ) -> None:
        dp = _fairseq2()
        if batch_size < 1 or num_workers < 0:
            raise ValueError("batch_size must be >= 1 and num_workers >= 0")
        # The default dataset checks the arguments (and a pre-tokenised source's tokenizer).
        chunks = PackedChunks(
            source,
            tokenizer,
            raw_length,
            split=split,
            validation_fraction=validation_fraction,
            rank=rank,
            world_size=world_size,
            seed=seed,
            shuffle_window=shuffle_window,
            encode_batch_size=encode_batch_size,
            document_separator=document_separator,
        )
        first_document(source)
        if split == "validation":
            _check_validation_documents(source, validation_fraction)
        self.source = source
        self.split = split
        self.rank = rank
        self.world_size = world_size
        self.workers = max(1, num_workers)  # emulated DataLoader workers: shards of this rank
        self.num_workers = 0  # no worker processes
        self._ctx = _Context(chunks)
        num_shards = world_size * self.workers
        self.pipelines = [
            _shard_pipeline(dp, self._ctx, rank * self.workers + w, num_shards, raw_length, batch_size)
            for w in range(self.workers)
        ]
        self._turn = 0  # the emulated worker whose batch comes next
        self._finished: set[int] = set()
        self._resumed = False

    @property
    def skipped(self) -> dict[str, int]:
        return self._ctx.skipped

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self._resumed:
            self._resumed = False
        else:
            for pipeline in self.pipelines:
                pipeline.reset()
            self._turn, self._finished = 0, set()
            self._ctx.skipped = {}
        return self._batches()

    def _batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """DataLoader's order over its workers: one batch from each in turn; a worker
        whose pipeline has ended drops out."""
        iterators = [iter(p) for p in self.pipelines]
        while len(self._finished) < len(iterators):
            w = self._turn
            self._turn = (w + 1) % len(iterators)
            if w in self._finished:
                continue
            try:
                batch = next(iterators[w])
            except StopIteration:
                self._finished.add(w)
                continue
            yield batch

    def close(self) -> None:
        """Free the native pipelines now (the loader cannot be iterated afterwards)."""
        self.pipelines = []

    def skipped_counts(self) -> dict[str, int]:
        """Reason -> records skipped so far in the first epoch (every reason present)."""
        return _with_all_reasons(self._ctx.skipped)

    def state_dict(self) -> dict[str, Any]:
        return {
            "backend": "fairseq2",
            "version": STATE_VERSION,
            "split": self.split,
            "shards": [self.rank, self.world_size, self.workers],
            "pipelines": [p.state_dict() for p in self.pipelines],
            "turn": self._turn,
            "finished": sorted(self._finished),
            "skipped": dict(self._ctx.skipped),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("backend") != "fairseq2":
            raise DataError(
                "the data-loader state was saved by the default backend, not fairseq2: resume with the backend "
                "the run was started with (data.backend)"
            )
        if state.get("version") != STATE_VERSION or state.get("split") != self.split:
            raise DataError(
                f"unusable fairseq2 data-loader state (version {state.get('version')!r}, "
                f"split {state.get('split')!r})"
            )
        if list(state["shards"]) != [self.rank, self.world_size, self.workers]:
            raise DataError(
                f"data-loader state was saved by rank/world size/workers {state['shards']}, but this is "
                f"{[self.rank, self.world_size, self.workers]}: resume with the same world size and num_workers"
            )
        token = _RESTORING.set(self._ctx)
        try:
            for pipeline, saved in zip(self.pipelines, state["pipelines"]):
                pipeline.load_state_dict(saved)
        finally:
            _RESTORING.reset(token)
        self._turn, self._finished = int(state["turn"]), set(state["finished"])
        self._ctx.skipped = {str(k): int(v) for k, v in (state.get("skipped") or {}).items()}
        self._resumed = True


def build_fairseq2_loader(
    source: Source,
    tokenizer: Tokenizer,
    raw_length: int,
    batch_size: int,
    **kwargs: Any,
) -> Fairseq2Loader:
    """:func:`spactor.data.loader.build_loader`'s signature; ``StatefulDataLoader``-only
    arguments (``generator``, ``pin_memory``, ...) are ignored."""
    known = {
        "split",
        "validation_fraction",
        "rank",
        "world_size",
        "seed",
        "shuffle_window",
        "encode_batch_size",
        "num_workers",
        "document_separator",
    }
    return Fairseq2Loader(
        source, tokenizer, raw_length, batch_size, **{k: v for k, v in kwargs.items() if k in known}
    )
