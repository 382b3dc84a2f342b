"""SpacTor's two stages in the runner: the switch at tau, what it releases, and resume
across it."""

from __future__ import annotations

import torch

from spactor.config import load_config
from spactor.plugins import load_plugins
from spactor.runners.builders import build_model, build_objectives, raw_length_for, seeded_generator
from spactor.runners.data import build_data
from spactor.runners.metrics import read_metrics
from spactor.runners.parallel import DistInfo
from spactor.runners.stages import release_stage1, trainable_parameters
from spactor.runners.step import StepContext, TrainModules, train_step
from spactor.runners.trainer import train

load_plugins()

HYBRID_KEYS = ("loss/rtd", "loss/generator", "rtd/auc", "gen/accuracy")


def run(overrides, run_dir, *extra, resume=False):
    resolved = load_config("spactor", [*overrides, f"run.dir={run_dir}", "lr_schedule.warmup_steps=100", *extra])
    train(resolved, resume_dir=run_dir if resume else None)
    return read_metrics(run_dir / "metrics.jsonl")


def test_switch_happens_exactly_at_tau(tiny_overrides, tmp_path):
    records = run(tiny_overrides, tmp_path / "r", "schedules.two_stage.tau=4", "trainer.max_steps=8")
    assert [r["stage"] for r in records] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert records[4]["stage_switch_step"] == 4
    for r in records[:4]:
        assert all(k in r for k in HYBRID_KEYS)
    for r in records[4:]:
        assert not any(k in r for k in HYBRID_KEYS)
        assert not any(k.startswith("knob/objectives.rtd") for k in r)
        # plain SC: the total is λ2 · (L_SC + its z-loss) and nothing else
        sc = r["loss/span_corruption"] + r.get("loss/span_corruption_z", 0.0)
        assert r["loss"] == torch.tensor(10.0 * sc).item() or abs(r["loss"] - 10.0 * sc) < 1e-5


def test_tau_zero_is_the_sc_baseline_and_null_never_switches(tiny_overrides, tmp_path):
    records = run(tiny_overrides, tmp_path / "zero", "schedules.two_stage.tau=0", "trainer.max_steps=3")
    assert all(r["stage"] == 2 and "loss/rtd" not in r for r in records)
    records = run(tiny_overrides, tmp_path / "inf", "schedules.two_stage.tau=null", "trainer.max_steps=3")
    assert all(r["stage"] == 1 and "loss/rtd" in r for r in records)


def test_release_shrinks_trainable_parameters_and_optimizer_state(tiny_overrides, tmp_path):
    resolved = load_config("spactor", [*tiny_overrides, f"run.dir={tmp_path}"])
    data = build_data(resolved, torch.device("cpu"), None)
    model = build_model(resolved, data.vocab)
    objectives = build_objectives(resolved, data.vocab, model)
    data.start(raw_length_for(objectives, 64), batch_size=4)
    modules = TrainModules(model, objectives)
    optimizer = torch.optim.AdamW(trainable_parameters(modules))
    cpu = torch.device("cpu")
    ctx = StepContext(DistInfo(), seeded_generator(0, cpu), seeded_generator(1, cpu), clip_grad_norm=1.0)
    train_step(modules, optimizer, next(iter(data.train_batches())), ctx)

    rtd = objectives["rtd"]
    shared = {id(p) for p in model.parameters()}
    stage1_only = [p for p in rtd.parameters() if id(p) not in shared]
    stage1_count = sum(p.numel() for p in stage1_only)
    assert stage1_count > 0
    before = sum(p.numel() for p in trainable_parameters(modules))
    state_before = len(optimizer.state)

    released = release_stage1(modules, objectives, optimizer)

    assert sorted(released) == ["mlm_mask", "rtd"]
    after = sum(p.numel() for p in trainable_parameters(modules))
    assert before - after == stage1_count
    optimizer_params = [p for g in optimizer.param_groups for p in g["params"]]
    assert sum(p.numel() for p in optimizer_params) == after
    assert len(optimizer.state) == state_before - len(stage1_only)
    assert not any(id(p) in {id(q) for q in stage1_only} for p in optimizer.state)
    assert rtd.generator is None and rtd.head is None  # the modules themselves are dropped
    # the shared token embedder stays with the discriminator
    assert model.token_embedding.weight.requires_grad


def test_resume_before_and_after_tau_matches_uninterrupted(tiny_overrides, tmp_path):
    common = ["schedules.two_stage.tau=4", "model.dropout=0.1"]
    full = run(tiny_overrides + common, tmp_path / "full", "trainer.max_steps=8")
    run(tiny_overrides + common, tmp_path / "part", "trainer.max_steps=3")  # stops in stage 1
    resumed = run(tiny_overrides + common, tmp_path / "part", "trainer.max_steps=6", resume=True)  # crosses tau
    resumed = run(tiny_overrides + common, tmp_path / "part", "trainer.max_steps=8", resume=True)  # resumes in stage 2
    assert [r["stage"] for r in resumed] == [r["stage"] for r in full]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]
    assert [r.get("loss/rtd") for r in resumed] == [r.get("loss/rtd") for r in full]
