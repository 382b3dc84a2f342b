"""End-to-end runner tests at tiny size on CPU."""

from __future__ import annotations

import math

import pytest

from spactor.config import load_config
from spactor.data.chunking import span_corruption_lengths
from spactor.plugins import load_plugins
from spactor.train.metrics import read_metrics
from spactor.train.loop import train

load_plugins()


def run(recipe: str, overrides: list[str], tmp_path, name: str, *extra: str, resume: bool = False):
    run_dir = tmp_path / name
    resolved = load_config(recipe, [*overrides, f"run.dir={run_dir}", *extra])
    result = train(resolved, resume_dir=run_dir if resume else None)
    return result, read_metrics(run_dir / "metrics.jsonl")


def test_sc_trains_and_logs_required_fields(tiny_overrides, tmp_path):
    result, records = run("sc", tiny_overrides, tmp_path, "sc", "trainer.max_steps=12", "lr_schedule.warmup_steps=100")
    assert [r["step"] for r in records] == list(range(1, 13))
    for key in ("step", "stage", "loss", "loss/span_corruption", "lr", "tokens_seen", "tokens_per_s",
                "knob/objectives.span_corruption.weight", "flops_per_step", "flops_cum", "flops_normalized", "mfu"):
        assert key in records[0], key
    losses = [r["loss"] for r in records]
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # learning
    raw_length, _ = span_corruption_lengths(64, 0.15, 3.0)
    assert records[-1]["tokens_seen"] == 12 * 4 * raw_length
    assert "val/loss/span_corruption" in records[-1]
    assert (result.run_dir / "config.yaml").is_file()
    assert (result.run_dir / "spiece.model").is_file()
    assert (result.run_dir / "checkpoints" / "step_00000012" / "manifest.json").is_file()


def test_resume_matches_uninterrupted_run(tiny_overrides, tmp_path):
    common = ["trainer.grad_accum_steps=2", "model.dropout=0.1"]  # dropout: RNG state must resume too
    _, full = run("sc", tiny_overrides + common, tmp_path, "full", "trainer.max_steps=8")
    run("sc", tiny_overrides + common, tmp_path, "part", "trainer.max_steps=5")
    _, resumed = run("sc", tiny_overrides + common, tmp_path, "part", "trainer.max_steps=8", resume=True)
    assert [r["step"] for r in resumed] == list(range(1, 9))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]  # bitwise on CPU
    assert [r["flops_cum"] for r in resumed] == [r["flops_cum"] for r in full]


def test_existing_run_dir_resumes_unless_fresh(tiny_overrides, tmp_path):
    run("sc", tiny_overrides, tmp_path, "auto", "trainer.max_steps=3")
    result, records = run("sc", tiny_overrides, tmp_path, "auto", "trainer.max_steps=5")
    assert result.start_step == 3 and len(records) == 5
    result, records = run("sc", tiny_overrides, tmp_path, "auto", "trainer.max_steps=2", "run.fresh=true")
    assert result.start_step == 0 and [r["step"] for r in records] == [1, 2]


@pytest.mark.parametrize("recipe", ["sc", "spactor"])  # spactor: the generator's sampling noise is per row
def test_grad_accumulation_normalises_by_global_count(tiny_overrides, tmp_path, recipe):
    steps = "trainer.max_steps=3"
    _, one = run(recipe, tiny_overrides, tmp_path, "acc1", steps, "trainer.grad_accum_steps=1")
    _, two = run(recipe, tiny_overrides, tmp_path, "acc2", steps, "trainer.grad_accum_steps=2")
    for a, b in zip(one, two):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        for key in (k for k in a if k.startswith("loss/")):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key
