"""The ``site_docs`` source: what a scan of a package directory yields, in what order,
that two builds are equal, that the pydoc tasks' documents never get in, and its
config's own checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from spactor.config import ConfigError, DataConfig
from spactor.data.site_docs import (
    SiteDocsSource,
    SiteDocsSourceConfig,
    fingerprint,
    reads_as_prose,
    site_documents,
)
from spactor.data.sources import task_docstring_records
from spactor.plugins import load_plugins
from spactor.train.batches import build_source, load_tokenizer
from spactor.tasks import build_task

load_plugins()

README = "Fakepkg parses configuration files.\n\nIt reads them once and keeps every value it finds."
LONG_DESCRIPTION = "Fakepkg\n=======\n\nA package that exists only in this test, with a README."
MODULE_DOC = "Helpers that turn configuration text into values."
FUNC_DOC = "Return the value stored under key, or default when there is none."
NOTES = "# Notes\n\nThese notes say what the package does and why it does it."
CLASS_DOC = "A parsed configuration file that remembers where each value came from."


def fake_site_packages(root: Path, reverse: bool = False) -> Path:
    """A small site-packages: a package with docstrings and docs, its dist-info, a test
    suite, a licence, a word list, a broken and a non-UTF-8 file. ``reverse`` writes the
    files in the opposite order (the scan must not depend on it)."""
    files: list[tuple[str, bytes]] = [
        ("fakepkg/__init__.py",
         f'"""{MODULE_DOC}"""\n\ndef get(key, default=None):\n    """{FUNC_DOC}"""\n'.encode()),
        ("fakepkg/config.py",
         f'class Config:\n    """{CLASS_DOC}"""\n\n    def f(self):\n        """Short."""\n'.encode()),
        # The same docstring again (a vendored copy): kept once.
        ("fakepkg/_vendor/copy.py", f'def get(key, default=None):\n    """{FUNC_DOC}"""\n'.encode()),
        ("fakepkg/broken.py",
         b'def f(:\n    """A syntax error: the file is skipped, nothing is imported."""\n'),
        ("fakepkg/tests/test_config.py",
         b'def test_x():\n    """A test suite\'s docstring is not documentation."""\n'),
        ("fakepkg/README.rst", README.encode()),
        ("fakepkg/LICENSE.txt",
         b"Permission is hereby granted, free of charge, to any person obtaining a copy."),
        ("fakepkg/words.txt", b"alpha\nbeta\ngamma\ndelta\n"),  # a word list, not prose
        ("fakepkg/latin1.txt",
         "Caf\xe9 au lait is not valid UTF-8 in this file at all.".encode("latin-1")),
        ("fakepkg/notes.md", NOTES.encode()),
        ("fakepkg-1.0.dist-info/METADATA",
         f"Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.0\n\n{LONG_DESCRIPTION}\n".encode()),
        ("fakepkg-1.0.dist-info/top_level.txt", b"fakepkg\n"),
        ("fakepkg-1.0.dist-info/licenses/COPYING.txt", b"Copying this file is allowed by the authors of it."),
    ]
    for rel, data in reversed(files) if reverse else files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def scan(*roots: str, **options) -> tuple[str, ...]:
    """A fresh build (not the process-wide cache). Without the task hold-out unless
    asked: computing it parses the whole standard library (seconds)."""
    options.setdefault("holdout_tasks", False)
    cfg = SiteDocsSourceConfig(roots=list(roots), **options)
    return site_documents.__wrapped__(tuple(cfg.roots), cfg.docstrings, cfg.doc_files, cfg.min_chars,
                                      cfg.holdout_tasks)


def test_tiny_scan_of_a_fake_site_packages(tmp_path):
    root = fake_site_packages(tmp_path / "site")
    docs = scan(str(root))
    # os.walk order, each directory's files sorted then its subdirectories: fakepkg/
    # (README.rst, __init__.py, config.py, notes.md; then _vendor/, whose copy is a
    # duplicate), then fakepkg-1.0.dist-info/ (METADATA's long description). Skipped:
    # the test suite, the syntax error, the licences, the word list, the latin-1 file,
    # top_level.txt, and "Short." (under min_chars).
    assert docs == (README, MODULE_DOC, FUNC_DOC, CLASS_DOC, NOTES, LONG_DESCRIPTION)
    assert scan(str(root), doc_files=False) == (MODULE_DOC, FUNC_DOC, CLASS_DOC)
    assert scan(str(root), docstrings=False) == (README, NOTES, LONG_DESCRIPTION)
    assert "Short." in scan(str(root), min_chars=1)


