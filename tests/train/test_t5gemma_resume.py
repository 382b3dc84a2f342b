"""A SpacTor stage-1 run on ``t5gemma`` (span corruption, MLM masking, RTD with its
generator) stopped at a checkpoint and resumed gives, step for step, the losses of the run
that never stopped."""

from __future__ import annotations

import subprocess
import sys

from spactor.train.metrics import read_metrics


def test_t5gemma_run_resumes_bitwise(tiny_overrides, tmp_path):
    common = [*tiny_overrides, "model.arch=t5gemma", "trainer.max_steps=6", "lr_schedule.warmup_steps=2",
              "runtime.count_flops=false"]

    def spactor(*args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "spactor", *args], capture_output=True, text=True,
                              timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-3000:]

    full, stopped = tmp_path / "full", tmp_path / "stopped"
    spactor("train", "spactor", *common, f"run.dir={full}")
    spactor("train", "spactor", *common, "trainer.max_steps=3", "trainer.checkpoint_every=3", f"run.dir={stopped}")
    spactor("train", "--resume", str(stopped), "trainer.max_steps=6")
    expected = [r["loss"] for r in read_metrics(full / "metrics.jsonl") if "loss" in r]
    got = [r["loss"] for r in read_metrics(stopped / "metrics.jsonl") if "loss" in r]
    assert len(expected) == 6 and got == expected
