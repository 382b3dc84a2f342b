"""Document sources: where pre-training text comes from.

A source yields documents (``str``) in a deterministic order. Documents are numbered by
their position in that order; the loader shards, holds out and resumes by that number,
so a source must produce the same sequence every time it is read. Sources are
registered in ``spactor.registry.SOURCES`` and selected in the config by name::

    data:
      source: {type: jsonl, paths: ["c4/en/c4-train.*.json.gz"]}

``text``    plain-text files; each file is split into documents on blank lines.
``jsonl``   JSON-lines files (optionally gzipped), one document per line (C4's format).
``builtin`` the English documentation shipped inside Python itself: works offline,
            anywhere, for smoke tests, tutorials and CI.
"""

from __future__ import annotations

import ast
import glob
import gzip
import inspect
import io
import json
import logging
import os
import sys
import sysconfig
import tokenize
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO

from spactor.registry import SOURCES

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad or missing input data (paths that match nothing, sources with no documents)."""


class Source:
    """Yields documents in a fixed order. Subclasses implement ``_records``."""

    name = "source"

    def __iter__(self) -> Iterator[str]:
        for _, text in self.documents():
            yield text

    def documents(self, start: int = 0, shard: int = 0, num_shards: int = 1) -> Iterator[tuple[int, str]]:
        """``(index, text)`` for every document with ``index >= start`` and
        ``index % num_shards == shard``. Indices may skip numbers (records that are not
        usable documents still consume one); they never change between reads."""
        for index, text in self._records(start, shard, num_shards):
            if text is not None:
                yield index, text

    def _records(self, start: int, shard: int, num_shards: int) -> Iterator[tuple[int, str | None]]:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class ListSource(Source):
    """Documents held in memory (tests, notebooks, programmatic use); not in the
    registry because a config cannot hold the list."""

    name = "list"

    def __init__(self, docs: list[str] | tuple[str, ...]) -> None:
        self.docs = tuple(docs)

    def _records(self, start: int, shard: int, num_shards: int) -> Iterator[tuple[int, str | None]]:
        first = start + (shard - start) % num_shards  # smallest index >= start in this shard
        for index in range(first, len(self.docs), num_shards):
            yield index, self.docs[index]

    def describe(self) -> str:
        return f"list: {len(self.docs):,} documents"


# --------------------------------------------------------------------------- paths


def resolve_paths(patterns: list[str] | tuple[str, ...], kind: str) -> list[Path]:
    """Expand files and globs (``**`` allowed) into a sorted, de-duplicated file list.

    Order is the order of ``patterns``, each glob sorted, so document numbering is
    stable. A path that does not exist or a glob that matches nothing is an error: a
    typo should stop a run, not silently train on less data.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise DataError(f"source '{kind}' needs at least one path")
    files: list[Path] = []
    for pattern in patterns:
        pattern = os.path.expanduser(str(pattern))
        if glob.has_magic(pattern):
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not matches:
                raise DataError(f"source '{kind}': glob matches no files: {pattern}")
            files.extend(Path(p) for p in matches)
        elif os.path.isdir(pattern):
            raise DataError(
                f"source '{kind}': {pattern} is a directory; give files or a glob such as {pattern}/*"
            )
        elif not os.path.isfile(pattern):
            raise DataError(f"source '{kind}': no such file: {pattern}")
        else:
            files.append(Path(pattern))
    return list(dict.fromkeys(files))


