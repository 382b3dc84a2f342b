"""Stages in the runner: SpacTor's two (the switch at tau, what it releases, resume across
it) and a three-stage curriculum (switches, releases, knobs, resume, FLOPs)."""

from __future__ import annotations

import pytest
import torch

from spactor.config import load_config
from spactor.plugins import load_plugins
from spactor.train.builders import build_model, build_objectives, raw_length_for, seeded_generator
from spactor.train.batches import build_data
from spactor.train.metrics import read_metrics
from spactor.train.parallel import DistInfo
from spactor.train.stages import trainable_parameters
from stage1 import release_stage1  # tests/train/stage1.py
from spactor.train.step import StepContext, TrainModules, train_step
from spactor.train.loop import train

load_plugins()

HYBRID_KEYS = ("loss/rtd", "loss/rtd_generator", "rtd/auc", "rtd/generator_accuracy")


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
    modules = TrainModules(model, objectives, data.vocab.pad_id)
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


# --------------------------------------------------------------------------- N stages

THREE = ["schedules.curriculum.stages.hybrid.until_step=2", "schedules.curriculum.stages.handover.until_step=4"]


def run3(overrides, run_dir, *extra, resume=False):
    resolved = load_config("spactor_three_stage",
                           [*overrides, *THREE, f"run.dir={run_dir}", "lr_schedule.warmup_steps=100", *extra])
    train(resolved, resume_dir=run_dir if resume else None)
    return read_metrics(run_dir / "metrics.jsonl")


def test_three_stages_switch_release_and_log(tiny_overrides, tmp_path):
    records = run3(tiny_overrides, tmp_path / "r", "trainer.max_steps=6")
    assert [r["stage"] for r in records] == [1, 1, 2, 2, 3, 3]
    switches = {r["step"]: r for r in records if "stage_switch_step" in r}
    # a record's step counts the updates done; the switch is logged with the first step of the new stage
    assert [(r["stage_switch_step"], r["released"]) for r in switches.values()] == [(2, []), (4, ["mlm_mask", "rtd"])]
    for r in records[:4]:  # stages 1 and 2 are hybrid
        assert all(k in r for k in HYBRID_KEYS)
    assert [r["knob/objectives.rtd.weight"] for r in records[:4]] == [10.0, 10.0, 1.0, 1.0]
    assert [r["knob/objectives.mlm_mask.ratio"] for r in records[:4]] == [0.15, 0.15, 0.05, 0.05]
    for r in records[4:]:
        assert not any(k in r for k in HYBRID_KEYS)
        assert not any(k.startswith("knob/objectives.rtd") for k in r)


def test_entering_the_last_stage_drops_modules_and_optimizer_state(tiny_overrides, tmp_path):
    from spactor.train.stages import apply_knobs, knob_values, release_objectives
    from spactor.schedules.base import build as build_schedules

    resolved = load_config("spactor_three_stage", [*tiny_overrides, *THREE, f"run.dir={tmp_path}"])
    data = build_data(resolved, torch.device("cpu"), None)
    model = build_model(resolved, data.vocab)
    objectives = build_objectives(resolved, data.vocab, model)
    data.start(raw_length_for(objectives, 64), batch_size=4)
    schedules = build_schedules(resolved.schedules, knob_values(objectives), 10, list(objectives))
    modules = TrainModules(model, objectives, data.vocab.pad_id)
    optimizer = torch.optim.AdamW(trainable_parameters(modules))
    cpu = torch.device("cpu")
    ctx = StepContext(DistInfo(), seeded_generator(0, cpu), seeded_generator(1, cpu), clip_grad_norm=1.0)
    batches = iter(data.train_batches())
    rtd_only = [p for p in objectives["rtd"].parameters() if id(p) not in {id(q) for q in model.parameters()}]
    released_at = {}
    for step in range(6):
        apply_knobs(objectives, schedules.values(step))
        before = schedules.stages.current
        stage = schedules.advance(step, objectives)
        if stage != before:
            released_at[stage] = release_objectives(
                modules, objectives, schedules.stages.inactive_in(stage, objectives), optimizer)
        if step < 4:  # the RTD modules are alive and trained through stages 1 and 2
            assert all(id(p) in {id(q) for q in modules.parameters()} for p in rtd_only)
        train_step(modules, optimizer, next(batches), ctx)
    assert released_at == {2: [], 3: ["mlm_mask", "rtd"]}
    assert list(modules.objectives) == ["span_corruption"]
    kept = {id(p) for p in modules.parameters()}
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == kept
    assert {id(p) for p in optimizer.state} <= kept and not any(id(p) in kept for p in rtd_only)


