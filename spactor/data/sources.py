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

Bad data. What makes a run impossible fails before training with a ``DataError``: a
path that does not exist, a glob that matches nothing, a directory, a source with zero
usable documents (``first_document``, called when a loader is built). What spoils single
records is skipped, counted in ``Source.skipped`` (reason -> count) and the first of each
kind logged with its file and position:

``invalid_json`` / ``missing_field`` / ``non_string_field`` / ``empty_text``  (jsonl) a
    line that is not a JSON object, has no (or a null) ``text_field``, holds a number,
    list or object there, or a blank string;
``invalid_utf8``  a document (jsonl line, text paragraph) with bytes that are not valid
    in the source's ``encoding`` (UTF-8 by default), or a JSON string holding a lone
    surrogate (``"\\udc80"``), which no tokenizer can encode. Such documents are *skipped*,
    not repaired with U+FFFD: a mis-encoded or binary file should show up in the counts,
    not as mojibake in the training data;
``too_long``  a document longer than ``max_document_chars`` (default 1,000,000; ``None``
    turns the check off). File sources read lines with a bound, so a multi-gigabyte
    "line" (a binary file, a minified dump) costs no memory;
``empty_file``  a file with no documents at all (a source whose files are *all* empty
    has zero usable documents: ``DataError``);
``corrupt_file``  a truncated or invalid ``.gz``: the documents before the damage are
    kept, the rest of the file is skipped.

Every record is counted by exactly one shard (file-level events by the shard that owns
the next document index), so the counts of all ranks and loader workers add up to the
source's. ``spactor.data.loader.skipped_counts`` collects them from a loader.
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
import re
import sys
import sysconfig
import tokenize
import zlib
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


# Why records are skipped (see the module docstring). Sources may add reasons of their own.
SKIP_REASONS = (
    "invalid_json",
    "missing_field",
    "non_string_field",
    "empty_text",
    "invalid_utf8",
    "too_long",
    "empty_file",
    "corrupt_file",
)
DEFAULT_MAX_DOCUMENT_CHARS = 1_000_000
# Bytes that are not valid in the file's encoding come back from ``surrogateescape`` as
# U+DC80..U+DCFF; JSON "\\udXXX" escapes can produce any lone surrogate. Neither can be
# encoded as UTF-8 (SentencePiece would raise mid-training).
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# What a damaged .gz raises while it is being read.
_CORRUPT_FILE_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


class Source:
    """Yields documents in a fixed order. Subclasses implement ``_records``.

    ``max_document_chars`` (None: no limit) drops longer documents in ``documents``,
    counted as ``too_long``; ``skipped`` holds every source's skip counts.
    """

    name = "source"
    max_document_chars: int | None = None

    def __iter__(self) -> Iterator[str]:
        for _, text in self.documents():
            yield text

    def documents(self, start: int = 0, shard: int = 0, num_shards: int = 1) -> Iterator[tuple[int, str]]:
        """``(index, text)`` for every document with ``index >= start`` and
        ``index % num_shards == shard``. Indices may skip numbers (records that are not
        usable documents still consume one); they never change between reads."""
        limit = self.max_document_chars
        for index, text in self._records(start, shard, num_shards):
            if text is None:
                continue
            if limit is not None and len(text) > limit:
                where = f"document {index}: {len(text):,} characters > max_document_chars={limit:,}"
                self._skip("too_long", where)
                continue
            yield index, text

    def _records(self, start: int, shard: int, num_shards: int) -> Iterator[tuple[int, str | None]]:
        raise NotImplementedError

    # -- skip counting -----------------------------------------------------------------
    @property
    def skipped(self) -> dict[str, int]:
        """Reason -> records skipped by this object's reads (per process: each loader
        worker counts the records of its own shard)."""
        counts = self.__dict__.get("_skipped")
        if counts is None:
            counts = self.__dict__["_skipped"] = {}
        return counts

    @skipped.setter
    def skipped(self, value: dict[str, int]) -> None:
        self.__dict__["_skipped"] = dict(value)

    def _skip(self, reason: str, where: str) -> None:
        """Count one skipped record; log the first of each reason (the rest are counted)."""
        warned = self.__dict__.setdefault("_warned", set())
        if reason not in warned:
            warned.add(reason)
            logger.warning("%s: skipping %s (%s; further ones are only counted)", self.name, where, reason)
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def describe(self) -> str:
        return self.name + self._skipped_suffix()

    def _skipped_suffix(self) -> str:
        counts = {k: v for k, v in self.skipped.items() if v}
        return f"; skipped: {', '.join(f'{k}={v:,}' for k, v in counts.items())}" if counts else ""