def open_text(path: Path, encoding: str = "utf-8") -> IO[str]:
    """Open a text file, transparently decompressing ``.gz``."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding)
    return open(path, encoding=encoding)


def _describe_files(files: list[Path]) -> str:
    shown = ", ".join(str(f) for f in files[:3])
    more = f", ... ({len(files)} files)" if len(files) > 3 else ""
    return shown + more


# --------------------------------------------------------------------------- text


@dataclass
class TextSourceConfig:
    paths: list[str] = field(default_factory=list)
    encoding: str = "utf-8"


class TextSource(Source):
    """Plain-text files; every file is split into documents on blank lines.

    Paragraphs rather than lines or whole files: a line is often a fragment of a
    sentence (hard-wrapped text), while a whole file may be a book whose chunks would
    all land on one shard. Lines inside a paragraph keep their newlines. ``.gz`` files
    are decompressed on the fly.
    """

    name = "text"

    def __init__(self, paths: list[str], encoding: str = "utf-8") -> None:
        self.files = resolve_paths(paths, self.name)
        self.encoding = encoding

    def _records(self, start: int, shard: int, num_shards: int) -> Iterator[tuple[int, str | None]]:
        index = 0
        for path in self.files:
            for paragraph in _paragraphs(path, self.encoding):
                if index >= start and index % num_shards == shard:
                    yield index, paragraph
                index += 1

    def describe(self) -> str:
        return f"text: {_describe_files(self.files)} (paragraphs, {self.encoding})"


def _paragraphs(path: Path, encoding: str) -> Iterator[str]:
    lines: list[str] = []
    with open_text(path, encoding) as f:
        for line in f:
            line = line.rstrip("\r\n")
            if line.strip():
                lines.append(line)
            elif lines:
                yield "\n".join(lines)
                lines = []
    if lines:
        yield "\n".join(lines)


@SOURCES.register("text", TextSourceConfig)
def text_source(cfg: TextSourceConfig) -> TextSource:
    """Plain-text files (globs allowed), split into documents on blank lines."""
    return TextSource(list(cfg.paths), cfg.encoding)


# --------------------------------------------------------------------------- jsonl


@dataclass
class JsonlSourceConfig:
    paths: list[str] = field(default_factory=list)
    text_field: str = "text"
    encoding: str = "utf-8"


class JsonlSource(Source):
    """JSON-lines files (``.jsonl``, ``.jsonl.gz``, ``.json.gz``: C4's released format).

    Document index = line number over all files, so lines owned by other shards are
    skipped without being parsed. Lines that are not JSON, lack ``text_field`` (or hold a
    non-string / blank value) are skipped and counted in ``skipped``; the first of each
    kind is logged with its file and line.
    """

    name = "jsonl"
    SKIP_REASONS = ("invalid_json", "missing_field", "empty_text")

    def __init__(self, paths: list[str], text_field: str = "text", encoding: str = "utf-8") -> None:
        self.files = resolve_paths(paths, self.name)
        self.text_field = text_field
        self.encoding = encoding
        # Counts are per process: DataLoader workers count the lines of their own shard.
        self.skipped: dict[str, int] = {reason: 0 for reason in self.SKIP_REASONS}
        self._warned: set[str] = set()

    def _records(self, start: int, shard: int, num_shards: int) -> Iterator[tuple[int, str | None]]:
        index = 0
        for path in self.files:
            with open_text(path, self.encoding) as f:
                for line_no, line in enumerate(f, 1):
                    if index >= start and index % num_shards == shard:
                        yield index, self._parse(line, path, line_no)
                    index += 1

    def _parse(self, line: str, path: Path, line_no: int) -> str | None:
        text, reason = parse_jsonl_line(line, self.text_field)
        if reason is not None:
            self._count_skip(reason, path, line_no)
        return text

    def _count_skip(self, reason: str, path: Path, line_no: int) -> None:
        if reason not in self._warned:
            self._warned.add(reason)
            logger.warning("jsonl: skipping %s:%d (%s; further ones are only counted)", path, line_no, reason)
        self.skipped[reason] += 1

    def describe(self) -> str:
        desc = f"jsonl: {_describe_files(self.files)} (field '{self.text_field}')"
        skipped = ", ".join(f"{k}={v}" for k, v in self.skipped.items() if v)
        return desc + (f"; skipped lines: {skipped}" if skipped else "")


def parse_jsonl_line(line: str, text_field: str) -> tuple[str | None, str | None]:
    """``(text, None)`` for a usable line, ``(None, reason)`` for one to skip."""
    try:
        record = json.loads(line)
    except ValueError:
        return None, "invalid_json"
    text = record.get(text_field) if isinstance(record, dict) else None
    if not isinstance(text, str):
        return None, "missing_field"
    if not text.strip():
        return None, "empty_text"
    return text, None


@SOURCES.register("jsonl", JsonlSourceConfig)
def jsonl_source(cfg: JsonlSourceConfig) -> JsonlSource:
    """JSON-lines files (optionally .gz), one document per line, text in ``text_field``."""
    return JsonlSource(list(cfg.paths), cfg.text_field, cfg.encoding)


# --------------------------------------------------------------------------- builtin


@dataclass
class BuiltinSourceConfig:
    min_chars: int = 20  # docstrings shorter than this ("Return self.") are noise


# Parts of the standard library that are not its documentation: installed third-party
# packages, test suites (full of deliberately odd strings), IDLE, and lib2to3's
# Python 2 fixtures.
_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}
)
_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _stdlib_files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)  # sorted: deterministic walk
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield Path(dirpath, name)


def _docstrings(path: Path) -> Iterator[str]:
    # Parse, never import: importing `antigravity` opens a browser, `this` prints.
    try:
        with tokenize.open(path) as f:  # honours PEP 263 coding cookies
            tree = ast.parse(f.read(), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return
    for node in ast.walk(tree):
        if isinstance(node, _DOCUMENTED):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield inspect.cleandoc(doc)


@lru_cache(maxsize=4)
def builtin_documents(min_chars: int = 20) -> tuple[str, ...]:
    """Python's own English documentation: every ``pydoc_data`` topic (the language
    reference sections ``help()`` shows), then the module/class/function docstrings of
    the standard library, in sorted path order. ~2 MB of text on CPython 3.11."""
    from pydoc_data.topics import topics

    docs = [topics[key].strip() for key in sorted(topics)]
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in _stdlib_files(root):
        docs.extend(_docstrings(path))
    return tuple(d for d in docs if len(d) >= min_chars)


class BuiltinSource(ListSource):
    """The documentation that ships with the running Python (see ``builtin_documents``).

    Needs no files or network, so every install can train end to end; the corpus
    differs slightly between Python versions.
    """

    name = "builtin"

    def __init__(self, min_chars: int = 20) -> None:
        # Read lazily: DataLoader workers receive a small object and read (or inherit
        # through fork) the module-level cache themselves.
        self.min_chars = min_chars

    @property
    def docs(self) -> tuple[str, ...]:  # type: ignore[override]
        return builtin_documents(self.min_chars)

    def describe(self) -> str:
        docs = self.docs
        chars = sum(len(d) for d in docs)
        version = ".".join(map(str, sys.version_info[:2]))
        return (
            f"builtin: Python {version} documentation, {len(docs):,} documents, {chars / 1e6:.2f}M characters"
        )


@SOURCES.register("builtin", BuiltinSourceConfig)
def builtin_source(cfg: BuiltinSourceConfig) -> BuiltinSource:
    """Python's bundled English documentation (pydoc topics + stdlib docstrings); offline."""
    return BuiltinSource(cfg.min_chars)


@contextmanager
def probing(source: Source) -> Iterator[Source]:
    """Read ``source`` without it counting: skip counters are restored afterwards, so a
    check before training does not double the numbers the real read reports."""
    counters = dict(getattr(source, "skipped", {}))
    try:
        yield source
    finally:
        if counters:
            source.skipped.update(counters)  # type: ignore[attr-defined]


def first_document(source: Source) -> tuple[int, str]:
    """``(index, text)`` of the first document; ``DataError`` if there is none (checked
    when a loader starts, so an empty or all-invalid source fails fast and clearly)."""
    with probing(source):
        for index, text in source.documents():
            return index, text
        raise DataError(f"source has no usable documents: {source.describe()}")