def test_resume_in_the_middle_stage_matches_uninterrupted(tiny_overrides, tmp_path):
    common = ["model.dropout=0.1"]
    full = run3(tiny_overrides + common, tmp_path / "full", "trainer.max_steps=7")
    run3(tiny_overrides + common, tmp_path / "part", "trainer.max_steps=2")  # stops at the switch to stage 2
    run3(tiny_overrides + common, tmp_path / "part", "trainer.max_steps=3", resume=True)  # stops in stage 2
    resumed = run3(tiny_overrides + common, tmp_path / "part", "trainer.max_steps=7", resume=True)  # crosses 2 → 3
    assert [r["stage"] for r in resumed] == [r["stage"] for r in full] == [1, 1, 2, 2, 3, 3, 3]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]
    assert [r.get("loss/rtd") for r in resumed] == [r.get("loss/rtd") for r in full]
    assert [r.get("stage_switch_step") for r in resumed] == [r.get("stage_switch_step") for r in full]
    manifest = sorted((tmp_path / "part" / "checkpoints").glob("*/manifest.json"))[-1]
    import json

    assert json.loads(manifest.read_text())["shared"]["stage"] == 3


def test_three_stage_flops_per_stage_and_normalized(tiny_overrides, tmp_path):
    from spactor.train.flops.counting import flops_report
    from spactor.train.flops.mfu import FlopsTracker

    resolved = load_config("spactor_three_stage", [*tiny_overrides, *THREE, "trainer.max_steps=10"])
    report = flops_report(resolved, every_stage=True)
    assert [(s.name, s.stage, s.first_step, s.steps) for s in report.stages] == [
        ("stage1", 1, 0, 2), ("stage2", 2, 2, 2), ("stage3", 3, 4, 6)]
    f1, f2, f3 = (s.flops.flops_per_step for s in report.stages)
    # the hand-over keeps RTD at 5% masking (fewer generator logits); stage 3 is plain SC
    assert f3 < f2 < f1
    assert f3 == pytest.approx(report.baseline_flops_per_step)  # the baseline: the final stage alone
    assert report.switch_steps == [2, 4] and report.switch_step == 2
    assert report.cumulative(10) == pytest.approx(2 * f1 + 2 * f2 + 6 * f3)
    tracker = FlopsTracker(report)
    for step, stage in enumerate([1, 1, 2, 2, 3, 3, 3, 3, 3, 3], start=1):
        fields = tracker.update(stage, step)
    assert fields["flops_cum"] == pytest.approx(report.cumulative(10))
    assert fields["flops_normalized"] == pytest.approx(report.normalized(10))


ADAPTIVE = ["warmup=0", "patience=1", "smoothing=0.0", "min_delta=100", "min_tau=2", "max_tau=5"]
WRITTEN_OUT = {  # recipe + overrides -> the same run as a two-stage curriculum written out
    "two_stage": (("spactor", ["schedules.two_stage.tau=3"]),
                  ["schedules.curriculum.stages.hybrid.until_step=3"]),
    "anneal": (("spactor_anneal", ["schedules.rtd_weight.end_step=3", "schedules.mask_off.end_step=3"]),
               ["schedules.curriculum.stages.hybrid.until_off=true",
                "schedules.rtd_weight.end_step=3", "schedules.mask_off.end_step=3"]),
    "adaptive": (("spactor_adaptive", [f"schedules.adaptive.{a}" for a in ADAPTIVE]),
                 [f"schedules.curriculum.stages.hybrid.adaptive.{a}" for a in ADAPTIVE]),
}


