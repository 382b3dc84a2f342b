"""Pre-tokenised caches: tokenise a source once, train from memory-mapped token ids.

``prepare(source, tokenizer, out_dir)`` reads every document of ``source`` once (the
same documents, skips and numbering a training run would see), tokenises them in
batches and writes a directory::

    tokens.bin   every document's ids back to back, no EOS (the loader adds it);
                 uint16 when the tokenizer has at most 65,536 pieces, else uint32
    index.npy    int64 offsets, one per document plus one: document i is
                 tokens[index[i]:index[i + 1]]
    doc_ids.npy  int64: the number the source gave each document (its position in the
                 source, records skipped while reading included)
    meta.json    format version, dtype, counts (documents, records, tokens, skipped by
                 reason), the source's description and the tokenizer's fingerprint
                 (sha256 of its SentencePiece model proto)
    spiece.model the tokenizer itself, so a run can point data.tokenizer at the cache

The directory is written under a temporary name beside ``out_dir`` and renamed into
place when complete, so a cache that exists is whole.

The ``prepared`` source reads such directories. It yields the stored ids (numpy arrays)
instead of text, numbered with the original source's document numbers, so the loader's
hold-out, sharding, shuffle and resume see exactly what they would see on the raw
source: a train loader over the cache gives the same chunks as one over the raw
files, for the same seed, without tokenising anything. A cache made with another
tokenizer holds other ids; the loader refuses it (``check_tokenizer``).
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from spactor.data.sources import DataError, Source
from spactor.data.tokenizer import Tokenizer
from spactor.registry import SOURCES

FORMAT = "spactor-prepared"
FORMAT_VERSION = 1
TOKENS_FILE = "tokens.bin"
INDEX_FILE = "index.npy"
DOC_IDS_FILE = "doc_ids.npy"
META_FILE = "meta.json"
TOKENIZER_FILE = "spiece.model"
UINT16_MAX_PIECES = 1 << 16
# Index entries read at a time when selecting a shard's documents (bounded memory on
# caches of hundreds of millions of documents).
_SELECT_CHUNK = 1 << 16


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """sha256 of the SentencePiece model proto: equal fingerprints, equal ids."""
    return hashlib.sha256(tokenizer.model_proto).hexdigest()


def token_dtype(num_pieces: int) -> np.dtype[Any]:
    """uint16 while every piece id fits (ids < num_pieces), else uint32."""
    return np.dtype(np.uint16 if num_pieces <= UINT16_MAX_PIECES else np.uint32)


# --------------------------------------------------------------------------- writing


@dataclass
class PrepareStats:
    out_dir: Path
    documents: int
    records: int
    tokens: int
    skipped: dict[str, int]
    dtype: str
    seconds: float

    @property
    def docs_per_s(self) -> float:
        return self.documents / self.seconds if self.seconds > 0 else float("inf")

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")


class _Appender:
    """Appends blocks of one dtype to a raw file through a memory map of the new part
    (the file grows by each block; nothing else is held in memory)."""

    def __init__(self, path: Path, dtype: np.dtype[Any]) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.count = 0
        path.write_bytes(b"")

    def append(self, values: np.ndarray) -> None:
        n = len(values)
        if n == 0:
            return
        size = self.dtype.itemsize
        with open(self.path, "r+b") as f:
            f.truncate((self.count + n) * size)
        window = np.memmap(self.path, dtype=self.dtype, mode="r+", offset=self.count * size, shape=(n,))
        window[:] = values
        window.flush()
        del window
        self.count += n


def _raw_to_npy(raw: Path, out: Path, dtype: np.dtype[Any], count: int, first: int | None = None) -> None:
    """Copy a raw array file into a ``.npy`` (optionally prefixed with ``first``), in
    blocks, then delete the raw file."""
    total = count + (first is not None)
    dest = np.lib.format.open_memmap(out, mode="w+", dtype=dtype, shape=(total,))
    at = 0
    if first is not None:
        dest[0] = first
        at = 1
    if count:
        src = np.memmap(raw, dtype=dtype, mode="r", shape=(count,))
        for lo in range(0, count, 1 << 22):
            hi = min(count, lo + (1 << 22))
            dest[at + lo : at + hi] = src[lo:hi]
        del src
    dest.flush()
    del dest
    raw.unlink()


def _chmod_like_umask(directory: Path) -> None:
    """mkdtemp/mkstemp create private (0700/0600) entries; a cache is ordinary data."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(directory, 0o777 & ~mask)
    for path in directory.iterdir():
        os.chmod(path, 0o666 & ~mask)


def _fsync_dir_files(directory: Path) -> None:
    for path in directory.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


