"""anneal: every shape against its documented formula, with hand-computed numbers."""

from __future__ import annotations

import itertools
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spactor.schedules.anneal  # noqa: F401  (registers "anneal")
from spactor.registry import SCHEDULES
from spactor.schedules.anneal import AnnealConfig
from spactor.schedules.base import ScheduleContext

KNOB = "objectives.rtd.weight"
KNOBS = {KNOB: 10.0, "objectives.mlm_mask.ratio": 0.15}


def build(name: str = "lambda1", **fields):
    fields = {"knob": KNOB, "end_step": 200, "start_step": 100, **fields}
    ctx = ScheduleContext(name=name, knobs=dict(KNOBS), max_steps=1000)
    return SCHEDULES.get("anneal").factory(AnnealConfig(**fields), ctx)


def value(schedule, step: int) -> float:
    return schedule.values(step)[KNOB]


@pytest.mark.parametrize("shape", ["linear", "cosine", "exponential", "step"])
def test_holds_start_before_and_end_after(shape: str) -> None:
    schedule = build(shape=shape)
    assert schedule.driven_knobs() == [KNOB]
    assert schedule.switch_step() is None
    # start_value defaults to the knob's configured value (10.0).
    assert value(schedule, 0) == 10.0
    assert value(schedule, 100) == 10.0
    assert value(schedule, 200) == 0.0
    assert value(schedule, 10_000) == 0.0


def test_linear() -> None:
    schedule = build(shape="linear")
    assert value(schedule, 150) == pytest.approx(5.0)
    assert value(schedule, 125) == pytest.approx(7.5)
    assert value(schedule, 190) == pytest.approx(1.0)


def test_cosine() -> None:
    schedule = build(shape="cosine")
    assert value(schedule, 150) == pytest.approx(5.0)  # midpoint at p = 1/2
    # p = 1/4: 0 + 10 · (1 + cos(π/4)) / 2 = 5 + 5/√2
    assert value(schedule, 125) == pytest.approx(5.0 + 5.0 / math.sqrt(2.0))
    # p = 3/4: 5 − 5/√2
    assert value(schedule, 175) == pytest.approx(5.0 - 5.0 / math.sqrt(2.0))


def test_exponential_hand_values_endpoints_and_monotone() -> None:
    schedule = build(shape="exponential", rate=5.0)
    # p = 1/2: 10 · (e^-2.5 − e^-5) / (1 − e^-5)
    expected = 10.0 * (math.exp(-2.5) - math.exp(-5.0)) / (1.0 - math.exp(-5.0))
    assert value(schedule, 150) == pytest.approx(expected)
    assert value(schedule, 150) == pytest.approx(0.7586, abs=1e-4)
    # Front-loaded: below the linear anneal at every interior step; past halfway by p = 0.2.
    linear = build(shape="linear")
    assert all(value(schedule, s) < value(linear, s) for s in range(101, 200))
    assert value(schedule, 120) < 5.0
    # Exactly the ends at p = 0 and p = 1.
    assert value(schedule, 100) == 10.0
    assert value(schedule, 200) == 0.0
    series = [value(schedule, s) for s in range(90, 211)]
    assert all(a >= b for a, b in itertools.pairwise(series))
    assert all(0.0 <= v <= 10.0 for v in series)


def test_exponential_rising_and_between_positive_ends() -> None:
    rising = build(shape="exponential", start_value=0.05, end_value=0.25, rate=2.0)
    # p = 1/2: 0.05 + 0.2 · (1 − e^-1) / (1 − e^-2)
    assert rising.values(150)[KNOB] == pytest.approx(0.05 + 0.2 * (1 - math.exp(-1)) / (1 - math.exp(-2)))
    series = [rising.values(s)[KNOB] for s in range(100, 201)]
    assert series[0] == 0.05 and series[-1] == 0.25
    assert all(a < b for a, b in itertools.pairwise(series))


def test_step_drops_exactly_at_end_step() -> None:
    schedule = build(shape="step")
    assert value(schedule, 150) == 10.0
    assert value(schedule, 199) == 10.0
    assert value(schedule, 200) == 0.0


def test_explicit_start_value() -> None:
    schedule = build(shape="linear", start_value=4.0, end_value=2.0, start_step=0, end_step=10)
    assert [value(schedule, s) for s in (0, 5, 10)] == pytest.approx([4.0, 3.0, 2.0])


@pytest.mark.parametrize(
    "fields, key",
    [
        ({"shape": "quadratic"}, "shape"),
        ({"start_step": 200, "end_step": 200}, "end_step"),
        ({"start_step": -1}, "start_step"),
        ({"shape": "exponential", "rate": 0.0}, "rate"),
    ],
)
def test_invalid_config_names_the_key(fields: dict, key: str) -> None:
    with pytest.raises(ValueError, match=rf"schedules\.lambda1\.{key}"):
        build(**fields)


def test_unknown_knob_lists_valid_knobs_and_closest() -> None:
    with pytest.raises(ValueError) as info:
        build(knob="objectives.rtd.wieght")
    msg = str(info.value)
    assert "\n" not in msg
    assert "objectives.mlm_mask.ratio" in msg
    assert "did you mean 'objectives.rtd.weight'" in msg


def test_state_round_trip_is_empty_and_harmless() -> None:
    schedule = build(shape="cosine")
    state = json.loads(json.dumps(schedule.state_dict()))
    fresh = build(shape="cosine")
    fresh.load_state_dict(state)
    assert [value(fresh, s) for s in range(0, 250, 7)] == [value(schedule, s) for s in range(0, 250, 7)]


@settings(max_examples=150, deadline=None)
@given(
    shape=st.sampled_from(["linear", "cosine", "exponential", "step"]),
    start=st.floats(-100, 100),
    end=st.floats(-100, 100),
    start_step=st.integers(0, 50),
    length=st.integers(1, 60),
    rate=st.floats(0.01, 20),
)
def test_every_shape_is_monotone_bounded_and_exact_at_the_ends(
    shape: str, start: float, end: float, start_step: int, length: int, rate: float
) -> None:
    schedule = build(
        shape=shape,
        start_value=start,
        end_value=end,
        start_step=start_step,
        end_step=start_step + length,
        rate=rate,
    )
    series = [value(schedule, s) for s in range(start_step + length + 2)]
    assert series[start_step] == start and series[start_step + length] == end
    lo, hi = min(start, end), max(start, end)
    tol = 1e-9 * max(1.0, abs(lo), abs(hi))
    assert all(lo - tol <= v <= hi + tol for v in series)
    sign = 1.0 if end >= start else -1.0
    assert all(sign * (b - a) >= -tol for a, b in itertools.pairwise(series))
