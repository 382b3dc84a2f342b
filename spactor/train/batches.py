"""The runner's view of the data: tokenizer, train/validation loaders on this rank,
device transfer, and the loader state that goes into checkpoints."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from spactor.config import DataConfig, Resolved
from spactor.data.builtin_tokenizer import builtin_tokenizer
from spactor.data.loader import build_loader
from spactor.data.loader import skipped_counts as loader_skipped_counts
from spactor.data.sources import SKIP_REASONS, DataError, Source
from spactor.data.tokenizer import Tokenizer, VocabularyTooLarge
from spactor.objectives.base import Batch, Vocab
from spactor.registry import SOURCES

CUDA_DEFAULT_WORKERS = 2  # loader processes per rank when data.num_workers is unset on CUDA
# A host batch -> the device batch and a call that makes the current stream wait for it.
Copy = Callable[[dict[str, torch.Tensor]], tuple[Batch, Callable[[], None]]]


def build_source(cfg: DataConfig) -> Source:
    """Fill the source's config from ``data.*`` fields of the same name (``paths``,
    ``text_field``) and from ``data.source_options`` for anything else."""
    entry = SOURCES.get(cfg.source)
    fields = {f.name for f in dataclasses.fields(entry.config_cls)}
    kwargs: dict[str, Any] = {name: getattr(cfg, name) for name in fields if hasattr(cfg, name)}
    unknown = sorted(set(cfg.source_options) - fields)
    if unknown:
        raise DataError(
            f"data.source_options: source '{cfg.source}' has no option {unknown[0]!r}; valid: {', '.join(sorted(fields))}"
        )
    kwargs.update(cfg.source_options)
    return entry.factory(entry.config_cls(**kwargs))


def load_tokenizer(cfg: DataConfig) -> Tokenizer:
    if cfg.tokenizer:
        path = Path(cfg.tokenizer).expanduser()
        if not path.is_file():
            raise DataError(f"data.tokenizer: no such file '{cfg.tokenizer}'")
        try:
            return Tokenizer.load(path)
        except (OSError, ValueError) as e:
            raise DataError(f"data.tokenizer: {e}") from None
    builtin_ok = getattr(SOURCES.get(cfg.source).config_cls, "uses_builtin_tokenizer", False)
    if cfg.source != "builtin" and not builtin_ok:  # site_docs: Python documentation too
        raise DataError(
            f"data.tokenizer is required for data.source={cfg.source}: pass a SentencePiece .model "
            "(T5's spiece.model, or one made with `spactor tokenizer train`)"
        )
    return builtin_tokenizer(cfg.tokenizer_vocab_size)


class DataPipeline:
    def __init__(self, cfg: DataConfig, tokenizer: Tokenizer, source: Source, device: torch.device, seed: int):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.source = source
        self.device = device
        self.seed = seed
        self.vocab: Vocab = tokenizer.vocab()
        self.rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.raw_length = 0
        self.batch_size = 0
        self._train: Any = None
        self._consumed_state: Any = None  # the loader's state after the batches handed out
        self._val_skipped: dict[str, int] = {}

    def start(self, raw_length: int, batch_size: int) -> None:
        """Open the train loader once the objectives have said how long a raw chunk is.
        ``batch_size`` is the global batch; each rank loads its share."""
        if batch_size % self.world_size:
            raise ValueError(f"trainer.batch_size={batch_size} does not divide over {self.world_size} ranks")
        self.raw_length = raw_length
        self.batch_size = batch_size // self.world_size
        self._train = self._loader("train", self.batch_size, self.num_workers)

    @property
    def num_workers(self) -> int:
        """``data.num_workers``; unset: loader workers on CUDA (tokenisation off the
        training process), none elsewhere."""
        if self.cfg.num_workers is not None:
            return self.cfg.num_workers
        return CUDA_DEFAULT_WORKERS if self.device.type == "cuda" else 0

    def _loader(self, split: str, batch_size: int, num_workers: int) -> Any:
        # A loader of its own generator: DataLoader draws a base seed whenever an iterator
        # is created, and from the global RNG that would shift dropout after an eval or a
        # resume.
        generator = torch.Generator().manual_seed(self.seed)
        build: Any = build_loader
        if getattr(self.cfg, "backend", "default") == "fairseq2":  # same batches, a fairseq2 DataPipeline
            from spactor.data.fairseq2_backend import build_fairseq2_loader as build
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*set_vital.*")
            return build(
                self.source,
                self.tokenizer,
                self.raw_length,
                batch_size,
                split=split,
                validation_fraction=self.cfg.validation_fraction,
                rank=self.rank,
                world_size=self.world_size,
                seed=self.seed,
                num_workers=num_workers,
                document_separator=getattr(self.cfg, "document_separator", "eos"),
                generator=generator,
                pin_memory=self.device.type == "cuda",  # page-locked: asynchronous copies to the GPU
            )

    def train_batches(self, prefetch: bool | None = None) -> Iterator[Batch]:
        """This rank's training batches on the device. ``prefetch`` (default: on CUDA)
        fetches and copies batch i+1 before handing out batch i (see :meth:`_prefetched`)."""
        if prefetch is None:
            prefetch = self.device.type == "cuda"
        if not prefetch:
            for batch in self._train:
                yield self._to_device(batch)
            return
        copy = self._copy_on_side_stream() if self.device.type == "cuda" else self._copy_now
        yield from self._prefetched(iter(self._train), copy)

    def _prefetched(self, batches: Iterator[dict[str, torch.Tensor]], copy: Copy) -> Iterator[Batch]:
        """Batch i+1 is fetched and its copy to the device started before batch i is
        handed out, so on CUDA the copy overlaps step i. The loader so runs one batch
        ahead: :meth:`state_dict` returns its state from before that fetch, i.e. after
        the batches handed out, and a checkpoint resumes exactly."""

        def fetch() -> tuple[tuple[Batch, Callable[[], None]] | None, Any]:
            state = self._train.state_dict()
            try:
                return copy(next(batches)), state
            except StopIteration:
                return None, state

        pending, _ = fetch()
        while pending is not None:
            following, state_after = fetch()
            batch, ready = pending
            ready()
            self._consumed_state = state_after
            yield batch
            pending = following

    def _copy_now(self, host: dict[str, torch.Tensor]) -> tuple[Batch, Callable[[], None]]:
        return self._to_device(host), lambda: None

    def _copy_on_side_stream(self) -> Copy:
        stream = torch.cuda.Stream(self.device)

        def copy(host: dict[str, torch.Tensor]) -> tuple[Batch, Callable[[], None]]:
            with torch.cuda.stream(stream):
                batch = {k: (v if v.is_pinned() else v.pin_memory()).to(self.device, non_blocking=True)
                         for k, v in host.items()}
                copied = torch.cuda.Event()
                copied.record(stream)

            def ready() -> None:
                current = torch.cuda.current_stream(self.device)
                current.wait_event(copied)
                for value in batch.values():
                    value.record_stream(current)  # allocated on the side stream, used on this one

            return batch, ready

        return copy

    def validation_batches(self) -> Iterator[Batch]:
        """A fresh pass over this rank's validation split (the same batches every time).
        What the pass skipped so far is kept for :meth:`skipped_counts` (``val/...``)."""
        loader = self._loader("validation", self.batch_size, 0)
        for batch in loader:
            self._val_skipped = loader_skipped_counts(loader)
            yield self._to_device(batch)
        self._val_skipped = loader_skipped_counts(loader)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> Batch:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def skipped_counts(self) -> dict[str, int]:
        """Records the sources skipped (bad JSON, invalid UTF-8, ...): reason -> count for
        the train stream, ``val/<reason>`` -> count for the latest validation pass. Every
        rank reads the whole stream, so a rank's counts are the run's."""
        counts = dict(loader_skipped_counts(self._train))
        if getattr(self.cfg, "backend", "default") == "fairseq2" and self.world_size > 1:
            # that backend still shards documents by rank: add the ranks' counts up
            totals = torch.tensor([counts.get(r, 0) for r in SKIP_REASONS], dtype=torch.float64, device=self.device)
            dist.all_reduce(totals)
            counts = {r: int(v) for r, v in zip(SKIP_REASONS, totals.tolist())}
        counts.update({f"val/{k}": v for k, v in self._val_skipped.items()})
        return counts

    @property
    def has_validation(self) -> bool:
        return self.cfg.validation_fraction > 0

    def state_dict(self) -> dict[str, Any]:
        if self._consumed_state is not None:  # prefetching: the loader is one batch ahead
            return self._consumed_state
        return self._train.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._consumed_state = None
        self._train.load_state_dict(state)


def local_state_of_rank0(checkpoint: Path) -> dict[str, Any]:
    """What rank 0 saved beside ``checkpoint``'s weights. Its loader state is a position
    in the global stream, valid on any number of ranks (with the same
    ``data.num_workers``); empty if the file is absent."""
    path = Path(checkpoint) / "local_rank00000.pt"
    return torch.load(path, weights_only=False) if path.is_file() else {}


def build_data(resolved: Resolved, device: torch.device, run_dir: Path | None) -> DataPipeline:
    cfg = resolved.cfg.data
    tokenizer = load_tokenizer(cfg)
    source = build_source(cfg)
    if run_dir is not None:
        tokenizer.save(run_dir / "spiece.model")  # the run directory is self-contained
    return DataPipeline(cfg, tokenizer, source, device, seed=resolved.cfg.trainer.seed)


def train_tokenizer_from_config(resolved: Resolved, out: Path, vocab_size: int) -> Path:
    source = build_source(resolved.cfg.data)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        Tokenizer.train(iter(source), out, vocab_size=vocab_size)
    except VocabularyTooLarge as e:
        raise DataError(
            f"--vocab-size {e.requested}: {source.describe()} supports at most {e.maximum} pieces; "
            f"pass --vocab-size {e.maximum} or less, or train on more text"
        ) from None
    return out
