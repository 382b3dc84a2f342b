"""ScheduleSet: merged values, stage from the earliest switch, conflicts, checkpointing."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

import spactor.schedules.adaptive
import spactor.schedules.anneal
import spactor.schedules.temperature
import spactor.schedules.two_stage  # noqa: F401
from spactor.schedules.adaptive import AdaptiveConfig
from spactor.schedules.anneal import AnnealConfig
from spactor.schedules.base import Schedule, ScheduleSet, build
from spactor.schedules.temperature import TemperatureConfig
from spactor.schedules.two_stage import TwoStageConfig

KNOBS = {
    "objectives.rtd.weight": 10.0,
    "objectives.rtd.temperature": 1.0,
    "objectives.sc_loss.weight": 10.0,
    "objectives.mlm_mask.ratio": 0.15,
}


def plugin(type_: str, config) -> SimpleNamespace:
    """Stands in for spactor.config.Plugin: a registered type name and its config."""
    return SimpleNamespace(type=type_, config=config)


class Drives(Schedule):
    def __init__(self, *knobs: str) -> None:
        self.knobs = list(knobs)

    def driven_knobs(self) -> list[str]:
        return self.knobs

    def values(self, step: int) -> dict[str, float]:
        return {k: float(step) for k in self.knobs}


def full_set() -> ScheduleSet:
    return build(
        {
            "two_stage": plugin("two_stage", TwoStageConfig(tau=300)),
            "lambda1": plugin(
                "anneal", AnnealConfig(knob="objectives.rtd.weight", start_step=0, end_step=100)
            ),
            "temperature": plugin("temperature", TemperatureConfig()),
            "tau_auto": plugin("adaptive", AdaptiveConfig(smoothing=0.0, patience=10, warmup=0)),
        },
        KNOBS,
        max_steps=1000,
    )


def test_values_are_merged_across_schedules() -> None:
    schedules = full_set()
    values = schedules.values(50)
    assert set(values) == {"objectives.rtd.weight", "objectives.rtd.temperature"}
    assert values["objectives.rtd.weight"] == pytest.approx(5.0)
    assert schedules.driven_knobs() == {
        "objectives.rtd.weight": "lambda1",
        "objectives.rtd.temperature": "temperature",
    }


def test_stage_follows_the_earliest_switch() -> None:
    schedules = full_set()
    assert schedules.stages.decided_end(1) == 300  # only two_stage knows its switch so far
    assert schedules.stage(299) == 1 and schedules.stage(300) == 2
    for step in range(40):  # a flat metric: the adaptive schedule fires first
        schedules.observe(step, {"loss/rtd": 1.0})
    assert schedules.stages.decided_end(1) == 11
    assert schedules.stage(10) == 1 and schedules.stage(11) == 2


def test_no_switching_schedule_means_stage_1_throughout() -> None:
    schedules = ScheduleSet({"lambda1": Drives("objectives.rtd.weight")}, KNOBS)
    assert schedules.stages.decided_end(1) is None
    assert schedules.stage(10**9) == 1
    assert ScheduleSet({}, KNOBS).values(3) == {}


def test_unknown_knob_lists_valid_knobs_and_the_closest_match() -> None:
    with pytest.raises(ValueError) as info:
        ScheduleSet({"ramp": Drives("objectives.mlm_mask.ration")}, KNOBS)
    msg = str(info.value)
    assert "\n" not in msg
    assert "schedules.ramp" in msg and "'objectives.mlm_mask.ration'" in msg
    for knob in KNOBS:
        assert knob in msg
    assert "did you mean 'objectives.mlm_mask.ratio'?" in msg


def test_two_schedules_on_one_knob_is_an_error_naming_both() -> None:
    with pytest.raises(ValueError) as info:
        ScheduleSet({"a": Drives("objectives.rtd.weight"), "b": Drives("objectives.rtd.weight")}, KNOBS)
    msg = str(info.value)
    assert "\n" not in msg
    assert "'a'" in msg and "'b'" in msg and "objectives.rtd.weight" in msg


def test_two_registered_schedules_on_one_knob_through_build() -> None:
    with pytest.raises(ValueError, match="both drive knob 'objectives.rtd.temperature'"):
        build(
            {
                "fast_electra": plugin("temperature", TemperatureConfig()),
                "cool": plugin("anneal", AnnealConfig(knob="objectives.rtd.temperature", end_step=10)),
            },
            KNOBS,
            max_steps=100,
        )


def test_state_round_trip_for_every_schedule() -> None:
    schedules = full_set()
    for step in range(40):
        schedules.observe(step, {"loss/rtd": 1.0})
    state = json.loads(json.dumps(schedules.state_dict()))  # goes into a JSON manifest
    assert set(state) == {"two_stage", "lambda1", "temperature", "tau_auto"}
    resumed = full_set()
    resumed.load_state_dict(state)
    assert resumed.state_dict() == schedules.state_dict()
    assert resumed.stages.decided_end(1) == 11
    for step in (0, 11, 50, 99, 100, 500):
        assert resumed.values(step) == schedules.values(step)
        assert resumed.stage(step) == schedules.stage(step)


def test_load_state_rejects_state_of_unconfigured_schedules() -> None:
    schedules = full_set()
    state = schedules.state_dict()
    state["renamed"] = {"ema": None, "best": None, "stale": 0, "switch_step": 7}
    with pytest.raises(ValueError, match="renamed"):
        schedules.load_state_dict(state)


def test_schedule_added_since_the_checkpoint_keeps_fresh_state() -> None:
    schedules = full_set()
    state = schedules.state_dict()
    del state["tau_auto"]
    schedules.load_state_dict(state)
    assert schedules.stages.decided_end(1) == 300
