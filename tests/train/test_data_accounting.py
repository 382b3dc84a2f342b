"""What the data sources skip reaches the run's metrics and summary, the validation
stream's included (``data/skipped/val/<reason>``)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys


def test_a_truncated_gzip_is_counted_in_train_and_validation(tmp_path, english_corpus, tiny_overrides):
    lines = b"".join(json.dumps({"text": p.strip()}).encode() + b"\n"
                     for doc in english_corpus for p in doc.split("\n\n") if len(p.strip()) > 40)
    full = gzip.compress(lines)
    corpus = tmp_path / "c4-part.jsonl.gz"
    corpus.write_bytes(full[: len(full) * 3 // 4])  # cut mid-file
    numeric = tmp_path / "numbers.jsonl"
    numeric.write_text(json.dumps({"text": 12345}) + "\n" + json.dumps({"text": "a sentence of words"}) + "\n")
    overrides = [o for o in tiny_overrides if not o.startswith(("data.source=", "data.paths="))]
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "spactor", "train", "sc", *overrides, "data.source=jsonl",
         f"data.paths=[{corpus},{numeric}]", "data.validation_fraction=0.2", "runtime.count_flops=false",
         "trainer.max_steps=2", "trainer.eval_batches=1000", f"run.dir={run_dir}"],
        capture_output=True, text=True, check=False, timeout=600,
    )
    assert out.returncode == 0, out.stderr
    last = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    # The validation pass read the whole held-out split, so it met both bad records.
    assert last["data/skipped/val/corrupt_file"] == 1
    assert last["data/skipped/val/non_string_field"] == 1
    assert "data/skipped/val/missing_field" not in last
    summary = next(line for line in out.stdout.splitlines() if line.startswith("data: "))
    assert "validation skipped 2 records: non_string_field=1, corrupt_file=1" in summary