def _owns(index: int, start: int, shard: int, num_shards: int) -> bool:
    """Whether the reader of ``shard`` counts an event at document position ``index``."""
    return index >= start and index % num_shards == shard


def describe_python_corpus(docs: tuple[str, ...]) -> str:
    """``Python 3.11 documentation, 6,105 documents, 1.80M characters``: a corpus read from
    this interpreter's files, whose size depends on the interpreter."""
    chars = sum(len(d) for d in docs)
    version = ".".join(map(str, sys.version_info[:2]))
    return f"Python {version} documentation, {len(docs):,} documents, {chars / 1e6:.2f}M characters"


def describe_skipped(counts: dict[str, int]) -> str:
    """One line for a run summary: ``skipped 12 records: invalid_json=10, too_long=2``."""
    nonzero = {k: v for k, v in counts.items() if v}
    if not nonzero:
        return "no records skipped"
    total = sum(nonzero.values())
    return f"skipped {total:,} record{'s' if total != 1 else ''}: " + ", ".join(
        f"{k}={v:,}" for k, v in nonzero.items()
    )


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
        return f"list: {len(self.docs):,} documents" + self._skipped_suffix()


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


def open_text(path: Path, encoding: str = "utf-8", errors: str = "strict") -> IO[str]:
    """Open a text file, transparently decompressing ``.gz``."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding, errors=errors)
    return open(path, encoding=encoding, errors=errors)


_DRAIN_CHARS = 1 << 20


def bounded_lines(f: IO[str], limit: int | None) -> Iterator[str | None]:
    """The lines of ``f`` (with their newline), or ``None`` for a line of more than
    ``limit`` characters, which is read past in pieces and never held in memory."""
    if limit is None:
        yield from f
        return
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and not line.endswith("\n"):
            while line and not line.endswith("\n"):
                line = f.readline(_DRAIN_CHARS)
            yield None
        else:
            yield line


def _check_limit(value: int | None, kind: str) -> int | None:
    if value is not None and not (isinstance(value, int) and value > 0):
        raise DataError(
            f"source '{kind}': max_document_chars must be a positive integer or None, got {value!r}"
        )
    return value


def _describe_files(files: list[Path]) -> str:
    shown = ", ".join(str(f) for f in files[:3])
    more = f", ... ({len(files)} files)" if len(files) > 3 else ""
    return shown + more


# --------------------------------------------------------------------------- text


@dataclass
class TextSourceConfig:
    paths: list[str] = field(default_factory=list)
    encoding: str = "utf-8"
    max_document_chars: int | None = DEFAULT_MAX_DOCUMENT_CHARS  # longer paragraphs: skipped (too_long)


class TextSource(Source):
    """Plain-text files; every file is split into documents on blank lines.

    Paragraphs rather than lines or whole files: a line is often a fragment of a
    sentence (hard-wrapped text), while a whole file may be a book whose chunks would
    all land on one shard. Lines inside a paragraph keep their newlines. ``.gz`` files
    are decompressed on the fly. Paragraphs with invalid bytes or more than
    ``max_document_chars`` characters, empty files and damaged ``.gz`` files are skipped
    and counted (module docstring).
    """

    name = "text"

    def __init__(
        self,
        paths: list[str],
        encoding: str = "utf-8",
        max_document_chars: int | None = DEFAULT_MAX_DOCUMENT_CHARS,
    ) -> None:
        self.files = resolve_paths(paths, self.name)
        self.encoding = encoding
        self.max_document_chars = _check_limit(max_document_chars, self.name)

    def _records(self, start: int, shard: int, num_shards: int) -> Iterator[tuple[int, str | None]]:
        index = 0
        for path in self.files:
            first = index
            try:
                for paragraph in _paragraphs(path, self.encoding, self.max_document_chars):
                    if _owns(index, start, shard, num_shards):
                        yield index, self._check(paragraph, path, index - first + 1)
                    index += 1
            except _CORRUPT_FILE_ERRORS as e:
                if _owns(index, start, shard, num_shards):
                    where = f"{path} after {index - first} paragraphs ({e}); the rest of it"
                    self._skip("corrupt_file", where)
                continue
            if index == first and _owns(index, start, shard, num_shards):
                self._skip("empty_file", f"{path} (no paragraphs)")

    def _check(self, paragraph: str | None, path: Path, number: int) -> str | None:
        if paragraph is None:
            limit = self.max_document_chars
            self._skip("too_long", f"{path}, paragraph {number} (> max_document_chars={limit:,})")
            return None
        if _SURROGATE.search(paragraph):
            self._skip("invalid_utf8", f"{path}, paragraph {number} (bytes that are not {self.encoding})")
            return None
        return paragraph

    def describe(self) -> str:
        return f"text: {_describe_files(self.files)} (paragraphs, {self.encoding})" + self._skipped_suffix()


def _paragraphs(path: Path, encoding: str, limit: int | None = None) -> Iterator[str | None]:
    """The blank-line separated paragraphs of a file; ``None`` for one of more than
    ``limit`` characters (its lines are read past, not kept). Undecodable bytes come
    back as lone surrogates (``surrogateescape``) for the caller to reject."""
    lines: list[str] = []
    size = 0  # len("\n".join(lines))
    too_long = False
    with open_text(path, encoding, errors="surrogateescape") as f:
        for line in bounded_lines(f, limit):
            if line is None:  # one line longer than the limit: so is its paragraph
                lines, too_long = [], True
                continue
            line = line.rstrip("\r\n")
            if not line.strip():
                if lines or too_long:
                    yield None if too_long else "\n".join(lines)
                lines, size, too_long = [], 0, False
            elif not too_long:
                size += len(line) + (1 if lines else 0)
                if limit is not None and size > limit:
                    lines, too_long = [], True  # stop keeping it; read on to its end
                else:
                    lines.append(line)
    if lines or too_long:
        yield None if too_long else "\n".join(lines)


@SOURCES.register("text", TextSourceConfig)
def text_source(cfg: TextSourceConfig) -> TextSource:
    """Plain-text files (globs allowed), split into documents on blank lines."""
    return TextSource(list(cfg.paths), cfg.encoding, cfg.max_document_chars)


# --------------------------------------------------------------------------- jsonl


@dataclass
class JsonlSourceConfig:
    paths: list[str] = field(default_factory=list)
    text_field: str = "text"
    encoding: str = "utf-8"
    max_document_chars: int | None = DEFAULT_MAX_DOCUMENT_CHARS  # longer texts: skipped (too_long)


# A JSON line may escape every character of its text (\uXXXX: 6 characters for 1), and
# carries other fields (C4: url, timestamp); lines longer than this are not even parsed.
JSON_ESCAPE_FACTOR = 6
JSON_OTHER_FIELDS_CHARS = 1 << 16


class JsonlSource(Source):
    """JSON-lines files (``.jsonl``, ``.jsonl.gz``, ``.json.gz``: C4's released format).

    Document index = line number over all files, so lines owned by other shards are
    skipped without being parsed. Lines that are not JSON, lack ``text_field`` (or hold a
    non-string / blank value), hold invalid bytes or too long a text are skipped and
    counted in ``skipped``; the first of each kind is logged with its file and line.
    """

    name = "jsonl"
    SKIP_REASONS = ("invalid_json", "missing_field", "non_string_field", "empty_text")

    def __init__(
        self,
        paths: list[str],
        text_field: str = "text",
        encoding: str = "utf-8",
        max_document_chars: int | None = DEFAULT_MAX_DOCUMENT_CHARS,
    ) -> None:
        self.files = resolve_paths(paths, self.name)
        self.text_field = text_field
        self.encoding = encoding
        self.max_document_chars = _check_limit(max_document_chars, self.name)
        # Counts are per process: DataLoader workers count the lines of their own shard.
        self.skipped = {reason: 0 for reason in self.SKIP_REASONS}

    @property
    def max_line_chars(self) -> int | None:
        limit = self.max_document_chars
        return None if limit is None else JSON_ESCAPE_FACTOR * limit + JSON_OTHER_FIELDS_CHARS

    def _records(self, start: int, shard: int, num_shards: int) -> Iterator[tuple[int, str | None]]:
        index = 0
        for path in self.files:
            first = index
            try:
                with open_text(path, self.encoding, errors="surrogateescape") as f:
                    for line_no, line in enumerate(bounded_lines(f, self.max_line_chars), 1):
                        if _owns(index, start, shard, num_shards):
                            yield index, self._parse(line, path, line_no)
                        index += 1
            except _CORRUPT_FILE_ERRORS as e:
                if _owns(index, start, shard, num_shards):
                    self._skip("corrupt_file", f"{path} after line {index - first} ({e}); the rest of it")
                continue
            if index == first and _owns(index, start, shard, num_shards):
                self._skip("empty_file", f"{path} (no lines)")

    def _parse(self, line: str | None, path: Path, line_no: int) -> str | None:
        if line is None:
            self._count_skip("too_long", path, line_no)
            return None
        text, reason = parse_jsonl_line(line, self.text_field)
        if text is not None and self.max_document_chars is not None and len(text) > self.max_document_chars:
            text, reason = None, "too_long"
        if reason is not None:
            self._count_skip(reason, path, line_no)
        return text

    def _count_skip(self, reason: str, path: Path, line_no: int) -> None:
        self._skip(reason, f"{path}:{line_no}")

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
    if text is None:
        return None, "missing_field"
    if not isinstance(text, str):  # a number, list or object where the text should be
        return None, "non_string_field"
    if not text.strip():
        return None, "empty_text"
    if _SURROGATE.search(text):
        return None, "invalid_utf8"
    return text, None


@SOURCES.register("jsonl", JsonlSourceConfig)
def jsonl_source(cfg: JsonlSourceConfig) -> JsonlSource:
    """JSON-lines files (optionally .gz), one document per line, text in ``text_field``."""
    return JsonlSource(list(cfg.paths), cfg.text_field, cfg.encoding, cfg.max_document_chars)


# --------------------------------------------------------------------------- builtin


@dataclass
class BuiltinSourceConfig:
    min_chars: int = 20  # docstrings shorter than this ("Return self.") are noise
    # Leave out the function/class docstrings that the built-in downstream tasks
    # (spactor.data.pydoc_tasks) are made of, so pre-training never sees them.
    holdout_tasks: bool = True


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


def file_docstrings(path: Path) -> Iterator[str]:
    """The module, class and function docstrings of a ``.py`` file, cleaned; nothing for a
    file that does not parse (any Python's, or none: ``site_docs`` reads third-party code)."""
    # Parse, never import: importing `antigravity` opens a browser, `this` prints.
    try:
        with tokenize.open(path) as f:  # honours PEP 263 coding cookies
            tree = ast.parse(f.read(), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError, RecursionError, MemoryError):
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
        docs.extend(file_docstrings(path))
    return tuple(d for d in docs if len(d) >= min_chars)


# Share of the standard library's function/class docstrings held out for the built-in
# downstream tasks; decided by a checksum of the text, so it is fixed for a given Python.
TASK_HOLDOUT_PERCENT = 20


@dataclass(frozen=True)
class DocstringRecord:
    """One function/class docstring of the standard library and where it comes from."""

    module: str  # the top-level module or package: "json", "email", "asyncio"
    path: str  # relative to the stdlib root: "json/decoder.py"
    name: str  # the function's or class's name
    kind: str  # "function" | "class"
    text: str


@lru_cache(maxsize=4)
def builtin_docstring_records(min_chars: int = 20) -> tuple[DocstringRecord, ...]:
    """The function/class docstrings of ``builtin_documents`` with their module and name,
    in the same order (the same walk, the same cleaning)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    records = []
    for path in _stdlib_files(root):
        try:
            with tokenize.open(path) as f:
                tree = ast.parse(f.read(), filename=str(path))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        rel = path.relative_to(root)
        module = rel.parts[0].removesuffix(".py")
        for node in ast.walk(tree):
            if isinstance(node, _DOCUMENTED) and not isinstance(node, ast.Module):
                doc = ast.get_docstring(node, clean=False)
                text = inspect.cleandoc(doc) if doc else ""
                if len(text) >= min_chars:
                    kind = "class" if isinstance(node, ast.ClassDef) else "function"
                    records.append(DocstringRecord(module, rel.as_posix(), node.name, kind, text))
    return tuple(records)


def is_task_docstring(text: str) -> bool:
    return zlib.crc32(text.encode("utf-8", "surrogatepass")) % 100 < TASK_HOLDOUT_PERCENT


@lru_cache(maxsize=4)
def task_docstring_records(min_chars: int = 20) -> tuple[DocstringRecord, ...]:
    """The held-out docstrings the built-in tasks use (``is_task_docstring``)."""
    return tuple(r for r in builtin_docstring_records(min_chars) if is_task_docstring(r.text))


@lru_cache(maxsize=4)
def pretraining_documents(min_chars: int = 20) -> tuple[str, ...]:
    """``builtin_documents`` without the held-out docstrings (nor any document with the
    same text: a docstring copied elsewhere in the standard library goes with them)."""
    held_out = {r.text for r in task_docstring_records(min_chars)}
    return tuple(d for d in builtin_documents(min_chars) if d not in held_out)


class BuiltinSource(ListSource):
    """The documentation that ships with the running Python (see ``builtin_documents``).

    Needs no files or network, so every install can train end to end; the corpus
    differs slightly between Python versions.
    """

    name = "builtin"

    def __init__(self, min_chars: int = 20, holdout_tasks: bool = True) -> None:
        # Read lazily: DataLoader workers receive a small object and read (or inherit
        # through fork) the module-level cache themselves.
        self.min_chars = min_chars
        self.holdout_tasks = holdout_tasks

    @property
    def docs(self) -> tuple[str, ...]:  # type: ignore[override]
        if self.holdout_tasks:
            return pretraining_documents(self.min_chars)
        return builtin_documents(self.min_chars)

    def describe(self) -> str:
        return f"builtin: {describe_python_corpus(self.docs)}"


@SOURCES.register("builtin", BuiltinSourceConfig)
def builtin_source(cfg: BuiltinSourceConfig) -> BuiltinSource:
    """Python's bundled English documentation (pydoc topics + stdlib docstrings); offline."""
    return BuiltinSource(cfg.min_chars, cfg.holdout_tasks)


@contextmanager
def probing(source: Source) -> Iterator[Source]:
    """Read ``source`` without it counting: skip counters are restored afterwards, so a
    check before training does not double the numbers the real read reports."""
    counters = getattr(source, "skipped", None)
    saved = dict(counters) if counters is not None else None
    try:
        yield source
    finally:
        if counters is not None and saved is not None:
            counters.clear()  # exactly as before: also drop reasons first seen in the probe
            counters.update(saved)


def first_document(source: Source) -> tuple[int, str]:
    """``(index, text)`` of the first document; ``DataError`` if there is none (checked
    when a loader starts, so an empty or all-invalid source fails fast and clearly)."""
    with probing(source):
        for index, text in source.documents():
            return index, text
        raise DataError(
            f"source has no usable documents (zero usable documents: every file is empty or every record "
            f"was skipped): {source.describe()}"
        )
