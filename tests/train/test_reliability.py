"""Non-finite losses and preemption: the run follows its policy and loses nothing."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time

import pytest
import torch

from spactor.config import load_config
from spactor.objectives.span_corruption import SpanCorruption
from spactor.plugins import load_plugins
from spactor.train.metrics import read_metrics
from spactor.train.loop import NonFiniteStop, train

load_plugins()


@pytest.fixture
def nan_at_calls(monkeypatch):
    """Make the span-corruption loss NaN on the given (1-based) training calls."""

    def install(calls: set[int]) -> None:
        original = SpanCorruption.loss
        seen = {"n": 0}

        def loss(self, batch, forward, ctx):
            out = original(self, batch, forward, ctx)
            if self.training:
                seen["n"] += 1
                if seen["n"] in calls:
                    out.loss.total = out.loss.total * float("nan")
            return out

        monkeypatch.setattr(SpanCorruption, "loss", loss)

    return install


def run(overrides, run_dir, *extra):
    # no FLOPs dry run: it would call the patched loss once before the first step
    resolved = load_config("sc", [*overrides, f"run.dir={run_dir}", "lr_schedule.warmup_steps=100",
                                  "runtime.count_flops=false", *extra])
    return train(resolved)


def test_skip_drops_the_update_and_counts_it(tiny_overrides, tmp_path, nan_at_calls):
    nan_at_calls({3})
    result = run(tiny_overrides, tmp_path / "r", "trainer.nonfinite=skip", "trainer.max_steps=6")
    records = read_metrics(result.run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[2]["loss"] == "nan"  # logged, visibly
    assert "skipped_nonfinite" not in records[1] and records[2]["skipped_nonfinite"] == 1
    assert records[-1]["skipped_nonfinite"] == 1
    assert all(math.isfinite(r["loss"]) for r in records if r["step"] != 3)


def test_stop_checkpoints_the_last_good_step(tiny_overrides, tmp_path, nan_at_calls):
    nan_at_calls({3})
    with pytest.raises(NonFiniteStop, match="step 3"):
        run(tiny_overrides, tmp_path / "r", "trainer.nonfinite=stop", "trainer.max_steps=6")
    checkpoints = sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir())
    assert checkpoints == ["step_00000002"]
    state = torch.load(tmp_path / "r" / "checkpoints" / "step_00000002" / "local_rank00000.pt", weights_only=False)
    assert state["data"]  # resumable


def test_too_many_consecutive_skips_stop(tiny_overrides, tmp_path, nan_at_calls):
    nan_at_calls({2, 3, 4})
    with pytest.raises(NonFiniteStop, match="3 bad steps in a row"):
        run(tiny_overrides, tmp_path / "r", "trainer.nonfinite=skip", "trainer.max_consecutive_skips=3",
            "trainer.max_steps=8")


def test_sigterm_checkpoints_exits_zero_and_resumes_exactly(tiny_overrides, tmp_path):
    common = [*tiny_overrides, "trainer.max_steps=30", "lr_schedule.warmup_steps=100"]
    full = tmp_path / "full"
    subprocess.run([sys.executable, "-m", "spactor", "train", "sc", *common, f"run.dir={full}"], check=True,
                   capture_output=True)
    run_dir = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "spactor", "train", "sc", *common, f"run.dir={run_dir}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        log = run_dir / "metrics.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert f"spactor train --resume {run_dir}" in stdout
    stopped_at = len((run_dir / "metrics.jsonl").read_text().splitlines())
    assert stopped_at < 30
    assert (run_dir / "checkpoints" / f"step_{stopped_at:08d}").is_dir()

    resumed = subprocess.run(check=False, args=[sys.executable, "-m", "spactor", "train", "--resume", str(run_dir)],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    losses = [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert losses == [json.loads(x)["loss"] for x in (full / "metrics.jsonl").read_text().splitlines()]
