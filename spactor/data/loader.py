"""A resumable loader of packed raw chunks.

documents (``Source``) → train/validation hold-out →
optional shuffle within a window of documents → SentencePiece ids + EOS (batched; a
``pretokenized`` source such as a prepared cache yields ids, packed as they are) →
one token stream cut into ``raw_length`` chunks → global batches of consecutive chunks,
of which each rank keeps its rows → batches ``{"original": (B, raw_length)}``.

Everything is a pure function of the document numbering, so the position in the stream
is four small numbers (epoch, first document of the current block, tokens carried into
that block, chunks already emitted from it) and the shuffle RNG is keyed by those, not
stored. A checkpoint stays small (no token buffers beyond < ``raw_length`` ids);
restoring re-reads the source up to the saved document (JSON lines are skipped without
being parsed, but gzip must still be decompressed) and re-tokenises at most one block.
``torchdata``'s ``StatefulDataLoader`` collects this state from every worker, so
``loader.state_dict()`` / ``loader.load_state_dict()`` resume the exact same batches.

Ranks and workers: there is one stream, whatever the world size. Chunk ``c`` of it is row
``c % G`` of global batch ``c // G`` (``G`` = the global batch size); rank ``r`` keeps
rows ``[r*B, (r+1)*B)`` of each global batch (``B = G / world_size``, the block the
runner's step treats as rank ``r``'s), and loader worker ``w`` of ``n`` makes the global
batches ``k`` with ``k % n == w``. So the documents of global batch ``k`` depend on the
seed and ``k`` only: a 2-rank run trains on the batches a 1-rank run does, and data
workers change nothing but speed. Every process tokenises the whole split to know where
the chunks fall (cheap with a prepared, pretokenized source). The state is a position
in that stream (plus chunk count), the same kind on every rank, so a run resumes on
another number of ranks at the next global batch; the number of workers and the global
batch size must stay the same (else ``DataError``).

Skipped records (bad JSON, invalid bytes, over-long documents, empty or damaged files:
``spactor.data.sources``) are tallied in the stream state during the first epoch, so
each bad record counts once however many epochs and evaluations re-read it, and the
counts travel with ``state_dict()`` (a resumed run keeps them). Every rank and worker
reads the whole stream, so each counts every skip: :func:`skipped_counts` takes the
worker furthest along, and a rank's counts are the run's.
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
STATE_VERSION = 2  # 1: documents sharded by rank and worker
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
    """Where the stream stands, after the last chunk this process yielded."""

    epoch: int = 0
    index: int = 0  # first document of the current block (or of the next one)
    carry: list[int] = field(default_factory=list)  # tokens carried into that block
    emitted: int = 0  # chunks already yielded from carry + the block's tokens
    finished: bool = False  # validation: the single pass is over
    skipped: dict[str, int] = field(default_factory=dict)  # first epoch's skipped records, by reason
    counted_to: int = 0  # skips of records with index < counted_to are in ``skipped``
    chunks: int = 0  # chunks of the whole stream produced so far (kept here or not): the global position


def _from_version_1(state: dict[str, Any], global_batch: int) -> dict[str, Any]:
    """A state of the rank-sharded stream (version 1). With one shard that stream was
    this one, so it continues (its chunk count is unknown, which only a change of layout
    would need); with several it cannot."""
    if state.get("num_shards") != 1:
        raise DataError(
            "the data-loader state was saved by an older spactor that sharded documents over "
            f"{state.get('num_shards')} ranks x workers; it cannot continue the world-size-independent stream"
        )
    return {**state, "version": STATE_VERSION, "global_batch": global_batch, "worker": 0, "num_workers": 1,
            "chunks": 0}


def _batched(items: Iterable[T], n: int) -> Iterator[list[T]]:
    it = iter(items)
    while batch := list(islice(it, n)):
        yield batch


def tokenizer_threads(num_workers: int) -> int:
    """SentencePiece threads for one tokenising process: the node's cores shared by every
    one on it, this rank's ``num_workers`` times the ranks torchrun started on the node
    (``LOCAL_WORLD_SIZE``); -1 (all cores) when it is the only one."""
    try:
        local_ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local_ranks = 1
    processes = max(1, num_workers) * local_ranks
    return -1 if processes == 1 else max(1, (os.cpu_count() or 1) // processes)


def _worker_of_this_process() -> tuple[int, int]:
    """(worker id, workers per rank) for the calling process."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


