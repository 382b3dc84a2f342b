"""Every shipped recipe resumes bitwise through the command's own resume path.

``spactor train --resume R`` reloads ``R/config.yaml`` (:func:`spactor.cli.load_saved_config`)
and compares it with what the run saved; an optimizer, objective or schedule whose config
does not survive that round trip (AdamW's ``betas``: a tuple saved as a YAML list) made a
whole family of runs impossible to resume. Each recipe here trains 4 steps straight, and
again with a SIGTERM after step 2 (checkpoint, stop), resumed with no overrides as the
``resume with:`` line the command prints says: the losses must be identical.
"""

from __future__ import annotations

import os
import signal

import pytest

from spactor.cli import load_saved_config
from spactor.config import load_config, recipe_names
from spactor.plugins import load_plugins
from spactor.train.callbacks.base import Callback
from spactor.train.loop import train
from spactor.train.metrics import read_metrics

load_plugins()

NEEDS_GENERATOR = {"fast_electra": "electra", "spactor_frozen": "spactor"}
STEPS = 4


def _settings(recipe: str) -> list[str]:
    fast = ["runtime.count_flops=false", "trainer.checkpoint_every=2", "trainer.log_every=1"]
    if load_config(recipe).lr_schedule.type == "rsqrt":
        return [*fast, "lr_schedule.warmup_steps=100"]
    return [*fast, "lr_schedule.warmup_steps=2", "lr_schedule.lr=1e-3"]


class SigtermAfter(Callback):
    """A scheduler's SIGTERM arriving during step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def post_step(self, state, out) -> None:
        if state.step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture(scope="module")
def generator_runs(tiny_overrides, tmp_path_factory) -> dict[str, str]:
    runs = {}
    for source in sorted(set(NEEDS_GENERATOR.values())):
        run_dir = tmp_path_factory.mktemp(f"gen-{source}")
        train(load_config(source, [*tiny_overrides, *_settings(source), f"run.dir={run_dir}",
                                   "trainer.max_steps=1"]))
        runs[source] = str(run_dir)
    return runs


@pytest.mark.parametrize("recipe", recipe_names())
def test_recipe_resumes_bitwise_through_the_saved_config(recipe, tiny_overrides, generator_runs, tmp_path):
    extra = [*tiny_overrides, *_settings(recipe)]
    if recipe in NEEDS_GENERATOR:
        extra.append(f"objectives.rtd.generator_checkpoint={generator_runs[NEEDS_GENERATOR[recipe]]}")
    full, part = tmp_path / "full", tmp_path / "part"
    train(load_config(recipe, [*extra, f"run.dir={full}", f"trainer.max_steps={STEPS}"]))
    stopped = train(load_config(recipe, [*extra, f"run.dir={part}", f"trainer.max_steps={STEPS}"]),
                    callbacks=[SigtermAfter(STEPS // 2)])
    assert stopped.preempted == "SIGTERM" and stopped.steps == STEPS // 2
    result = train(load_saved_config(part / "config.yaml", []), resume_dir=part)
    assert result.start_step == STEPS // 2
    want = [r["loss"] for r in read_metrics(full / "metrics.jsonl")]
    got = [r["loss"] for r in read_metrics(part / "metrics.jsonl")]
    assert len(want) == STEPS and got == want  # bitwise on CPU
