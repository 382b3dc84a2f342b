"""Bad data: fatal cases fail before training with a clear DataError; recoverable ones
are skipped, counted by reason, and surfaced by the loader (never silently)."""

from __future__ import annotations

import gzip
import json
import logging
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from spactor.data.loader import build_loader, skipped_counts
from spactor.data.sources import (
    SKIP_REASONS,
    DataError,
    JsonlSource,
    ListSource,
    TextSource,
    describe_skipped,
    first_document,
    probing,
)
from spactor.registry import SOURCES

GOOD = "A perfectly ordinary English sentence about pre-training text models on clusters."


def write_jsonl(path: Path, lines: list[str | bytes]) -> Path:
    raw = b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def doc(text: str, **extra) -> str:
    return json.dumps({"text": text, **extra})


def counts(source) -> dict[str, int]:
    return {k: v for k, v in source.skipped.items() if v}


# --------------------------------------------------------------------------- fatal cases


@pytest.mark.parametrize("kind", ["text", "jsonl"])
def test_missing_paths_and_empty_globs_fail_at_construction(kind, tmp_path):
    factory, cfg_cls = SOURCES.get(kind).factory, SOURCES.get(kind).config_cls
    with pytest.raises(DataError, match=r"no such file: .*absent"):
        factory(cfg_cls(paths=[str(tmp_path / "absent.txt")]))
    with pytest.raises(DataError, match="glob matches no files"):
        factory(cfg_cls(paths=[str(tmp_path / "shard-*.jsonl.gz")]))
    (tmp_path / "real.txt").write_text(GOOD)
    with pytest.raises(DataError, match=r"no such file: .*typo"):  # one bad path among good ones
        factory(cfg_cls(paths=[str(tmp_path / "real.txt"), str(tmp_path / "typo.txt")]))


@pytest.mark.parametrize("kind", ["text", "jsonl"])
def test_all_files_empty_is_zero_usable_documents(kind, tmp_path):
    paths = []
    for i in range(2):
        (tmp_path / f"empty-{i}").write_bytes(b"" if i == 0 else b"\n\n  \n" if kind == "text" else b"")
        paths.append(str(tmp_path / f"empty-{i}"))
    src = TextSource(paths) if kind == "text" else JsonlSource(paths)
    with pytest.raises(DataError, match="zero usable documents") as err:
        first_document(src)
    assert "empty_file=2" in str(err.value)  # the message says why
    assert counts(src) == {}  # a probe does not count


