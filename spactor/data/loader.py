"""A resumable loader of packed raw chunks.

documents (``Source``) → shard by rank, then by worker → train/validation hold-out →
optional shuffle within a window of documents → SentencePiece ids + EOS (batched; a
``pretokenized`` source such as a prepared cache yields ids, packed as they are) →
one token stream cut into ``raw_length`` chunks → batches ``{"original": (B, raw_length)}``.

Everything is a pure function of the document numbering, so the position in the stream
is four small numbers (epoch, first document of the current block, tokens carried into
that block, chunks already emitted from it) and the shuffle RNG is keyed by those, not
stored. A checkpoint stays small (no token buffers beyond < ``raw_length`` ids);
restoring re-reads the source up to the saved document (JSON lines are skipped without
being parsed, but gzip must still be decompressed) and re-tokenises at most one block.
``torchdata``'s ``StatefulDataLoader`` collects this state from every worker, so
``loader.state_dict()`` / ``loader.load_state_dict()`` resume the exact same batches.

Sharding: global shard = ``rank * num_workers + worker_id``; document ``j`` belongs to
shard ``j % (world_size * num_workers)``. Resuming therefore needs the same world size
and ``num_workers``; a mismatch raises ``DataError``.

Skipped records (bad JSON, invalid bytes, over-long documents, empty or damaged files:
``spactor.data.sources``) are tallied per shard in the stream state during the first
epoch, so each bad record counts once however many epochs and evaluations re-read it,
the counts travel with ``state_dict()`` (a resumed run keeps them), and
:func:`skipped_counts` adds up a loader's workers. A run sums that over its ranks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader

from spactor.data.chunking import Packer
from spactor.data.sources import SKIP_REASONS, DataError, Source, first_document, probing
from spactor.data.tokenizer import Tokenizer

SPLITS = ("train", "validation")
DOCUMENT_SEPARATORS = ("eos", "none")  # data.document_separator
HOLDOUT_BUCKETS = 10_000
STATE_VERSION = 1
T = TypeVar("T")


# --------------------------------------------------------------------------- hold-out


def mix64(x: int) -> int:
    """SplitMix64's finaliser: a fixed, well-mixed 64-bit integer hash (stable across
    Python versions and processes, unlike ``hash``)."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def is_validation(index: int, validation_fraction: float) -> bool:
    """Whether document ``index`` is held out. Depends on the index alone (not the
    seed, rank or worker count), so the split never changes between runs."""
    return mix64(index) % HOLDOUT_BUCKETS < round(validation_fraction * HOLDOUT_BUCKETS)


# --------------------------------------------------------------------------- state


@dataclass
class StreamState:
    """Where a shard's stream stands, after the last chunk it yielded."""

    epoch: int = 0
    index: int = 0  # first document of the current block (or of the next one)
    carry: list[int] = field(default_factory=list)  # tokens carried into that block
    emitted: int = 0  # chunks already yielded from carry + the block's tokens
    finished: bool = False  # validation: the single pass is over
    skipped: dict[str, int] = field(default_factory=dict)  # first epoch's skipped records, by reason
    counted_to: int = 0  # skips of records with index < counted_to are in ``skipped``


def _batched(items: Iterable[T], n: int) -> Iterator[list[T]]:
    it = iter(items)
    while batch := list(islice(it, n)):
        yield batch


def _shard_of_this_process(rank: int, world_size: int) -> tuple[int, int, int]:
    """(global shard, number of shards, workers per rank) for the calling process."""
    info = get_worker_info()
    worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * num_workers + worker_id, world_size * num_workers, num_workers


# --------------------------------------------------------------------------- dataset


