"""Each callback's checkpointed state: ``state_dict`` → a fresh callback's
``load_state_dict`` continues exactly where the first one was, and the callback list
routes each entry to the manifest (shared) or the rank's file (per rank)."""

from __future__ import annotations

import json

import pytest
import torch

from spactor.config import load_config
from spactor.metric_record import MetricRecord, Reduce
from spactor.plugins import load_plugins
from spactor.train.builders import build_model, build_objectives
from spactor.train.callbacks import (
    Callback,
    CallbackList,
    FlopsCounter,
    KnobSchedules,
    LoopState,
    NonFiniteGuard,
    NonFiniteStop,
    StageSwitch,
    StepMetrics,
)
from spactor.train.batches import build_data
from spactor.train.flops.counting import flops_report
from spactor.train.flops.mfu import tracker_from_report
from spactor.train.stages import knob_values, trainable_parameters
from spactor.train.step import StepOutput, TrainModules
from spactor.schedules.base import build as build_schedules

load_plugins()


def outcome(loss: float, applied: bool = True, **losses: float) -> StepOutput:
    logged = MetricRecord()
    logged.record("loss", torch.tensor(loss), Reduce.SUM)
    for k, v in losses.items():
        logged.record(k, torch.tensor(v), Reduce.SUM)
    logged.record("grad_norm", torch.tensor(2.0 * loss), Reduce.MAX)
    return StepOutput(loss=torch.tensor(loss), logged=logged, grad_norm=torch.tensor(2.0 * loss), applied=applied)


def through_json(state: dict) -> dict:
    """What the manifest gives back (shared state is JSON)."""
    return json.loads(json.dumps(state))


def test_guard_counts_and_a_run_of_bad_steps_survive_a_resume(capsys):
    state = LoopState(max_steps=10)
    guard = NonFiniteGuard("skip", max_consecutive=3)
    guard.check_step(state, outcome(1.0))
    for _ in range(2):
        guard.check_step(state, outcome(float("nan"), applied=False))
    resumed = NonFiniteGuard("skip", max_consecutive=3)
    resumed.load_state_dict(through_json(guard.state_dict()))
    record: dict = {}
    resumed.log(state, record)
    assert record == {"skipped_nonfinite": 2}
    with pytest.raises(NonFiniteStop, match="3 bad steps in a row"):  # the third in a row, across the resume
        resumed.check_step(state, outcome(float("nan"), applied=False))
    assert "skipping the update" in capsys.readouterr().out


def test_step_metrics_window_resumes_mid_window():
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD(params, lr=0.5)
    state = LoopState(max_steps=10)
    first = StepMetrics(optimizer, torch.device("cpu"))
    first.post_step(state, outcome(3.0, **{"loss/a": 1.0}))
    saved = first.state_dict()
    assert first.per_rank  # a rank's shares: its own file, torch.save'd
    second = StepMetrics(optimizer, torch.device("cpu"))
    second.load_state_dict(saved)
    for cb in (first, second):
        cb.post_step(state, outcome(5.0))  # the stage switch dropped loss/a
    records = [{}, {}]
    first.log(state, records[0])
    second.log(state, records[1])
    assert records[0] == records[1] == {"loss": 4.0, "loss/a": 1.0, "lr": 0.5, "grad_norm": 8.0}
    assert second.state_dict() == {}  # read: a new window


def test_flops_counter_resumes_its_totals(tiny_overrides, tmp_path):
    resolved = load_config("sc", [*tiny_overrides, f"run.dir={tmp_path}"])
    report = flops_report(resolved, device="meta", every_stage=True)

    def counter() -> FlopsCounter:
        return FlopsCounter(tracker_from_report(resolved, torch.device("cpu"), report))

    state = LoopState(max_steps=10)
    first = counter()
    for step in (1, 2):
        state.step = step
        first.post_step(state, None)
    second = counter()
    second.load_state_dict(through_json(first.state_dict()))
    state.step = 3
    records = [{}, {}]
    for cb, record in zip((first, second), records):
        cb.post_step(state, None)
        cb.log(state, record)
    assert records[0] == records[1]
    assert records[1]["flops_cum"] == 3 * report.per_step(1) and records[1]["flops_normalized"] == 1.0


