"""temperature: Fast-ELECTRA's T(step) = T_end + (T0 − T_end) · exp(−rate · step / D)."""

from __future__ import annotations

import itertools
import json
import math

import pytest

import spactor.schedules.temperature  # noqa: F401  (registers "temperature")
from spactor.registry import SCHEDULES
from spactor.schedules.base import ScheduleContext
from spactor.schedules.temperature import TemperatureConfig

KNOB = "objectives.rtd.temperature"
KNOBS = {KNOB: 1.0, "objectives.rtd.weight": 50.0}


def build(max_steps: int = 1000, name: str = "temperature", **fields):
    ctx = ScheduleContext(name=name, knobs=dict(KNOBS), max_steps=max_steps)
    return SCHEDULES.get("temperature").factory(TemperatureConfig(**fields), ctx)


def temp(schedule, step: int) -> float:
    return schedule.values(step)[KNOB]


def test_formula_at_chosen_steps() -> None:
    # Defaults: T0 = 2, T_end = 1, rate = 5, D = max_steps = 1000.
    schedule = build()
    assert schedule.driven_knobs() == [KNOB]
    assert temp(schedule, 0) == 2.0
    assert temp(schedule, 200) == pytest.approx(1.0 + math.exp(-1.0))  # 1.3679
    assert temp(schedule, 500) == pytest.approx(1.0 + math.exp(-2.5))  # 1.0821
    assert temp(schedule, 1000) == pytest.approx(1.0 + math.exp(-5.0))  # 1.0067


def test_explicit_decay_steps_and_rate() -> None:
    schedule = build(t0=3.0, t_end=1.0, decay_steps=100, rate=1.0)
    assert temp(schedule, 100) == pytest.approx(1.0 + 2.0 * math.exp(-1.0))
    assert temp(schedule, 50) == pytest.approx(1.0 + 2.0 * math.exp(-0.5))


def test_monotone_decrease_to_t_end() -> None:
    schedule = build(max_steps=2000)
    series = [temp(schedule, s) for s in range(0, 20_001, 10)]
    # Strictly decreasing while the excess over T_end is resolvable in float64 ...
    assert all(a > b for a, b in itertools.pairwise(series[:201]))
    # ... never increasing or crossing T_end afterwards, and arriving there.
    assert all(a >= b for a, b in itertools.pairwise(series))
    assert min(series) >= 1.0
    assert series[-1] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(
    "fields, key",
    [
        ({"t0": 0.0}, "t0"),
        ({"t_end": -1.0}, "t_end"),
        ({"rate": 0.0}, "rate"),
        ({"decay_steps": 0}, "decay_steps"),
    ],
)
def test_invalid_config_names_the_key(fields: dict, key: str) -> None:
    with pytest.raises(ValueError, match=rf"schedules\.fe\.{key}"):
        build(name="fe", **fields)


def test_unknown_knob() -> None:
    with pytest.raises(ValueError, match="valid knobs: objectives.rtd.temperature, objectives.rtd.weight"):
        build(knob="objectives.generator.temperature")


def test_state_round_trip() -> None:
    schedule = build()
    fresh = build()
    fresh.load_state_dict(json.loads(json.dumps(schedule.state_dict())))
    assert temp(fresh, 321) == temp(schedule, 321)