def test_two_builds_are_equal_whatever_the_file_creation_order(tmp_path):
    first = scan(str(fake_site_packages(tmp_path / "a")))
    again = scan(str(tmp_path / "a"))
    other_order = scan(str(fake_site_packages(tmp_path / "b", reverse=True)))
    assert first == again == other_order
    assert fingerprint(first) == fingerprint(other_order)
    assert fingerprint(first) != fingerprint(first[:-1])
    assert fingerprint(["ab", "c"]) != fingerprint(["a", "bc"])


def test_pydoc_task_documents_are_never_pretrained_on(tmp_path):
    """A package that copies held-out stdlib docstrings (as vendored backports do), read
    together with the standard library: none of the tasks' texts gets in."""
    held = [r.text for r in task_docstring_records()[:3]]
    root = tmp_path / "site"
    pkg = root / "backport"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("".join(f'def f{i}():\n    """{t}"""\n' for i, t in enumerate(held)))
    (pkg / "copied.txt").write_text(held[0])
    docs = scan("stdlib", str(root), holdout_tasks=True)
    corpus = set(docs)
    for name in ("pydoc_module", "pydoc_name"):
        task = build_task(name, None)
        assert not any(e.input in corpus for e in task.train + task.test), name
    assert not corpus & {r.text for r in task_docstring_records()}
    whole = set(scan("stdlib", str(root), holdout_tasks=False))
    assert set(held) <= whole  # the rule is what removed them
    assert len(docs) == len(corpus)  # no duplicates


def test_default_roots_and_the_builtin_tokenizer(monkeypatch, tmp_path):
    """``data.source=site_docs`` needs no data.tokenizer, reads stdlib then site-packages,
    and names its content by fingerprint."""
    import spactor.data.site_docs as site_docs

    root = fake_site_packages(tmp_path / "site")
    monkeypatch.setattr(site_docs, "site_packages_dirs", lambda: [root])
    cfg = DataConfig(source="site_docs", tokenizer_vocab_size=8000)
    source = build_source(cfg)
    assert isinstance(source, SiteDocsSource)
    docs = source.docs
    stdlib = scan("stdlib", holdout_tasks=True)
    assert docs[: len(stdlib)] == stdlib and docs[len(stdlib):] == scan(str(root), holdout_tasks=True)
    assert f"fingerprint {fingerprint(docs)[:16]}" in source.describe()
    tokenizer = load_tokenizer(cfg)
    assert tokenizer.decode(tokenizer.encode(README[:20])) == README[:20]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"roots": []}, "data.source_options.roots: [] — a non-empty list"),
        ({"roots": "stdlib"}, "data.source_options.roots: 'stdlib' — a non-empty list"),
        ({"roots": ["/no/such/dir"]}, "data.source_options.roots: '/no/such/dir' — no such directory"),
        ({"min_chars": 0}, "data.source_options.min_chars: 0 — must be an integer >= 1"),
        ({"docstrings": False, "doc_files": False, "roots": ["site-packages"]}, "nothing to read"),
        ({"max_document_chars": 0}, "data.source_options.max_document_chars: 0"),
    ],
)
def test_bad_options_are_one_line(options, message):
    with pytest.raises(ConfigError) as e:
        build_source(DataConfig(source="site_docs", source_options=options))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_cli_reports_a_bad_root_in_one_line(tmp_path, capsys):
    from spactor.cli import main

    code = main(["train", "sc", "model.size=tiny", "data.source=site_docs",
                 f"data.source_options.roots=[{tmp_path / 'nope'}]", f"run.dir={tmp_path / 'run'}",
                 "runtime.device=cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "data.source_options.roots" in err and "no such directory" in err
    assert "Traceback" not in err


def test_prose_filter():
    assert reads_as_prose("This line has more than four words in it.")
    assert not reads_as_prose("numpy>=1.0\ntorch\npyyaml\n")
    assert not reads_as_prose("")