@dataclass(frozen=True)
class Rows:
    """Which chunks of the one global stream this process yields: chunk ``c`` is row
    ``c % global_batch`` of global batch ``c // global_batch``; a rank keeps rows
    ``[start, stop)`` of every global batch, and worker ``w`` of ``n`` the global
    batches ``k`` with ``k % n == w`` (the loader takes one batch from each worker in
    turn, so batches arrive in order)."""

    global_batch: int
    start: int
    stop: int
    worker: int = 0
    num_workers: int = 1

    def keeps(self, chunk: int) -> bool:
        batch, row = divmod(chunk, self.global_batch)
        return self.start <= row < self.stop and batch % self.num_workers == self.worker


# --------------------------------------------------------------------------- dataset


class PackedChunks(IterableDataset):
    """Yields ``raw_length``-token ``LongTensor`` chunks of one split of ``source``.

    ``train`` loops over epochs forever; each epoch re-reads the split's documents (in a
    new shuffled order when ``shuffle_window`` > 0) and the token stream runs on across
    the epoch boundary. ``validation`` makes one pass and drops the final partial chunk.
    A train split with no documents is a ``DataError`` (it would otherwise spin); a rank
    whose rows lie past the end of a short validation split yields nothing.

    ``shuffle_window`` (train only): documents are read in blocks of this many and
    permuted within the block with an RNG keyed by (seed, epoch, block), so the
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
        batch_size: int = 1,
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
        if raw_length < 1 or encode_batch_size < 1 or shuffle_window < 0 or batch_size < 1:
            raise ValueError("raw_length, encode_batch_size and batch_size must be >= 1, shuffle_window >= 0")
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
        self.batch_size = batch_size  # this rank's rows of each global batch
        self.global_batch = batch_size * world_size
        self._state = StreamState()
        self._resume = False
        self._first_kept = 0  # after a resume: the first chunk of the next global batch

    # -- checkpointing (called by StatefulDataLoader, in the worker that owns the copy) --
    def state_dict(self) -> dict[str, Any]:
        """The position in the global stream: the same kind of state on every rank, so
        a run can resume on another number of ranks (the next global batch is the
        first one after ``chunks``). Workers each hold their own position."""
        worker, num_workers = _worker_of_this_process()
        state = asdict(self._state)  # deep copy: the live carry list keeps changing
        return {
            "version": STATE_VERSION,
            "split": self.split,
            "global_batch": self.global_batch,
            "worker": worker,
            "num_workers": num_workers,
            **state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") == 1:
            state = _from_version_1(state, self.global_batch)
        if state.get("version") != STATE_VERSION:
            raise DataError(f"unknown data-loader state version {state.get('version')!r}")
        if state["split"] != self.split:
            raise DataError(f"data-loader state is for split '{state['split']}', not '{self.split}'")
        if int(state["global_batch"]) != self.global_batch:
            raise DataError(
                f"the data-loader state is for global batches of {state['global_batch']} sequences, "
                f"not {self.global_batch}: resume with the same trainer.batch_size"
            )
        self._saved_worker = (int(state["worker"]), int(state["num_workers"]))
        fields = {k: state[k] for k in ("epoch", "index", "carry", "emitted", "finished")}
        skipped = {str(k): int(v) for k, v in (state.get("skipped") or {}).items()}
        chunks = int(state["chunks"])
        self._state = StreamState(
            **{**fields, "carry": list(fields["carry"])}, skipped=skipped,
            counted_to=int(state.get("counted_to", 0)), chunks=chunks,
        )
        # Whatever rows the saving process kept, global batches up to the one holding
        # its last chunk are consumed: continue with the next whole one.
        self._first_kept = -(-chunks // self.global_batch) * self.global_batch
        self._resume = True  # the next __iter__ continues from here

    def skipped_counts(self) -> dict[str, int]:
        """Reason -> records of the stream skipped in the first epoch so far
        (every reason of ``SKIP_REASONS`` present). With loader workers, ask the loader:
        :func:`skipped_counts`."""
        return _with_all_reasons(self._state.skipped)

    # -- iteration ------------------------------------------------------------------------
    def __iter__(self) -> Iterator[torch.Tensor]:
        worker, num_workers = _worker_of_this_process()
        if self._resume:
            if self._saved_worker[1] != num_workers:
                raise DataError(
                    f"data-loader state was saved with {self._saved_worker[1]} loader worker(s), "
                    f"this loader has {num_workers}: resume with the same data.num_workers"
                )
            self._resume = False
        else:
            self._state = StreamState()
            self._first_kept = 0
        rows = Rows(self.global_batch, self.rank * self.batch_size, (self.rank + 1) * self.batch_size,
                    worker, num_workers)
        return self._stream(self._state, rows, tokenizer_threads(num_workers))

    def _stream(self, st: StreamState, rows: Rows, threads: int) -> Iterator[torch.Tensor]:
        # Every rank and worker reads, tokenises and packs the whole split, so that the
        # chunks (and the documents in them) of global batch k depend on the seed and k
        # only; each keeps its rows of its batches. Tokenising is repeated per process:
        # a prepared (pretokenized) source makes that cheap at scale.
        block_size = self.shuffle_window or self.encode_batch_size
        while not st.finished:
            from_start = st.index == 0
            docs = self._split_documents(st.index)
            saw_documents = False
            while True:
                before = self._source_skips()
                block = list(islice(docs, block_size))  # reads (and skips) records
                self._tally_skips(st, before, block)
                if not block:
                    break
                saw_documents = True
                st.index = block[0][0]  # same block as before on resume: it starts at >= index
                yield from self._emit_block(st, block, rows, threads)
                st.index, st.emitted = block[-1][0] + 1, 0
            if from_start and not saw_documents and self.split == "train":
                # Without this a document-less split would spin forever (build_loader
                # checks the validation split the same way).
                raise DataError(
                    f"the {self.split} split has no documents: the hold-out leaves none. "
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

    def _split_documents(self, start: int) -> Iterator[tuple[int, str]]:
        want_validation = self.split == "validation"
        for index, text in self.source.documents(start, 0, 1):
            if is_validation(index, self.validation_fraction) == want_validation:
                yield index, text

    def _emit_block(
        self, st: StreamState, block: list[tuple[int, str]], rows: Rows, threads: int
    ) -> Iterator[torch.Tensor]:
        """Tokenise one block and yield this process's chunks of it, skipping the
        ``st.emitted`` produced before a checkpoint. ``st.carry`` stays the block's
        incoming carry until the block is done, so the state is valid at every yield."""
        texts = [text for _, text in block]
        if self.shuffle_window:
            # Keyed like this since before the stream was global (then per shard; shard 0
            # of 1 is the whole stream), so one-process runs keep their order.
            order = np.random.default_rng([self.seed, st.epoch, 0, block[0][0]]).permutation(len(texts))
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
                    index, st.chunks = st.chunks, st.chunks + 1
                    if index >= self._first_kept and rows.keeps(index):
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
    """Reason -> records skipped so far by ``loader``'s reads (its first epoch); every
    reason of ``SKIP_REASONS`` is present, zeros included.

    With workers, each worker's counts arrive with its state snapshots, so they lag by
    the batches in flight (and by ``snapshot_every_n_steps`` if that is > 1). Every rank
    reads the whole stream, so these are the run's counts (not to be summed over ranks).
    """
    own = getattr(loader, "skipped_counts", None)  # a loader of another backend counts itself
    if callable(own):
        return own()
    if loader.num_workers == 0 and isinstance(loader.dataset, PackedChunks):
        return loader.dataset.skipped_counts()
    # Every worker reads the whole stream: the one furthest along has seen the most.
    states = _dataset_states(loader.state_dict())
    furthest = max(states, key=lambda st: int(st.get("counted_to", 0)), default={})
    return _with_all_reasons(dict(furthest.get("skipped") or {}))


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
        batch_size=batch_size,
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