class PackedChunks(IterableDataset):
    """Yields ``raw_length``-token ``LongTensor`` chunks of one split of ``source``.

    ``train`` loops over epochs forever; each epoch re-reads the shard's documents (in a
    new shuffled order when ``shuffle_window`` > 0) and the token stream runs on across
    the epoch boundary. ``validation`` makes one pass and drops the final partial chunk.
    A train shard with no documents is a ``DataError`` (it would otherwise spin); a
    validation shard with none simply yields nothing.

    ``shuffle_window`` (train only): documents are read in blocks of this many and
    permuted within the block with an RNG keyed by (seed, epoch, shard, block), so the
    order is reproducible without storing the RNG. 0 keeps file order. A resume
    re-tokenises up to one block, so keep it in the thousands, not millions.
    """

    def __init__(
        self,
        source: Source,
        tokenizer: Tokenizer,
        raw_length: int,
        *,
        split: str = "train",
        validation_fraction: float = 0.0,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle_window: int = 0,
        encode_batch_size: int = 64,
        document_separator: str = "eos",
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not 0.0 <= validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
        if split == "validation" and round(validation_fraction * HOLDOUT_BUCKETS) == 0:
            raise DataError("the validation split is empty: set validation_fraction > 0 (e.g. 0.01)")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        if document_separator not in DOCUMENT_SEPARATORS:
            raise ValueError(
                f"document_separator must be one of {DOCUMENT_SEPARATORS}, got {document_separator!r}"
            )
        if raw_length < 1 or encode_batch_size < 1 or shuffle_window < 0:
            raise ValueError("raw_length and encode_batch_size must be >= 1, shuffle_window >= 0")
        if getattr(source, "pretokenized", False):
            # Documents arrive as ids (a prepared cache): they must be this tokenizer's.
            source.check_tokenizer(tokenizer)  # type: ignore[attr-defined]
        self.source = source
        self.tokenizer = tokenizer
        self.raw_length = raw_length
        self.split = split
        self.validation_fraction = validation_fraction
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle_window = shuffle_window if split == "train" else 0
        self.encode_batch_size = encode_batch_size
        self.add_eos = document_separator == "eos"
        self._state = StreamState()
        self._resume = False

    # -- checkpointing (called by StatefulDataLoader, in the worker that owns the copy) --
    def state_dict(self) -> dict[str, Any]:
        shard, num_shards, _ = _shard_of_this_process(self.rank, self.world_size)
        state = asdict(self._state)  # deep copy: the live carry list keeps changing
        return {
            "version": STATE_VERSION,
            "split": self.split,
            "shard": shard,
            "num_shards": num_shards,
            **state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise DataError(f"unknown data-loader state version {state.get('version')!r}")
        if state["split"] != self.split:
            raise DataError(f"data-loader state is for split '{state['split']}', not '{self.split}'")
        self._saved_shard = (state["shard"], state["num_shards"])
        fields = {k: state[k] for k in ("epoch", "index", "carry", "emitted", "finished")}
        # States saved before skip counting existed have neither field: start from zero.
        skipped = {str(k): int(v) for k, v in (state.get("skipped") or {}).items()}
        counted_to = int(state.get("counted_to", 0))
        self._state = StreamState(
            **{**fields, "carry": list(fields["carry"])}, skipped=skipped, counted_to=counted_to
        )
        self._resume = True  # the next __iter__ continues from here

    def skipped_counts(self) -> dict[str, int]:
        """Reason -> records of this process's shard skipped in the first epoch so far
        (every reason of ``SKIP_REASONS`` present). With loader workers, ask the loader:
        :func:`skipped_counts`."""
        return _with_all_reasons(self._state.skipped)

    # -- iteration ------------------------------------------------------------------------
    def __iter__(self) -> Iterator[torch.Tensor]:
        shard, num_shards, num_workers = _shard_of_this_process(self.rank, self.world_size)
        if self._resume:
            if self._saved_shard != (shard, num_shards):
                raise DataError(
                    f"data-loader state was saved by shard {self._saved_shard[0]} of {self._saved_shard[1]}, "
                    f"but this is shard {shard} of {num_shards}: resume with the same world size and num_workers"
                )
            self._resume = False
        else:
            self._state = StreamState()
        # One SentencePiece thread per worker when several workers share the cores.
        threads = -1 if num_workers == 1 else max(1, (os.cpu_count() or 1) // num_workers)
        return self._stream(self._state, shard, num_shards, threads)

    def _stream(self, st: StreamState, shard: int, num_shards: int, threads: int) -> Iterator[torch.Tensor]:
        block_size = self.shuffle_window or self.encode_batch_size
        while not st.finished:
            from_start = st.index == 0
            docs = self._split_documents(st.index, shard, num_shards)
            saw_documents = False
            while True:
                before = self._source_skips()
                block = list(islice(docs, block_size))  # reads (and skips) records
                self._tally_skips(st, before, block)
                if not block:
                    break
                saw_documents = True
                st.index = block[0][0]  # same block as before on resume: it starts at >= index
                yield from self._emit_block(st, block, shard, threads)
                st.index, st.emitted = block[-1][0] + 1, 0
            if from_start and not saw_documents and self.split == "train":
                # Without this a document-less shard would spin forever. (An empty
                # validation shard just yields nothing; build_loader checks that the
                # validation split as a whole is not empty.)
                raise DataError(
                    f"{self.split} shard {shard} of {num_shards} (rank {self.rank}) has no documents: "
                    f"the source has fewer documents than ranks x workers, or the hold-out leaves none. "
                    f"Source: {self.source.describe()}"
                )
            if self.split == "validation":
                st.finished = True  # the remainder (< raw_length tokens) is dropped
            else:
                st.epoch, st.index = st.epoch + 1, 0

    def _source_skips(self) -> dict[str, int]:
        return dict(getattr(self.source, "skipped", None) or {})

    def _tally_skips(self, st: StreamState, before: dict[str, int], block: list[tuple[int, str]]) -> None:
        """Add what reading ``block`` skipped. The source's own counters may also move for
        other readers (a validation pass, another epoch), but never *during* this
        synchronous read, so the difference is exactly this read's. Counted in the first
        epoch only, and not again for the block a resumed stream re-reads."""
        if st.epoch != 0:
            return
        end = block[-1][0] + 1 if block else None
        if end is not None and end <= st.counted_to:
            return  # re-read after a resume: counted before the checkpoint
        for reason, count in self._source_skips().items():
            delta = count - before.get(reason, 0)
            if delta > 0:
                st.skipped[reason] = st.skipped.get(reason, 0) + delta
        if end is not None:
            st.counted_to = end

    def _split_documents(self, start: int, shard: int, num_shards: int) -> Iterator[tuple[int, str]]:
        want_validation = self.split == "validation"
        for index, text in self.source.documents(start, shard, num_shards):
            if is_validation(index, self.validation_fraction) == want_validation:
                yield index, text

    def _emit_block(
        self, st: StreamState, block: list[tuple[int, str]], shard: int, threads: int
    ) -> Iterator[torch.Tensor]:
        """Tokenise one block and yield its chunks, skipping the ``st.emitted`` already
        yielded before a checkpoint. ``st.carry`` stays the block's incoming carry until
        the block is done, so the state is valid at every yield."""
        texts = [text for _, text in block]
        if self.shuffle_window:
            order = np.random.default_rng([self.seed, st.epoch, shard, block[0][0]]).permutation(len(texts))
            texts = [texts[i] for i in order]
        packer = Packer(self.raw_length, st.carry)
        produced = 0
        for batch in _batched(texts, self.encode_batch_size):
            for ids in self._encode(batch, threads):
                packer.add(ids)
            for chunk in packer.take_chunks():
                produced += 1
                if produced > st.emitted:
                    st.emitted = produced
                    yield torch.tensor(chunk, dtype=torch.long)
        st.carry = packer.carry

    def _encode(self, docs: list[Any], threads: int) -> list[list[int]]:
        """Ids of each document, + EOS unless ``document_separator`` is ``none`` (T5's
        ``reduce_concat_tokens`` joins documents with nothing between them): text is
        encoded in one batched call; a document that already is ids (a ``pretokenized``
        source's numpy array or list) is taken as it is."""
        texts = [d for d in docs if isinstance(d, str)]
        if len(texts) == len(docs):
            return self.tokenizer.encode_batch(docs, add_eos=self.add_eos, num_threads=threads)
        encoded = iter(
            self.tokenizer.encode_batch(texts, add_eos=self.add_eos, num_threads=threads) if texts else ()
        )
        eos = [self.tokenizer.eos_id] if self.add_eos else []
        return [
            next(encoded) if isinstance(d, str) else (d.tolist() if hasattr(d, "tolist") else list(d)) + eos
            for d in docs
        ]


# --------------------------------------------------------------------------- loader


def _check_validation_documents(source: Source, fraction: float, probe: int = 100_000) -> None:
    """Fail fast if the hold-out of a small corpus is empty. Stops at the first held-out
    document, so on a large corpus this reads about 1/fraction documents."""
    with probing(source):
        for n, (index, _) in enumerate(source.documents()):
            if is_validation(index, fraction) or n >= probe:
                return  # found one, or so many documents that the split cannot be empty
    raise DataError(
        f"the validation split is empty: no document of {source.describe()} falls in the "
        f"{fraction:.2%} hold-out; raise validation_fraction or add documents"
    )


def _with_all_reasons(counts: dict[str, int]) -> dict[str, int]:
    out = dict.fromkeys(SKIP_REASONS, 0)
    for reason, count in counts.items():
        out[reason] = out.get(reason, 0) + int(count)
    return out


def _dataset_states(loader_state: dict[str, Any]) -> list[dict[str, Any]]:
    """The dataset states inside a ``StatefulDataLoader.state_dict()``: one without
    workers, one per worker (the latest snapshot each sent) with them."""
    if isinstance(loader_state.get("dataset_state"), dict):
        return [loader_state["dataset_state"]]
    snapshots = (loader_state.get("_snapshot") or {}).get("_worker_snapshots") or {}
    states = [w.get("dataset_state") for w in snapshots.values() if isinstance(w, dict)]
    return [s for s in states if isinstance(s, dict)]


def skipped_counts(loader: StatefulDataLoader) -> dict[str, int]:
    """Reason -> records skipped so far by ``loader``'s reads (its first epoch), summed
    over its workers; every reason of ``SKIP_REASONS`` is present, zeros included.

    With workers, each worker's counts arrive with its state snapshots, so they lag by
    the batches in flight (and by ``snapshot_every_n_steps`` if that is > 1). The counts
    are this rank's: sum them over ranks (in the order of ``SKIP_REASONS``) for the run's.
    """
    own = getattr(loader, "skipped_counts", None)  # a loader of another backend counts itself
    if callable(own):
        return own()
    if loader.num_workers == 0 and isinstance(loader.dataset, PackedChunks):
        return loader.dataset.skipped_counts()
    totals = _with_all_reasons({})
    for state in _dataset_states(loader.state_dict()):
        for reason, count in (state.get("skipped") or {}).items():
            totals[reason] = totals.get(reason, 0) + int(count)
    return totals


def collate_chunks(chunks: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"original": torch.stack(chunks)}


def build_loader(
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
    **loader_kwargs: Any,
) -> StatefulDataLoader:
    """A checkpointable loader of ``{"original": LongTensor (batch_size, raw_length)}``.

    ``num_workers=0`` tokenises in the training process (SentencePiece uses all cores
    for each encode batch); ``num_workers > 0`` moves that into worker processes, and
    ``state_dict()`` still resumes exactly (same ``num_workers`` required). Extra
    keyword arguments go to ``StatefulDataLoader`` (``pin_memory``,
    ``persistent_workers``, ``snapshot_every_n_steps``, ...). Validation batches keep
    the last partial batch; train batches are always full.
    """
    dataset = PackedChunks(
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
    # Fail here, with a clear message, rather than inside a worker or never.
    first_document(source)
    if split == "validation":
        _check_validation_documents(source, validation_fraction)
    return StatefulDataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_chunks,
        drop_last=split == "train",
        **loader_kwargs,
    )