class PrepareProgress:
    """Counts on stderr while a cache is written: documents read, records skipped (by
    reason), tokens written, documents per second. Redrawn in a terminal, a line every
    ``every`` seconds otherwise."""

    def __init__(
        self, enabled: bool = True, stream: TextIO | None = None, every: float | None = None
    ) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every if every is not None else (0.5 if self.tty else 10.0)
        self.start = time.monotonic()
        self._last = self.start

    def __call__(self, documents: int, tokens: int, skipped: dict[str, int], final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self._last < self.every:
            return
        self._last = now
        elapsed = now - self.start
        rate = documents / elapsed if elapsed > 0 else 0.0
        nonzero = {k: v for k, v in skipped.items() if v}
        skips = ", ".join(f"{k}={v:,}" for k, v in nonzero.items()) if nonzero else "0"
        line = (
            f"prepare: {documents:,} documents, skipped {skips}, {tokens:,} tokens written, "
            f"{rate:,.0f} docs/s, {elapsed:.1f}s"
        )
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


ProgressFn = Callable[..., None]


def prepare(
    source: Source,
    tokenizer: Tokenizer,
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    block_documents: int = 4096,
    num_threads: int = -1,
    progress: bool | ProgressFn = False,
    source_config: dict[str, Any] | None = None,
) -> PrepareStats:
    """Tokenise every document of ``source`` into a cache directory at ``out_dir``.

    ``block_documents`` documents are encoded per SentencePiece call (on
    ``num_threads`` threads; -1: all cores) and appended to the files; memory stays at
    one block. ``progress``: True for counts on stderr, or a callable
    ``(documents, tokens, skipped, final=False)``. ``source_config`` (e.g. the
    ``data`` section of the run) is recorded in ``meta.json``. An existing ``out_dir``
    is an error unless ``overwrite``.
    """
    out = Path(out_dir).expanduser()
    if block_documents < 1:
        raise ValueError(f"block_documents must be >= 1, got {block_documents}")
    if out.exists() and not overwrite:
        raise DataError(f"{out} already exists; remove it or overwrite it (spactor data prepare --force)")
    report: ProgressFn | None
    if callable(progress):
        report = progress
    else:
        report = PrepareProgress() if progress else None
    if getattr(source, "pretokenized", False):
        source.check_tokenizer(tokenizer)  # type: ignore[attr-defined]

    dtype = token_dtype(tokenizer.num_pieces)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    start = time.monotonic()
    skipped_before = dict(source.skipped)
    try:
        tokens = _Appender(tmp / TOKENS_FILE, dtype)
        ends = _Appender(tmp / (INDEX_FILE + ".raw"), np.dtype(np.int64))
        doc_ids = _Appender(tmp / (DOC_IDS_FILE + ".raw"), np.dtype(np.int64))
        documents = 0
        total = 0
        last_index = -1
        block: list[tuple[int, Any]] = []

        def flush() -> None:
            nonlocal documents, total
            if not block:
                return
            ids = _encode_block([doc for _, doc in block], tokenizer, num_threads)
            lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
            count = int(lengths.sum())
            flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=count)
            if count and (flat.min() < 0 or flat.max() > np.iinfo(dtype).max):
                raise DataError(f"token ids out of range for {dtype.name}")
            tokens.append(flat.astype(dtype))
            ends.append(total + np.cumsum(lengths))
            doc_ids.append(np.fromiter((i for i, _ in block), dtype=np.int64, count=len(block)))
            documents += len(block)
            total += count
            block.clear()

        for index, doc in source.documents():
            block.append((index, doc))
            last_index = index
            if len(block) >= block_documents:
                flush()
                if report is not None:
                    report(documents, total, _skips_since(source, skipped_before))
        flush()
        skipped = _skips_since(source, skipped_before)
        if report is not None:
            report(documents, total, skipped, final=True)
        if documents == 0:
            raise DataError(f"nothing to prepare: the source has no usable documents: {source.describe()}")

        _raw_to_npy(tmp / (INDEX_FILE + ".raw"), tmp / INDEX_FILE, np.dtype(np.int64), ends.count, first=0)
        _raw_to_npy(tmp / (DOC_IDS_FILE + ".raw"), tmp / DOC_IDS_FILE, np.dtype(np.int64), doc_ids.count)
        tokenizer.save(tmp / TOKENIZER_FILE)
        seconds = time.monotonic() - start
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "dtype": dtype.name,
            "documents": documents,
            "records": last_index + 1,
            "tokens": total,
            "skipped": skipped,
            "source": {
                "type": getattr(source, "name", type(source).__name__),
                "description": source.describe(),
                **({"config": source_config} if source_config is not None else {}),
            },
            "tokenizer": {
                "sha256": tokenizer_fingerprint(tokenizer),
                "name": tokenizer.name,
                "num_pieces": tokenizer.num_pieces,
                "vocab_size": tokenizer.vocab_size,
                "eos_id": tokenizer.eos_id,
            },
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(seconds, 3),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _fsync_dir_files(tmp)
        _chmod_like_umask(tmp)
        _install(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PrepareStats(out, documents, last_index + 1, total, skipped, dtype.name, seconds)


def _encode_block(docs: Sequence[Any], tokenizer: Tokenizer, num_threads: int) -> list[Any]:
    """Ids of each document without EOS: text is encoded in one batched call, documents
    that already are ids (a mixture with a prepared part) pass through."""
    texts = [d for d in docs if isinstance(d, str)]
    encoded = iter(tokenizer.encode_batch(texts, num_threads=num_threads)) if texts else iter(())
    return [next(encoded) if isinstance(d, str) else np.asarray(d) for d in docs]


def _skips_since(source: Source, before: dict[str, int]) -> dict[str, int]:
    now = dict(source.skipped)
    return {k: v - before.get(k, 0) for k, v in now.items() if v - before.get(k, 0) > 0}


def _install(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished temp directory to ``out`` (replacing an old cache only when
    asked, and only once the new one is complete)."""
    if out.exists():
        if not overwrite:
            raise DataError(f"{out} appeared while preparing; not replacing it")
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, old / "cache")
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


# --------------------------------------------------------------------------- reading


def read_meta(directory: Path) -> dict[str, Any]:
    """``meta.json`` of a cache, checked for format, version and complete files."""
    meta_path = directory / META_FILE
    if not directory.is_dir():
        raise DataError(
            f"source 'prepared': no such directory: {directory} (make one with `spactor data prepare`)"
        )
    if not meta_path.is_file():
        raise DataError(
            f"source 'prepared': {directory} is not a prepared cache (no {META_FILE}; make one with "
            "`spactor data prepare ... --out DIR`)"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DataError(f"source 'prepared': {meta_path} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"source 'prepared': {meta_path} is not a spactor prepared-cache description")
    if meta.get("version") != FORMAT_VERSION:
        raise DataError(
            f"source 'prepared': {directory} has format version {meta.get('version')!r}; this spactor reads "
            f"version {FORMAT_VERSION}: prepare it again"
        )
    dtype = np.dtype(meta["dtype"])
    expected = int(meta["tokens"]) * dtype.itemsize
    tokens = directory / TOKENS_FILE
    if not tokens.is_file() or tokens.stat().st_size != expected:
        size = tokens.stat().st_size if tokens.is_file() else "missing"
        raise DataError(
            f"source 'prepared': {tokens} is damaged ({size} bytes, meta.json says {expected}); prepare it again"
        )
    return meta


@dataclass
class _Part:
    """One cache directory, its memory maps opened on first use (and never pickled)."""

    directory: Path
    meta: dict[str, Any]
    base: int  # added to the stored document numbers (the records of earlier parts)
    _maps: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def documents(self) -> int:
        return int(self.meta["documents"])

    def maps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tokens, offsets, document numbers), memory-mapped."""
        if self._maps is None:
            d = self.directory
            tokens = np.memmap(d / TOKENS_FILE, dtype=np.dtype(self.meta["dtype"]), mode="r")
            offsets = np.load(d / INDEX_FILE, mmap_mode="r")
            ids = np.load(d / DOC_IDS_FILE, mmap_mode="r")
            if (
                len(offsets) != self.documents + 1
                or len(ids) != self.documents
                or int(offsets[-1]) != len(tokens)
            ):
                raise DataError(f"source 'prepared': {d}: index and tokens disagree; prepare it again")
            self._maps = (tokens, offsets, ids)
        return self._maps

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": self.directory, "meta": self.meta, "base": self.base, "_maps": None}


def resolve_cache_dirs(patterns: Sequence[str] | str) -> list[Path]:
    """Directories and globs of directories, in the given order (globs sorted)."""
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise DataError("source 'prepared' needs at least one cache directory in paths")
    dirs: list[Path] = []
    for pattern in patterns:
        pattern = os.path.expanduser(str(pattern))
        if glob.has_magic(pattern):
            matches = sorted(p for p in glob.glob(pattern) if os.path.isdir(p))
            if not matches:
                raise DataError(f"source 'prepared': glob matches no directories: {pattern}")
            dirs.extend(Path(p) for p in matches)
        else:
            dirs.append(Path(pattern))
    return list(dict.fromkeys(dirs))


@dataclass
class PreparedSourceConfig:
    paths: list[str] = field(default_factory=list)  # directories written by `spactor data prepare`


class PreparedSource(Source):
    """Documents as token ids, read from caches written by :func:`prepare`.

    Several directories are read in order; the document numbers of each continue after
    the records of the ones before. ``pretokenized``: the loader packs the ids as they
    are (adding EOS) and calls ``check_tokenizer`` first.
    """

    name = "prepared"
    pretokenized = True
    max_document_chars = None

    def __init__(self, paths: Sequence[str] | str) -> None:
        self.parts: list[_Part] = []
        base = 0
        for directory in resolve_cache_dirs(paths):
            meta = read_meta(directory)
            self.parts.append(_Part(directory, meta, base))
            base += int(meta["records"])
        fingerprints = {p.meta["tokenizer"]["sha256"] for p in self.parts}
        if len(fingerprints) > 1:
            raise DataError(
                "source 'prepared': the caches were made with different tokenizers: "
                + ", ".join(f"{p.directory} ({p.meta['tokenizer']['sha256'][:12]})" for p in self.parts)
            )

    def __iter__(self) -> Iterator[str]:
        raise DataError(
            "a prepared cache holds token ids, not text (e.g. to train a tokenizer): use the source it was "
            "prepared from"
        )

    # -- the contract with the loader ------------------------------------------------------
    def check_tokenizer(self, tokenizer: Tokenizer) -> None:
        """``DataError`` unless every cache was tokenised with ``tokenizer``."""
        mine = tokenizer_fingerprint(tokenizer)
        for part in self.parts:
            theirs = part.meta["tokenizer"]
            if theirs["sha256"] != mine:
                raise DataError(
                    f"prepared cache {part.directory} was tokenised with another tokenizer "
                    f"({theirs.get('name') or '?'}, {theirs.get('num_pieces')} pieces, sha256 {theirs['sha256'][:12]}) "
                    f"than this run's ({tokenizer.name or '?'}, {tokenizer.num_pieces} pieces, sha256 {mine[:12]}): "
                    f"use data.tokenizer={part.directory / TOKENIZER_FILE}, or prepare the cache again"
                )

    def _records(self, start: int, shard: int, num_shards: int) -> Iterator[tuple[int, np.ndarray | None]]:
        for part in self.parts:
            tokens, offsets, ids = part.maps()
            n = len(ids)
            lo = int(np.searchsorted(ids, start - part.base, side="left"))
            for chunk in range(lo, n, _SELECT_CHUNK):
                numbers = np.asarray(ids[chunk : chunk + _SELECT_CHUNK]) + part.base
                bounds = np.asarray(offsets[chunk : chunk + _SELECT_CHUNK + 1])
                mine = np.nonzero((numbers >= start) & (numbers % num_shards == shard))[0]
                for j in mine.tolist():
                    yield int(numbers[j]), tokens[bounds[j] : bounds[j + 1]]

    # -- random access (mixtures skip ahead without reading) -------------------------------
    def __len__(self) -> int:
        return sum(p.documents for p in self.parts)

    def iter_from(self, ordinal: int) -> Iterator[np.ndarray]:
        """The documents from the ``ordinal``-th on (0-based, across every part)."""
        for part in self.parts:
            if ordinal >= part.documents:
                ordinal -= part.documents
                continue
            tokens, offsets, _ = part.maps()
            for lo in range(ordinal, part.documents, _SELECT_CHUNK):
                bounds = np.asarray(offsets[lo : lo + _SELECT_CHUNK + 1])
                for j in range(len(bounds) - 1):
                    yield tokens[bounds[j] : bounds[j + 1]]
            ordinal = 0

    @property
    def tokens(self) -> int:
        return sum(int(p.meta["tokens"]) for p in self.parts)

    def describe(self) -> str:
        dirs = ", ".join(str(p.directory) for p in self.parts[:3]) + (
            f", ... ({len(self.parts)} caches)" if len(self.parts) > 3 else ""
        )
        origin = self.parts[0].meta.get("source", {}).get("type", "?") if self.parts else "?"
        return (
            f"prepared: {dirs} ({len(self):,} documents, {self.tokens:,} tokens, "
            f"{self.parts[0].meta['dtype'] if self.parts else '?'}; from {origin})"
        )


@SOURCES.register("prepared", PreparedSourceConfig)
def prepared_source(cfg: PreparedSourceConfig) -> PreparedSource:
    """Token ids from caches written by `spactor data prepare` (no tokenising at run time)."""
    return PreparedSource(list(cfg.paths))
