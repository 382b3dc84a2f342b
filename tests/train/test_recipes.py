"""Every shipped recipe trains at tiny size on CPU with a finite, falling loss."""

from __future__ import annotations

import math

import pytest

from spactor.config import load_config, recipe_names
from spactor.plugins import load_plugins
from spactor.train.metrics import read_metrics
from spactor.train.loop import train

load_plugins()

NEEDS_GENERATOR = {"fast_electra": "electra", "spactor_frozen": "spactor"}
STEPS = 10


def short_schedule(recipe: str) -> list[str]:
    """A learning rate that moves a tiny model in ten steps (recipes warm up for 10K)."""
    if load_config(recipe).lr_schedule.type == "rsqrt":
        return ["lr_schedule.warmup_steps=100"]  # Adafactor at lr 0.1
    return ["lr_schedule.warmup_steps=2", "lr_schedule.lr=1e-3"]


def tiny_run(recipe: str, overrides: list[str], run_dir, *extra: str) -> list[dict]:
    resolved = load_config(recipe, [*overrides, f"run.dir={run_dir}", f"trainer.max_steps={STEPS}",
                                    *short_schedule(recipe), *extra])
    train(resolved)
    return read_metrics(run_dir / "metrics.jsonl")


@pytest.fixture(scope="module")
def generator_runs(tiny_overrides, tmp_path_factory) -> dict[str, str]:
    """Short runs whose generators the frozen-generator recipes load."""
    runs = {}
    for source in sorted(set(NEEDS_GENERATOR.values())):
        run_dir = tmp_path_factory.mktemp(f"gen-{source}")
        tiny_run(source, tiny_overrides, run_dir, "trainer.max_steps=2")
        runs[source] = str(run_dir)
    return runs


@pytest.mark.parametrize("recipe", recipe_names())
def test_recipe_trains_at_tiny_size(recipe, tiny_overrides, generator_runs, tmp_path):
    extra = []
    if recipe in NEEDS_GENERATOR:
        extra.append(f"objectives.rtd.generator_checkpoint={generator_runs[NEEDS_GENERATOR[recipe]]}")
    records = tiny_run(recipe, tiny_overrides, tmp_path / recipe, *extra)
    losses = [r["loss"] for r in records]
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses), losses
    assert sum(losses[-3:]) < sum(losses[:3]), losses


def test_spactor_logs_every_loss_and_rtd_metric(tiny_overrides, tmp_path):
    records = tiny_run("spactor", tiny_overrides, tmp_path / "spactor")
    for key in ("loss/span_corruption", "loss/rtd", "loss/rtd_generator", "rtd/generator_accuracy", "rtd/generator_sampled_original",
                "rtd/replaced_fraction", "rtd/accuracy", "rtd/precision", "rtd/recall", "rtd/auc",
                "knob/objectives.rtd.weight", "knob/objectives.mlm_mask.ratio"):
        assert key in records[0], key
    assert all(r["stage"] == 1 for r in records)


def test_ul2_rtd_logs_ul2_and_rtd_losses_then_switches_to_ul2(tiny_overrides, tmp_path):
    records = tiny_run("ul2_rtd", tiny_overrides, tmp_path / "ul2_rtd", "trainer.max_steps=4",
                       "schedules.two_stage.tau=2", "runtime.count_flops=false")
    for key in ("loss/ul2", "loss/rtd", "loss/rtd_generator", "ul2/accuracy", "rtd/replaced_fraction"):
        assert key in records[0], key
    assert [r["stage"] for r in records] == [1, 1, 2, 2]
    assert "loss/ul2" in records[-1] and "loss/rtd" not in records[-1]


def test_spactor_ul2_sc_runs_its_three_stages(tiny_overrides, tmp_path):
    import torch.distributed.checkpoint as dcp

    stages = ["schedules.curriculum.stages.hybrid.until_step=2",
              "schedules.curriculum.stages.ul2.until_step=4"]
    records = tiny_run("spactor_ul2_sc", tiny_overrides, tmp_path / "r", "trainer.max_steps=6", *stages,
                       "runtime.count_flops=false", "trainer.checkpoint_every=2",
                       "trainer.keep_checkpoints=3", "trainer.eval_every=1")
    assert [r["stage"] for r in records] == [1, 1, 2, 2, 3, 3]
    # X_c against X̂_c while the generator runs; the clean pass evaluates the last stage's SC.
    assert [("val/clean/loss/span_corruption" in r) for r in records] == [True, True, False, False, False, False]
    assert [("val/loss/ul2" in r) for r in records] == [False, False, True, True, False, False]
    assert [("knob/objectives.ul2.weight" in r) for r in records] == [False, False, True, True, False, False]
    switches = [(r["stage_switch_step"], r["released"]) for r in records if "stage_switch_step" in r]
    assert switches == [(2, ["mlm_mask", "rtd"]), (4, ["ul2"])]  # RTD's modules go on entering stage 2
    assert [("loss/ul2" in r) for r in records] == [False, False, True, True, False, False]
    assert [("loss/rtd" in r) for r in records] == [True, True, False, False, False, False]
    assert [("loss/span_corruption" in r) for r in records] == [True, True, False, False, True, True]

    def saved_keys(step):
        path = tmp_path / "r" / "checkpoints" / f"step_{step:08d}" / "dcp"
        return dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata

    assert any(k.startswith("model.objectives.rtd.") for k in saved_keys(2))
    rtd = ("model.objectives.rtd.", "optim.state.objectives.rtd.")
    assert not any(k.startswith(rtd) for k in saved_keys(4))
