"""``site_docs``: a larger offline corpus, the documentation of what is installed.

The ``builtin`` source (Python's own documentation, ~460k tokens) is small for studies
of more than a few passes. ``site_docs`` adds the English text that ships with the
installed packages, still without a download::

    data:
      source: site_docs
      source_options: {roots: [stdlib, site-packages]}   # the default

A root is ``stdlib`` (exactly the ``builtin`` corpus: the ``pydoc_data`` topics and the
standard library's docstrings), ``site-packages`` (the running interpreter's
``purelib`` and ``platlib`` directories, once each) or a directory path. Under a
directory, in sorted path order (directories walked sorted, test suites and caches
skipped as in ``builtin``):

* every ``.py`` file's module, class and function docstrings, read with ``ast`` (never
  imported: importing a package runs its code; parsing is safe and fast);
* every ``.rst``, ``.md`` and ``.txt`` file that reads as prose (on average at least
  ``MIN_WORDS_PER_LINE`` words per non-blank line: word lists, requirement files and
  data tables do not), except licence/author files;
* every ``*.dist-info/METADATA`` long description: the distribution's README as it was
  published to the package index (reStructuredText or Markdown).

One docstring or file is one document. Documents shorter than ``min_chars`` are
dropped, and a text seen before (by SHA-1 of its content, first occurrence kept) is
dropped again: vendored copies and shared licence headers count once. With
``holdout_tasks`` (the default), every text the built-in downstream tasks are made of
(``spactor.data.sources.task_docstring_records``: 20% of the standard library's
function/class docstrings) is left out wherever it appears, a package's copy included,
so pre-training on this corpus never sees a pydoc task document. The validation split
is the loader's, by document number, as for every source.

What it holds depends on what is installed, so two machines differ: ``fingerprint``
(a SHA-256 over the documents in order) names the content and goes into ``describe()``,
which a run's logs and ``spactor data prepare``'s ``meta.json`` record.
"""

from __future__ import annotations

import email.parser
import hashlib
import os
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

from spactor.config import ConfigError
from spactor.data.sources import (
    DEFAULT_MAX_DOCUMENT_CHARS,
    DataError,
    ListSource,
    builtin_documents,
    describe_python_corpus,
    file_docstrings,
    pretraining_documents,
    task_docstring_records,
)
from spactor.registry import SOURCES

STDLIB = "stdlib"
SITE_PACKAGES = "site-packages"
DOC_SUFFIXES = (".rst", ".md", ".txt")
# Directories whose contents are not documentation: test suites (deliberately odd
# strings, as in ``builtin``), bytecode caches, version control.
SKIP_DIRS = frozenset({"test", "tests", "testing", "__pycache__", ".git", "node_modules"})
# Doc files that are boilerplate or lists of names, not prose about the package.
SKIP_FILE_PREFIXES = ("license", "licence", "copying", "notice", "authors", "contributors", "copyright")
# ``*.dist-info`` / ``*.egg-info`` files that are metadata, not text (METADATA is read
# for its long description separately).
METADATA_DIR_SUFFIXES = (".dist-info", ".egg-info")
MIN_WORDS_PER_LINE = 4.0


@dataclass
class SiteDocsSourceConfig:
    # ``stdlib``, ``site-packages`` or directories, read in this order.
    roots: list[str] = field(default_factory=lambda: [STDLIB, SITE_PACKAGES])
    docstrings: bool = True  # .py docstrings under directory roots
    doc_files: bool = True  # .rst/.md/.txt files and dist-info long descriptions
    min_chars: int = 20  # shorter documents ("Return self.") are noise
    holdout_tasks: bool = True  # leave out every text of the built-in pydoc tasks
    max_document_chars: int | None = DEFAULT_MAX_DOCUMENT_CHARS  # longer documents: skipped (too_long)

    # No data.tokenizer needed: the built-in tokenizer (trained on ``builtin``, the
    # ``stdlib`` part of this corpus) fits Python documentation.
    uses_builtin_tokenizer: ClassVar[bool] = True

    def check(self, where: str = "data.source_options", ctx: Any = None) -> None:
        """One ``ConfigError`` line for the first bad option (``where``: the key prefix)."""
        roots = self.roots
        if isinstance(roots, str) or not isinstance(roots, (list, tuple)) or not roots:
            _fail(f"{where}.roots", roots, f"a non-empty list of {STDLIB}, {SITE_PACKAGES} or directories")
        for root in roots:
            if not isinstance(root, str) or not root:
                _fail(f"{where}.roots", root, "each root is a non-empty string")
            if root not in (STDLIB, SITE_PACKAGES) and not os.path.isdir(os.path.expanduser(root)):
                _fail(f"{where}.roots", root, f"no such directory (or use {STDLIB} / {SITE_PACKAGES})")
        if not (self.docstrings or self.doc_files) and any(r != STDLIB for r in roots):
            _fail(f"{where}.docstrings", self.docstrings,
                  "docstrings and doc_files are both off: nothing to read")
        for name in ("docstrings", "doc_files", "holdout_tasks"):
            if not isinstance(getattr(self, name), bool):
                _fail(f"{where}.{name}", getattr(self, name), "must be true or false")
        if isinstance(self.min_chars, bool) or not isinstance(self.min_chars, int) or self.min_chars < 1:
            _fail(f"{where}.min_chars", self.min_chars, "must be an integer >= 1")
        limit = self.max_document_chars
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            _fail(f"{where}.max_document_chars", limit, "must be a positive integer or null")


def _fail(key: str, value: Any, rule: str) -> None:
    raise ConfigError(f"{key}: {value!r} — {rule}")


# --------------------------------------------------------------------------- scanning


