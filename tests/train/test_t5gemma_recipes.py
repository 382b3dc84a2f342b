"""Every encoder-decoder recipe trains with ``model.arch=t5gemma`` given on the command
line (T5's keys the recipe sets, such as ``version``, are dropped with a notice): a few
tiny steps each, finite losses. ``spactor_frozen`` loads the generator of a t5gemma
``spactor`` run (the generator is sized from the discriminator's shape)."""

from __future__ import annotations

import math

import pytest

from spactor.config import load_config, recipe_names
from spactor.plugins import load_plugins
from spactor.train.loop import train
from spactor.train.metrics import read_metrics

load_plugins()

STEPS = 3
ENCODER_DECODER = [r for r in recipe_names() if load_config(r).cfg.model.get("arch") == "t5"]
# Shorten the switches so a 3-step run sees a second stage where the recipe has one.
STAGES = {
    "spactor": ["schedules.two_stage.tau=2"],
    "ul2_rtd": ["schedules.two_stage.tau=2"],
    "spactor_three_stage": ["schedules.curriculum.stages.hybrid.until_step=1",
                            "schedules.curriculum.stages.handover.until_step=2"],
    "spactor_ul2_sc": ["schedules.curriculum.stages.hybrid.until_step=1",
                       "schedules.curriculum.stages.ul2.until_step=2"],
}


def tiny_t5gemma_run(recipe: str, overrides: list[str], run_dir, *extra: str) -> list[dict]:
    resolved = load_config(recipe, [*overrides, "model.arch=t5gemma", f"run.dir={run_dir}",
                                    f"trainer.max_steps={STEPS}", "runtime.count_flops=false",
                                    "lr_schedule.warmup_steps=2", *extra])
    assert type(resolved.model.config).__name__ == "T5GemmaConfig"
    train(resolved)
    return read_metrics(run_dir / "metrics.jsonl")


@pytest.fixture(scope="module")
def generator_run(tiny_overrides, tmp_path_factory) -> str:
    run_dir = tmp_path_factory.mktemp("gen-t5gemma")
    tiny_t5gemma_run("spactor", tiny_overrides, run_dir, "trainer.max_steps=1")
    return str(run_dir)


def test_every_encoder_decoder_recipe_is_listed():
    assert {"sc", "spactor", "ul2", "ul2_rtd", "spactor_frozen", "spactor_three_stage",
            "spactor_ul2_sc", "spactor_mask_curriculum"} <= set(ENCODER_DECODER)


@pytest.mark.parametrize("recipe", ENCODER_DECODER)
def test_recipe_trains_with_t5gemma(recipe, tiny_overrides, tmp_path, request):
    extra = list(STAGES.get(recipe, []))
    if recipe == "spactor_frozen":
        extra.append(f"objectives.rtd.generator_checkpoint={request.getfixturevalue('generator_run')}")
    if recipe.endswith("large"):
        extra.append("model.size=tiny")
    records = tiny_t5gemma_run(recipe, tiny_overrides, tmp_path / recipe, *extra)
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses), losses
    if recipe in STAGES:
        assert records[-1]["stage"] > records[0]["stage"]


def test_a_t5gemma_run_fine_tunes_and_previews(tiny_overrides, tmp_path, capsys):
    """``spactor evaluate`` (text-to-text fine-tuning through encode/decode) and ``spactor
    preview`` on a t5gemma run's recipe."""
    from spactor.cli import main
    from spactor.evaluation.finetune import FinetuneConfig, evaluate_run

    run = tmp_path / "run"
    tiny_t5gemma_run("sc", tiny_overrides, run, "trainer.max_steps=2", "trainer.checkpoint_every=2")
    budget = FinetuneConfig(steps=2, batch_size=4, max_input_length=32, max_target_length=4, eval_batch_size=64)
    [(_, result)] = evaluate_run(run, "pydoc_module", step=2, seeds=1, finetune=budget, show_progress=False)
    assert 0.0 <= result.score <= 1.0
    capsys.readouterr()
    assert main(["preview", "sc", "--json", *tiny_overrides, "model.arch=t5gemma"]) == 0
    assert '"encoder_input"' in capsys.readouterr().out
