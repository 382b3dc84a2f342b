"""Activation checkpointing and per-block compile change speed and memory, not results."""

from __future__ import annotations

import pytest

from spactor.config import load_config
from spactor.plugins import load_plugins
from spactor.train.metrics import read_metrics
from spactor.train.loop import train

load_plugins()


def losses(overrides, run_dir, *extra) -> list[float]:
    resolved = load_config("spactor", [*overrides, f"run.dir={run_dir}", "trainer.max_steps=3",
                                       "lr_schedule.warmup_steps=100", "model.dropout=0.1",
                                       "runtime.count_flops=false", *extra])
    train(resolved)
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")]


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_gives_the_same_losses(tiny_overrides, tmp_path, mode):
    reference = losses(tiny_overrides, tmp_path / "none")
    checkpointed = losses(tiny_overrides, tmp_path / mode, f"runtime.activation_checkpointing={mode}")
    assert checkpointed == pytest.approx(reference, rel=1e-6)


def test_compiled_blocks_match_eager(tiny_overrides, tmp_path):
    reference = losses(tiny_overrides, tmp_path / "eager", "model.dropout=0.0")
    compiled = losses(tiny_overrides, tmp_path / "compiled", "model.dropout=0.0", "runtime.compile=true")
    assert compiled == pytest.approx(reference, rel=1e-4)