def site_packages_dirs() -> list[Path]:
    """The running interpreter's ``purelib`` and ``platlib`` (often the same), existing ones."""
    paths = sysconfig.get_paths()
    dirs = dict.fromkeys(Path(paths[key]) for key in ("purelib", "platlib"))
    return [d for d in dirs if d.is_dir()]


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)  # sorted: a fixed order
        for name in sorted(filenames):
            yield Path(dirpath, name)


def reads_as_prose(text: str) -> bool:
    lines = [line for line in text.splitlines() if line.strip()]
    return bool(lines) and sum(len(line.split()) for line in lines) / len(lines) >= MIN_WORDS_PER_LINE


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (UnicodeDecodeError, OSError):
        return None  # not UTF-8 text (or unreadable): not documentation we can use


def _long_description(path: Path) -> str | None:
    """The body of a core-metadata file (PEP 566: the description follows the headers)."""
    text = _read_text(path)
    if text is None:
        return None
    message = email.parser.Parser().parsestr(text)
    body = message.get_payload()
    if not isinstance(body, str) or not body.strip():
        body = message.get("Description") or ""  # metadata < 2.1 keeps it in a header
    return body.strip() or None


def _doc_file(path: Path) -> str | None:
    parent = path.parent.name
    if parent.endswith(METADATA_DIR_SUFFIXES):
        return _long_description(path) if path.name in ("METADATA", "PKG-INFO") else None
    if any(part.endswith(METADATA_DIR_SUFFIXES) for part in path.parent.parts):
        return None  # licences/ and the like inside a dist-info
    if path.suffix.lower() not in DOC_SUFFIXES or path.name.lower().startswith(SKIP_FILE_PREFIXES):
        return None
    text = _read_text(path)
    return text if text and reads_as_prose(text) else None


def directory_documents(root: Path, docstrings: bool = True, doc_files: bool = True) -> Iterator[str]:
    """Every document under ``root`` in sorted path order (before length filter and dedup)."""
    for path in _walk(root):
        if path.suffix == ".py":
            if docstrings:
                yield from file_docstrings(path)
        elif doc_files:
            text = _doc_file(path)
            if text:
                yield text


def _root_documents(
    root: str, docstrings: bool, doc_files: bool, min_chars: int, holdout: bool
) -> Iterator[str]:
    if root == STDLIB:
        yield from (pretraining_documents(min_chars) if holdout else builtin_documents(min_chars))
        return
    dirs = site_packages_dirs() if root == SITE_PACKAGES else [Path(os.path.expanduser(root))]
    for directory in dirs:
        yield from directory_documents(directory, docstrings, doc_files)


def held_out_texts(min_chars: int = 20) -> frozenset[str]:
    """The texts of the built-in tasks' documents (``task_docstring_records`` at the
    tasks' own threshold and at ``min_chars``, whichever is lower, so none slips in)."""
    return frozenset(r.text for r in task_docstring_records()) | frozenset(
        r.text for r in task_docstring_records(min_chars)
    )


def _deduplicated(texts: Iterable[str], min_chars: int, held_out: frozenset[str]) -> Iterator[str]:
    seen: set[bytes] = set()
    for text in texts:
        if len(text) < min_chars or text in held_out:
            continue
        digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).digest()
        if digest not in seen:
            seen.add(digest)
            yield text


@lru_cache(maxsize=4)
def site_documents(
    roots: tuple[str, ...] = (STDLIB, SITE_PACKAGES),
    docstrings: bool = True,
    doc_files: bool = True,
    min_chars: int = 20,
    holdout_tasks: bool = True,
) -> tuple[str, ...]:
    """The corpus (module docstring): roots in order, each in sorted path order, short
    texts dropped, duplicates kept once, the tasks' texts left out (``holdout_tasks``)."""
    held_out = held_out_texts(min_chars) if holdout_tasks else frozenset()
    texts = (
        text
        for root in roots
        for text in _root_documents(root, docstrings, doc_files, min_chars, holdout_tasks)
    )
    return tuple(_deduplicated(texts, min_chars, held_out))


def fingerprint(docs: Iterable[str]) -> str:
    """SHA-256 over the documents in order (length-prefixed): equal iff the corpora are."""
    digest = hashlib.sha256()
    for text in docs:
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


class SiteDocsSource(ListSource):
    """The documentation of the running Python and its installed packages (module docstring)."""

    name = "site_docs"

    def __init__(self, cfg: SiteDocsSourceConfig) -> None:
        # Read lazily (as ``builtin``): loader workers get a small object and scan, or
        # inherit the cache through fork, themselves.
        self.key = (tuple(cfg.roots), cfg.docstrings, cfg.doc_files, cfg.min_chars, cfg.holdout_tasks)
        self.max_document_chars = cfg.max_document_chars

    @property
    def docs(self) -> tuple[str, ...]:  # type: ignore[override]
        docs = site_documents(*self.key)
        if not docs:
            raise DataError(f"source 'site_docs': no documents under roots {list(self.key[0])}")
        return docs

    @property
    def fingerprint(self) -> str:
        return _cached_fingerprint(self.key)

    def describe(self) -> str:
        return (
            f"site_docs: roots {', '.join(self.key[0])}: {describe_python_corpus(self.docs)}, "
            f"fingerprint {self.fingerprint[:16]}" + self._skipped_suffix()
        )


@lru_cache(maxsize=4)
def _cached_fingerprint(key: tuple[Any, ...]) -> str:
    return fingerprint(site_documents(*key))


@SOURCES.register("site_docs", SiteDocsSourceConfig)
def site_docs_source(cfg: SiteDocsSourceConfig) -> SiteDocsSource:
    """Docstrings and docs of the stdlib and installed packages (ast, never imported); offline."""
    cfg.check("data.source_options")
    return SiteDocsSource(cfg)
