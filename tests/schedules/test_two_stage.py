"""two_stage: SpacTor(τ) switches to plain SC at exactly τ."""

from __future__ import annotations

import json

import pytest

import spactor.schedules.two_stage  # noqa: F401  (registers "two_stage")
from spactor.registry import SCHEDULES
from spactor.schedules.base import ScheduleContext, ScheduleSet
from spactor.schedules.two_stage import TwoStageConfig

KNOBS = {"objectives.rtd.weight": 10.0, "objectives.sc_loss.weight": 10.0}


def build(tau: int | None, name: str = "two_stage"):
    ctx = ScheduleContext(name=name, knobs=dict(KNOBS), max_steps=1000)
    return SCHEDULES.get("two_stage").factory(TwoStageConfig(tau=tau), ctx)


@pytest.mark.parametrize("tau", [1, 60, 120])
def test_switches_exactly_at_tau(tau: int) -> None:
    schedule = build(tau)
    assert schedule.switch_step() == tau
    assert schedule.driven_knobs() == []
    assert schedule.values(tau) == {}
    stages = ScheduleSet({"two_stage": schedule}, KNOBS)
    assert stages.stage(0) == 1
    assert stages.stage(tau - 1) == 1
    assert stages.stage(tau) == 2
    assert stages.stage(tau + 1) == 2


def test_tau_zero_is_the_sc_baseline_from_the_start() -> None:
    stages = ScheduleSet({"two_stage": build(0)}, KNOBS)
    assert stages.stages.decided_end(1) == 0
    assert stages.stage(0) == 2


def test_tau_none_never_switches() -> None:
    stages = ScheduleSet({"two_stage": build(None)}, KNOBS)
    assert stages.stages.decided_end(1) is None
    assert all(stages.stage(step) == 1 for step in (0, 120_000, 10**9))


def test_negative_tau_is_rejected_naming_the_key() -> None:
    with pytest.raises(ValueError, match=r"schedules\.curriculum\.tau"):
        build(-1, name="curriculum")


def test_state_round_trip() -> None:
    schedule = build(120)
    state = json.loads(json.dumps(schedule.state_dict()))
    fresh = build(120)
    fresh.load_state_dict(state)
    assert fresh.switch_step() == 120