@pytest.mark.parametrize("case", list(WRITTEN_OUT))
def test_two_stage_anneal_and_adaptive_are_curricula(case, tiny_overrides, tmp_path):
    (recipe, implicit), explicit = WRITTEN_OUT[case]
    base = [*tiny_overrides, "lr_schedule.warmup_steps=100", "trainer.max_steps=5"]
    train(load_config(recipe, [*base, *implicit, f"run.dir={tmp_path / 'implicit'}"]))
    curriculum = [*base, "schedules.two_stage.tau=null", *explicit,
                  "schedules.curriculum.stages.sc.objectives=[span_corruption]", f"run.dir={tmp_path / 'explicit'}"]
    if case == "adaptive":  # spactor_adaptive's own adaptive schedule would decide a switch too
        recipe = "spactor"
    train(load_config(recipe, curriculum))
    a, b = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("implicit", "explicit"))
    keys = ("stage", "loss", "loss/rtd", "stage_switch_step", "released")
    assert [[r.get(k) for k in keys] for r in a] == [[r.get(k) for k in keys] for r in b]
    assert [r["stage"] for r in a] == [1, 1, 1, 2, 2]


# --------------------------------------------------------------------------- objectives entering later

LATE = {  # stage 1 -> 2 -> 3 objectives, ending at steps 2 and 4
    # RTD trains in stage 1, sits stage 2 out (held: weights and optimizer state), comes back in 3
    "comes_back": ("[span_corruption,mlm_mask,rtd]", "[span_corruption]", "[span_corruption,mlm_mask,rtd]"),
    # RTD enters in stage 3: held, never trained (no optimizer state) until then
    "enters_late": ("[span_corruption]", "[span_corruption]", "[span_corruption,mlm_mask,rtd]"),
}


def late_run(overrides, case, run_dir, *extra, resume=False):
    first, second, third = LATE[case]
    at = "schedules.curriculum.stages"
    stages = [f"{at}.a.objectives={first}", f"{at}.a.until_step=2",
              f"{at}.b.objectives={second}", f"{at}.b.until_step=4",
              f"{at}.b.knobs={{objectives.span_corruption.weight: 5.0}}",
              f"{at}.c.objectives={third}"]
    return run([*overrides, "schedules.two_stage.tau=null", "model.dropout=0.1", "runtime.count_flops=false",
                *stages], run_dir, *extra, resume=resume)


@pytest.mark.parametrize("case", list(LATE))
def test_resume_in_a_middle_stage_holds_an_objective_for_a_later_one(case, tiny_overrides, tmp_path):
    full = late_run(tiny_overrides, case, tmp_path / "full", "trainer.max_steps=6")
    late_run(tiny_overrides, case, tmp_path / "part", "trainer.max_steps=3")  # stops in stage 2
    resumed = late_run(tiny_overrides, case, tmp_path / "part", "trainer.max_steps=6", resume=True)
    assert [r["stage"] for r in full] == [1, 1, 2, 2, 3, 3]
    assert [r.get("released") for r in full if "stage_switch_step" in r] == [[], []]  # RTD is needed again
    assert all("loss/rtd" in r for r in full[4:]) and not any("loss/rtd" in r for r in full[2:4])
    assert ("loss/rtd" in full[0]) == (case == "comes_back")
    # the held generator's weights (and, trained in stage 1, its optimizer state) resume
    for key in ("stage", "loss", "loss/rtd", "loss/rtd_generator", "loss/span_corruption"):
        assert [r.get(key) for r in resumed] == [r.get(key) for r in full], key
    import torch.distributed.checkpoint as dcp

    path = tmp_path / "part" / "checkpoints" / "step_00000003" / "dcp"
    keys = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    assert any(k.startswith("model.objectives.rtd.generator.") for k in keys)
    has_state = any(k.startswith("optim.state.objectives.rtd.generator.") for k in keys)
    assert has_state == (case == "comes_back")


