"""``spactor tokenizer info MODEL``: sizes, special ids, sentinels, a sample encoding."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def spactor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(check=False, args=
        [sys.executable, "-m", "spactor", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, small_tokenizer) -> Path:
    path = tmp_path_factory.mktemp("tok") / "spiece.model"
    small_tokenizer.save(path)
    return path


def test_info_prints_sizes_ids_sentinels_and_a_sample(model_file, small_tokenizer):
    done = spactor("tokenizer", "info", str(model_file))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    tok = small_tokenizer
    assert "pieces:         512 (SentencePiece)" in out
    assert f"embedding rows: {tok.vocab_size}" in out  # 512 + 101 rounded up to 640
    assert f"pad 0 <pad>, eos 1 </s>, unk 2 <unk>, [M] {tok.mask_id}" in out
    assert f"<extra_id_0> = {tok.sentinel_id(0)} down to <extra_id_99> = {tok.sentinel_id(99)}" in out
    assert f"unused rows:    {tok.mask_id + 1}..{tok.vocab_size - 1}" in out
    ids = tok.encode("The quick brown fox jumps over the lazy dog.")
    assert "  ids:          " + " ".join(map(str, ids)) in out
    assert "▁The" in out


def test_info_json_and_a_run_directory(model_file, small_tokenizer):
    done = spactor("tokenizer", "info", str(model_file.parent), "--json", "--text", "Span corruption.")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    tok = small_tokenizer
    assert info["pieces"] == 512 and info["embedding_rows"] == 640
    assert info["special"] == {
        "pad": [0, "<pad>"],
        "eos": [1, "</s>"],
        "unk": [2, "<unk>"],
        "mask": [612, "[M]"],
    }
    assert info["sentinels"] == {"count": 100, "<extra_id_0>": 611, "<extra_id_99>": 512}
    assert info["unused_rows"] == [613, 639]
    assert info["sample"]["ids"] == tok.encode("Span corruption.")
    assert info["sample"]["pieces"] == [tok.id_to_token(i) for i in tok.encode("Span corruption.")]


def test_info_errors_in_one_line(tmp_path):
    done = spactor("tokenizer", "info", str(tmp_path))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"spactor: error: {tmp_path}: no SentencePiece model there")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    done = spactor("tokenizer", "info", str(bad))
    assert done.returncode == 2 and "not a usable SentencePiece model" in done.stderr