def test_source_whose_every_record_is_bad_is_zero_usable_documents(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", ["{oops", doc("   "), json.dumps({"body": GOOD})])
    with pytest.raises(
        DataError, match="zero usable documents.*invalid_json=1.*missing_field=1.*empty_text=1"
    ):
        build_loader(JsonlSource([str(path)]), None, 8, 2)  # fails before any tokenizing


def test_missing_data_path_stops_the_cli_before_training(tiny_data, tmp_path):
    overrides = [o for o in tiny_data if not o.startswith("data.paths=")]
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "spactor",
            "train",
            "quickstart",
            *overrides,
            f"data.paths=[{tmp_path / 'nowhere' / 'c4-*.json.gz'}]",
            "trainer.max_steps=2",
            f"run.dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "DataError" in lines[0] and "glob matches no files" in lines[0]
    assert "Traceback" not in out.stderr
    assert not (run_dir / "metrics.jsonl").exists() or not (run_dir / "metrics.jsonl").read_text()


# --------------------------------------------------------------------------- recoverable


def test_empty_files_are_skipped_and_counted(tmp_path):
    (tmp_path / "a.txt").write_text(GOOD + "\n")
    (tmp_path / "b.txt").write_text("")
    (tmp_path / "c.txt").write_text("\n   \n")
    (tmp_path / "d.txt").write_text("last one\n")
    src = TextSource([str(tmp_path / "*.txt")])
    assert list(src.documents()) == [(0, GOOD), (1, "last one")]
    assert counts(src) == {"empty_file": 2}

    write_jsonl(tmp_path / "x.jsonl", [doc(GOOD)])
    (tmp_path / "y.jsonl").write_bytes(b"")
    (tmp_path / "z.jsonl.gz").write_bytes(gzip.compress(b""))
    src = JsonlSource([str(tmp_path / "x.jsonl"), str(tmp_path / "y.jsonl"), str(tmp_path / "z.jsonl.gz")])
    assert list(src) == [GOOD]
    assert counts(src) == {"empty_file": 2}


def test_invalid_utf8_documents_are_skipped_not_repaired(tmp_path, caplog):
    path = tmp_path / "mixed.txt"
    path.write_bytes(
        b"first paragraph\nstill first\n\n"
        b"mojibake \xff\xfe here\n\n"  # not UTF-8: the whole paragraph goes
        b"caf\xc3\xa9 is fine\n\n"
        b"truncated sequence \xe2\x82\n"
    )
    src = TextSource([str(path)])
    with caplog.at_level(logging.WARNING, logger="spactor.data.sources"):
        docs = list(src.documents())
    assert docs == [(0, "first paragraph\nstill first"), (2, "café is fine")]
    assert counts(src) == {"invalid_utf8": 2}
    assert "invalid_utf8" in caplog.text and str(path) in caplog.text  # the first one is logged
    assert len(caplog.records) == 1  # later ones are only counted
    assert not any("\ufffd" in text for _, text in docs)


def test_jsonl_invalid_bytes_count_only_when_in_the_text(tmp_path):
    path = write_jsonl(
        tmp_path / "c4.jsonl",
        [
            doc(GOOD),
            b'{"text": "bad \xff byte"}',
            b'{"text": "' + GOOD.encode() + b'", "url": "http://x/\xff"}',  # junk outside the text: fine
            doc("lone surrogate \ud800 from an escape"),  # json.dumps writes it as \\ud800
            doc("last"),
        ],
    )
    src = JsonlSource([str(path)])
    assert list(src.documents()) == [(0, GOOD), (2, GOOD), (4, "last")]
    assert counts(src) == {"invalid_utf8": 2}


def test_other_encodings_decode_without_skips(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    src = SOURCES.get("text").factory(SOURCES.get("text").config_cls(paths=[str(path)], encoding="latin-1"))
    assert list(src) == ["café crème"] and counts(src) == {}


def test_jsonl_bad_lines_are_skipped_and_counted(tmp_path):
    path = write_jsonl(
        tmp_path / "x.jsonl.gz",
        [doc(GOOD), "{not json", "", "[1, 2]", json.dumps({"txt": GOOD}), doc(""), doc(7), doc("tail")],
    )
    src = JsonlSource([str(path)])
    assert list(src.documents()) == [(0, GOOD), (7, "tail")]  # index = line number, stable
    assert counts(src) == {"invalid_json": 2, "missing_field": 2, "non_string_field": 1, "empty_text": 1}


def test_enormous_lines_are_skipped_without_holding_them(tmp_path):
    huge = "x" * 3_000_000
    path = write_jsonl(tmp_path / "big.jsonl", [doc(GOOD), doc(huge), doc("after")])
    src = JsonlSource([str(path)])  # default max_document_chars: 1,000,000
    assert list(src.documents()) == [(0, GOOD), (2, "after")]
    assert counts(src) == {"too_long": 1}

    # A tighter limit from the config (data.source_options.max_document_chars).
    cfg = SOURCES.get("jsonl").config_cls(paths=[str(path)], max_document_chars=20)
    small = SOURCES.get("jsonl").factory(cfg)
    assert list(small.documents()) == [(2, "after")] and counts(small) == {"too_long": 2}
    # None turns the check off.
    assert len(list(JsonlSource([str(path)], max_document_chars=None))) == 3

    # A "line" far beyond the raw-line bound (a binary blob with no newline) is read past.
    blob = tmp_path / "blob.jsonl"
    blob.write_text(doc("before") + "\n" + "y" * 700_000 + "\n" + doc("after") + "\n")
    src = JsonlSource([str(blob)], max_document_chars=100_000 // 6 - 11_000)  # raw bound ~ 100k + 64k
    assert list(src.documents()) == [(0, "before"), (2, "after")]
    assert counts(src) == {"too_long": 1}


def test_text_paragraph_limits(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("short one\n\n" + ("word " * 50 + "\n") * 10 + "\n" + "z" * 5000 + "\nmore\n\nend\n")
    src = TextSource([str(path)], max_document_chars=300)
    assert list(src.documents()) == [(0, "short one"), (3, "end")]
    assert counts(src) == {"too_long": 2}
    with pytest.raises(DataError, match="max_document_chars"):
        TextSource([str(path)], max_document_chars=0)


def test_truncated_gzip_keeps_what_came_before(tmp_path):
    full = gzip.compress(b"".join(doc(f"document {i} " + GOOD).encode() + b"\n" for i in range(2000)))
    bad = tmp_path / "a-truncated.jsonl.gz"
    bad.write_bytes(full[: len(full) // 2])
    not_gzip = tmp_path / "b-not-gzip.jsonl.gz"
    not_gzip.write_bytes(b"this was never gzip\n")
    fine = write_jsonl(tmp_path / "c-fine.jsonl", [doc("after the damage")])
    src = JsonlSource([str(bad), str(not_gzip), str(fine)])
    docs = list(src)
    assert 0 < len(docs) - 1 < 2000 and docs[0].startswith("document 0 ") and docs[-1] == "after the damage"
    assert counts(src) == {"corrupt_file": 2}
    # Deterministic: the same documents (and numbering) on every read, so resuming works.
    assert list(JsonlSource([str(bad), str(not_gzip), str(fine)]).documents()) == list(src.documents())


def test_each_bad_record_is_counted_by_exactly_one_shard(tmp_path):
    paths = [
        write_jsonl(tmp_path / "1.jsonl", [doc("fine"), "{x", doc("z" * 50), doc("fine")]),
        write_jsonl(tmp_path / "2.jsonl", []),
        write_jsonl(tmp_path / "3.jsonl", [b'{"text": "\xff"}', doc("fine"), "{y"]),
        write_jsonl(tmp_path / "4.jsonl", []),
    ]
    whole = JsonlSource([str(p) for p in paths], max_document_chars=40)
    list(whole.documents())
    total: dict[str, int] = {}
    for shard in range(3):
        part = JsonlSource([str(p) for p in paths], max_document_chars=40)
        list(part.documents(0, shard, 3))
        for k, v in part.skipped.items():
            total[k] = total.get(k, 0) + v
    assert {k: v for k, v in total.items() if v} == counts(whole)
    assert counts(whole) == {"invalid_json": 2, "too_long": 1, "invalid_utf8": 1, "empty_file": 2}


def test_probing_leaves_counts_exactly_as_they_were(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", ["{bad", doc("x" * 30), doc("short and fine")])
    src = JsonlSource([str(path)], max_document_chars=20)
    before = dict(src.skipped)
    with probing(src):
        list(src)
        assert counts(src) == {"invalid_json": 1, "too_long": 1}
    assert src.skipped == before  # also no new "too_long: 0" key


def test_describe_skipped():
    assert describe_skipped({"invalid_json": 0}) == "no records skipped"
    assert describe_skipped({"invalid_json": 1}) == "skipped 1 record: invalid_json=1"
    assert describe_skipped({"invalid_json": 1200, "too_long": 3, "empty_file": 0}) == (
        "skipped 1,203 records: invalid_json=1,200, too_long=3"
    )
    src = ListSource(["a"])
    src._skip("too_long", "somewhere")
    assert "skipped: too_long=1" in src.describe()


# --------------------------------------------------------------------------- the loader


@pytest.fixture
def dirty_jsonl(tmp_path, english_corpus) -> Path:
    """~60 usable documents with 9 bad lines spread through them, and an empty file."""
    lines: list[str | bytes] = []
    for i, text in enumerate(english_corpus[:60]):
        lines.append(doc(text[:150]))
        if i % 7 == 3:
            lines.append(["{broken", json.dumps({"no_text": 1}), b'{"text": "\xc3\x28"}'][i % 3])
    write_jsonl(tmp_path / "0.jsonl", lines)
    write_jsonl(tmp_path / "1.jsonl", [])
    return tmp_path


def expected_counts(root: Path) -> dict[str, int]:
    src = JsonlSource([str(root / "*.jsonl")])
    list(src.documents())
    return {k: v for k, v in src.skipped.items() if v}


def nonzero(c: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in c.items() if v}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_surfaces_counts_once_per_record(dirty_jsonl, small_tokenizer, num_workers):
    want = expected_counts(dirty_jsonl)
    assert sum(want.values()) == 10 and want["empty_file"] == 1
    loader = build_loader(
        JsonlSource([str(dirty_jsonl / "*.jsonl")]),
        small_tokenizer,
        32,
        4,
        num_workers=num_workers,
        shuffle_window=8,
    )
    got = skipped_counts(loader)
    assert set(SKIP_REASONS) <= set(got) and sum(got.values()) == 0  # nothing read yet (probes don't count)
    it = iter(loader)
    for _ in range(120):  # several epochs of this small corpus (~25 batches each)
        next(it)
    got = skipped_counts(loader)
    assert nonzero(got) == want  # each bad record once, not once per epoch


def test_validation_passes_do_not_inflate_the_train_counts(dirty_jsonl, small_tokenizer):
    src = JsonlSource([str(dirty_jsonl / "*.jsonl")])
    train = build_loader(src, small_tokenizer, 32, 4, validation_fraction=0.2, shuffle_window=0)
    it = iter(train)
    for _ in range(40):
        next(it)
        list(build_loader(src, small_tokenizer, 32, 4, split="validation", validation_fraction=0.2))
    assert nonzero(skipped_counts(train)) == expected_counts(dirty_jsonl)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_counts_survive_a_resume_without_double_counting(dirty_jsonl, small_tokenizer, num_workers):
    def make():
        return build_loader(
            JsonlSource([str(dirty_jsonl / "*.jsonl")]),
            small_tokenizer,
            32,
            4,
            num_workers=num_workers,
            shuffle_window=8,
            encode_batch_size=4,
        )

    loader = make()
    it = iter(loader)
    for _ in range(3):  # stop early in the first epoch, mid-block
        next(it)
    state = pickle.loads(pickle.dumps(loader.state_dict()))
    mid = skipped_counts(loader)
    del it

    assert sum(mid.values()) > 0

    resumed = make()
    resumed.load_state_dict(state)  # applied when the iterator starts
    it = iter(resumed)
    next(it)
    after_one = skipped_counts(resumed)
    assert all(after_one[k] >= v for k, v in mid.items())  # carried over, not restarted
    for _ in range(120):
        next(it)
    assert nonzero(skipped_counts(resumed)) == expected_counts(dirty_jsonl)