def _adaptive_run(tiny_overrides, tmp_path):
    adaptive = ["warmup=0", "patience=2", "smoothing=0.0", "min_delta=100", "min_tau=2", "max_tau=50"]
    resolved = load_config("spactor_adaptive", [*tiny_overrides, f"run.dir={tmp_path}",
                                                *(f"schedules.adaptive.{a}" for a in adaptive)])
    data = build_data(resolved, torch.device("cpu"), None)
    model = build_model(resolved, data.vocab)
    objectives = build_objectives(resolved, data.vocab, model)
    schedules = build_schedules(resolved.schedules, knob_values(objectives), 100, list(objectives))
    return schedules, objectives, TrainModules(model, objectives, data.vocab.pad_id)


def test_knob_schedules_resume_an_adaptive_decision_and_the_stage_switch_its_pending_fields(
        tiny_overrides, tmp_path):
    schedules, objectives, modules = _adaptive_run(tiny_overrides, tmp_path / "a")
    optimizer = torch.optim.SGD(trainable_parameters(modules), lr=0.1)
    knobs = KnobSchedules(schedules, objectives)
    switch = StageSwitch(schedules, modules, objectives, optimizer)
    state = LoopState(max_steps=100)
    for step in (1, 2, 3):
        state.step = step
        knobs.post_log(state, {"loss/rtd": 1.0})  # no improvement by min_delta: a plateau
    decided = schedules.stages.decided_end(1)
    assert decided == 4
    saved = through_json(knobs.state_dict())

    # The stage switch at the decided step, pending until the next logging step.
    state.step = decided
    knobs.pre_step(state)
    switch.pre_step(state)
    assert state.stage == 2 and switch.pending["stage_switch_step"] == decided
    pending = through_json(switch.state_dict())

    schedules2, objectives2, modules2 = _adaptive_run(tiny_overrides, tmp_path / "b")
    KnobSchedules(schedules2, objectives2).load_state_dict(saved)
    assert schedules2.stages.decided_end(1) == decided
    switch2 = StageSwitch(schedules2, modules2, objectives2, torch.optim.SGD(trainable_parameters(modules2), lr=0.1))
    switch2.load_state_dict(pending)
    records = [{}, {}]
    switch.log(state, records[0])
    switch2.log(state, records[1])
    assert records[0] == records[1] == {"stage_switch_step": decided, "released": pending["released"]}
    assert pending["released"]  # the RTD objective left with stage 1


class Counter(Callback):
    name = "counter"

    def __init__(self) -> None:
        self.n = 0

    def post_step(self, state: LoopState, out) -> None:
        self.n += 1

    def state_dict(self) -> dict:
        return {"n": self.n}

    def load_state_dict(self, state: dict) -> None:
        self.n = state["n"]


class RankCounter(Counter):
    name = "rank_counter"
    per_rank = True


def test_the_list_routes_state_to_the_manifest_or_the_rank_file():
    state = LoopState(max_steps=5, step=3, stage=2, tokens_seen=7)
    shared, ranked = Counter(), RankCounter()
    callbacks = CallbackList([shared, ranked])
    callbacks.post_step(state, None)
    assert callbacks.shared_state(state) == {"step": 3, "stage": 2, "tokens_seen": 7, "counter": {"n": 1}}
    assert callbacks.local_state() == {"rank_counter": {"n": 1}}

    fresh = CallbackList([Counter(), RankCounter()])
    fresh.load_state_dict(callbacks.shared_state(state), callbacks.local_state())
    assert [cb.n for cb in fresh] == [1, 1]
    other_world = CallbackList([Counter(), RankCounter()])
    other_world.load_state_dict(callbacks.shared_state(state), None)  # another number of ranks
    assert [cb.n for cb in other_world] == [1, 0]
    old = CallbackList([Counter()])
    old.load_state_dict({"step": 3, "stage": 1, "tokens_seen": 7}, {})  # written before the callback existed
    assert old.callbacks[0].n == 0


def test_names_must_be_unique_and_not_the_loops():
    with pytest.raises(ValueError, match="share the name 'counter'"):
        CallbackList([Counter(), Counter()])

    class Stage(Callback):
        name = "stage"

    with pytest.raises(ValueError, match="the loop's own state"):
        CallbackList([Stage()])
