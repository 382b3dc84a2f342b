"""``runtime.compile=model``: the whole training forward as one compiled graph gives the
eager losses, and a knob a schedule changes every step (Fast-ELECTRA's temperature) or a
stage switch does not make Dynamo recompile on every step.

Compiled with ``aot_eager`` (Dynamo's capture and AOTAutograd, no Inductor codegen): the
graphs, guards and recompiles are the runtime's, the numerics stay eager's, so the losses
must agree to rounding — a knob frozen into a graph at a stale value would show. (With
Inductor, fused kernels round differently and a near-tie in the generator's Gumbel
argmax can flip a sampled token: 1e-3 relative on Fast-ELECTRA's loss here. Per-block
Inductor compile is checked in test_parallel.py.)"""

from __future__ import annotations

import functools

import pytest
import torch
from torch._dynamo.utils import counters

from spactor.config import ConfigError, load_config
from spactor.plugins import load_plugins
from spactor.train.loop import train
from spactor.train.metrics import read_metrics

load_plugins()


def run_losses(recipe, overrides, run_dir, *extra) -> list[dict]:
    resolved = load_config(recipe, [*overrides, f"run.dir={run_dir}", "trainer.max_steps=6",
                                    "trainer.log_every=2", "lr_schedule.warmup_steps=100",
                                    "model.dropout=0.0", "runtime.count_flops=false", *extra])
    train(resolved)
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


@pytest.mark.parametrize(("recipe", "extra", "most_graphs"), [
    # stage 1 (SC + MLM + RTD), then SC; each with and without the logging step's metrics
    ("spactor", ["schedules.two_stage.tau=3"], 4),
    # the temperature changes every step (a generator trained jointly: no checkpoint to
    # load): logging and other steps, and the one recompile that makes it symbolic
    ("fast_electra", ["schedules.temperature.t0=3.0", "objectives.rtd.frozen=false"], 3),
])
def test_whole_forward_compile_matches_eager_without_recompiling_each_step(recipe, extra, most_graphs,
                                                                          tiny_overrides,
                                                                          tmp_path, monkeypatch):
    eager = run_losses(recipe, tiny_overrides, tmp_path / "eager", *extra)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    counters.clear()
    compiled = run_losses(recipe, tiny_overrides, tmp_path / "compiled", *extra, "runtime.compile=model")
    graphs = counters["stats"]["unique_graphs"]
    breaks = dict(counters["graph_break"])
    torch._dynamo.reset()
    assert [r["step"] for r in compiled] == [r["step"] for r in eager]
    for got, want in zip(compiled, eager):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-6), got["step"]
    assert not breaks
    assert 2 <= graphs <= most_graphs, graphs  # for 6 steps: not one per step


def test_whole_forward_compile_is_refused_under_fsdp(tiny_overrides, tmp_path):
    with pytest.raises(ConfigError, match=r"runtime\.compile: 'model' — .*runtime\.compile=blocks"):
        load_config("sc", [*tiny_overrides, "runtime.compile=model", "runtime.fsdp=true",
                           "runtime.device=cuda"])


@pytest.mark.parametrize(("value", "message"), [("fast", "must be one of none, blocks, model")])
def test_compile_mode_names_its_choices(tiny_overrides, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config("sc", [*tiny_overrides, f"runtime.compile={value}"])