def test_span_corruption_and_prefix_lm_crop_a_longer_chunk_to_their_own(tiny_overrides, tmp_path):
    from spactor.train.step import apply_transforms

    resolved = load_config("spactor_ul2_sc", [
        *tiny_overrides, f"run.dir={tmp_path}", "objectives.prefix_lm.noise_density=0.5",
        "schedules.curriculum.stages.sc.objectives=[span_corruption,prefix_lm]"])
    data = build_data(resolved, torch.device("cpu"), None)
    model = build_model(resolved, data.vocab)
    objectives = build_objectives(resolved, data.vocab, model)
    longest = raw_length_for({"ul2": objectives["ul2"]}, 64)  # what the data delivers for this curriculum
    long = torch.randint(3, 400, (4, longest), generator=torch.Generator().manual_seed(0))
    for name in ("span_corruption", "prefix_lm"):
        own = raw_length_for({name: objectives[name]}, 64)
        assert own < long.shape[1]
        mine = {name: objectives[name]}
        a = apply_transforms(mine, {"original": long[:, :own]}, seeded_generator(3, torch.device("cpu")))
        b = apply_transforms(mine, {"original": long}, seeded_generator(3, torch.device("cpu")))
        assert a.keys() == b.keys() and a["encoder_input"].shape[1] <= 64
        for key in set(a) - {"original"}:  # the same corruption, bit for bit
            assert torch.equal(a[key], b[key]), (name, key)


UL2_SC = ["schedules.curriculum.stages.hybrid.until_step=2", "schedules.curriculum.stages.ul2.until_step=4"]


def test_flops_of_an_objective_that_enters_in_stage_2(tiny_overrides):
    from spactor.train.flops.counting import count_step_flops, flops_report

    common = [*tiny_overrides, "trainer.max_steps=10"]
    report = flops_report(load_config("spactor_ul2_sc", [*common, *UL2_SC]))
    assert [(s.stage, s.first_step, s.steps, s.flops.objectives) for s in report.stages] == [
        (1, 0, 2, ["span_corruption", "mlm_mask", "rtd"]), (2, 2, 2, ["ul2"]), (3, 4, 6, ["span_corruption"])]
    assert report.switch_steps == [2, 4]
    hybrid = flops_report(load_config("spactor", [*common, "schedules.two_stage.tau=2"]))
    ul2 = flops_report(load_config("ul2", common))
    assert report.raw_length == ul2.raw_length > hybrid.raw_length  # UL2's chunk: the longest a stage needs
    f1, f2, f3 = (s.flops for s in report.stages)
    assert f1.modules == hybrid.stages[0].flops.modules  # stage 1 is SpacTor's, UL2 held costs nothing
    assert f2.modules == ul2.stages[0].flops.modules and "rtd.generator" not in f2.modules
    assert f3.flops_per_step == pytest.approx(report.baseline_flops_per_step)
    expected = 2 * f1.flops_per_step + 2 * f2.flops_per_step + 6 * f3.flops_per_step
    assert report.cumulative(10) == pytest.approx(expected)
    assert count_step_flops(load_config("spactor_ul2_sc", [*common, *UL2_SC]), stage=2).modules == f2.modules



def test_an_objective_held_through_a_stage_on_two_ranks_matches_one_rank(tiny_overrides, tmp_path):
    """RTD's FSDP units sit stage 2 out (no forward, no gradient, no collective) and train
    again in stage 3: 2 gloo ranks log the 1-rank losses."""
    import json
    import math
    import os
    import subprocess
    import sys

    first, second, third = LATE["comes_back"]
    at = "schedules.curriculum.stages"
    args = [*tiny_overrides, "schedules.two_stage.tau=null", "runtime.count_flops=false",
            "trainer.max_steps=6", "lr_schedule.warmup_steps=100", f"{at}.a.objectives={first}", f"{at}.a.until_step=2",
            f"{at}.b.objectives={second}", f"{at}.b.until_step=4", f"{at}.c.objectives={third}"]
    logged = []
    for nproc in (1, 2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(29500 + os.getpid() % 1000), "-m", "spactor", "train", "spactor", *args,
               f"run.dir={tmp_path / str(nproc)}"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
        lines = (tmp_path / str(nproc) / "metrics.jsonl").read_text().splitlines()
        logged.append([json.loads(line) for line in lines])
    one, two = logged
    assert [r["stage"] for r in two] == [1, 1, 2, 2, 3, 3] and "loss/rtd" in two[-1]
    for key in ("loss", "loss/rtd"):  # no loss/rtd in stage 2: nan on both sides
        a, b = ([r.get(key, math.nan) for r in run] for run in (one, two))
        assert b == pytest.approx(a, rel=1e-4, abs=1e-6, nan_ok=True)
