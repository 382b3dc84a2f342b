"""adaptive: switch on a plateau of a smoothed metric, within [min_tau, max_tau]."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import pytest

import spactor.schedules.adaptive  # noqa: F401  (registers "adaptive")
from spactor.registry import SCHEDULES
from spactor.schedules.adaptive import Adaptive, AdaptiveConfig
from spactor.schedules.base import ScheduleContext

METRIC = "loss/rtd"


def build(name: str = "adaptive", **fields) -> Adaptive:
    ctx = ScheduleContext(name=name, knobs={"objectives.rtd.weight": 10.0}, max_steps=10_000)
    return SCHEDULES.get("adaptive").factory(AdaptiveConfig(**fields), ctx)


def run(schedule: Adaptive, series: Callable[[int], float | None], steps: int, start: int = 0) -> int | None:
    """Observe steps [start, steps) of a synthetic metric; None = metric not logged."""
    for step in range(start, steps):
        x = series(step)
        schedule.observe(step, {} if x is None else {METRIC: x})
    return schedule.switch_step()


def drop_then_flat(step: int) -> float:
    # 5.0, 4.9, ... 0.0 at step 50, then flat at 0.0.
    return max(5.0 - 0.1 * step, 0.0)


def test_fires_after_patience_stale_steps_of_a_plateau() -> None:
    # Raw metric (smoothing 0): last improvement at step 50; steps 51..60 are 10 stale
    # observations, so after step 60 the switch is set to 61.
    schedule = build(smoothing=0.0, patience=10, min_delta=1e-3, warmup=0, max_tau=10_000)
    assert run(schedule, drop_then_flat, 60) is None
    assert run(schedule, drop_then_flat, 61, start=60) == 61
    assert schedule.driven_knobs() == []


def test_smoothing_delays_the_switch_on_the_same_sequence() -> None:
    # The EMA keeps creeping down after the raw metric flattens, so it fires later, but it
    # does fire: the EMA's remaining gap halves every ~6.6 steps and soon moves < min_delta.
    schedule = build(smoothing=0.9, patience=10, min_delta=1e-3, warmup=0, max_tau=10_000)
    switch = run(schedule, drop_then_flat, 500)
    assert switch is not None and 61 < switch < 200


def test_steadily_improving_metric_never_fires_before_max_tau() -> None:
    schedule = build(smoothing=0.9, patience=5, min_delta=1e-3, warmup=10, max_tau=3000)
    steady = lambda step: 100.0 - 0.01 * step
    assert run(schedule, steady, 2999) is None
    assert run(schedule, steady, 3000, start=2999) == 3000  # the cap: stage 2 from max_tau


def test_noisy_but_improving_metric_does_not_fire_early_with_smoothing() -> None:
    rng = random.Random(0)
    noise = [rng.uniform(-0.5, 0.5) for _ in range(3000)]
    noisy = lambda step: 10.0 - 0.002 * step + noise[step]
    # Without smoothing a lucky low sample sets a best the trend needs ~hundreds of steps
    # to beat, so a raw-metric plateau detector fires early: the test below is meaningful.
    raw = build(smoothing=0.0, patience=30, min_delta=1e-3, warmup=100, max_tau=3000)
    assert run(raw, noisy, 3000) < 1000
    smoothed = build(smoothing=0.99, patience=30, min_delta=1e-3, warmup=100, max_tau=3000)
    assert run(smoothed, noisy, 3000) == 3000


def test_mode_max_for_an_accuracy() -> None:
    rising_then_flat = lambda step: min(0.01 * step, 0.5)
    schedule = build(metric="rtd/generator_accuracy", mode="max", smoothing=0.0, patience=5, warmup=0)
    for step in range(200):
        schedule.observe(step, {"rtd/generator_accuracy": rising_then_flat(step)})
    assert schedule.switch_step() == 56


def test_missing_metric_is_skipped_not_counted() -> None:
    # Flat metric logged on even steps only: stale observations at steps 2, 4, ..., 20.
    schedule = build(smoothing=0.0, patience=10, warmup=0)
    every_other = lambda step: 1.0 if step % 2 == 0 else None
    assert run(schedule, every_other, 20) is None
    assert run(schedule, every_other, 21, start=20) == 21


def test_non_finite_metric_is_skipped() -> None:
    schedule = build(smoothing=0.5, patience=3, warmup=0)
    for step in range(10):
        schedule.observe(step, {METRIC: float("nan")})
    assert schedule.switch_step() is None
    assert schedule.state_dict()["n"] == 0


def test_warmup_steps_are_ignored() -> None:
    # Steps 0..9 are ignored (including their huge values); step 10 is the first tracked value and
    # steps 11..15 are 5 stale observations → switch at 16.
    schedule = build(smoothing=0.0, patience=5, warmup=10)
    series = lambda step: 100.0 if step < 10 else 1.0
    assert run(schedule, series, 15) is None
    assert run(schedule, series, 16, start=15) == 16


def test_min_tau_defers_an_early_plateau() -> None:
    schedule = build(smoothing=0.0, patience=5, warmup=0, min_tau=100)
    assert run(schedule, lambda step: 1.0, 99) is None
    assert run(schedule, lambda step: 1.0, 100, start=99) == 100


def test_max_tau_zero_is_stage_2_from_the_start() -> None:
    assert build(min_tau=0, max_tau=0).switch_step() == 0


def test_switch_step_never_changes_once_set() -> None:
    schedule = build(smoothing=0.0, patience=10, warmup=0)
    switch = run(schedule, drop_then_flat, 100)
    assert switch == 61
    run(schedule, lambda step: -1000.0 * step, 300, start=100)  # a sudden large improvement
    assert schedule.switch_step() == 61


def test_switch_step_survives_a_state_dict_round_trip() -> None:
    schedule = build(smoothing=0.0, patience=10, warmup=0)
    run(schedule, drop_then_flat, 100)
    state = json.loads(json.dumps(schedule.state_dict()))
    resumed = build(smoothing=0.0, patience=10, warmup=0)
    resumed.load_state_dict(state)
    assert resumed.switch_step() == 61
    run(resumed, lambda step: -1000.0 * step, 200, start=100)
    assert resumed.switch_step() == 61


def test_resuming_mid_run_decides_identically() -> None:
    fields = {"smoothing": 0.9, "patience": 10, "warmup": 5, "max_tau": 10_000}
    straight = build(**fields)
    expected = run(straight, drop_then_flat, 500)
    first = build(**fields)
    run(first, drop_then_flat, 40)  # before the plateau: EMA, best and count in flight
    assert first.switch_step() is None
    resumed = build(**fields)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert run(resumed, drop_then_flat, 500, start=40) == expected


@pytest.mark.parametrize(
    "fields, key",
    [
        ({"mode": "lowest"}, "mode"),
        ({"smoothing": 1.0}, "smoothing"),
        ({"min_delta": -0.1}, "min_delta"),
        ({"patience": 0}, "patience"),
        ({"warmup": -1}, "warmup"),
        ({"min_tau": -5}, "min_tau"),
        ({"min_tau": 100, "max_tau": 50}, "max_tau"),
    ],
)
def test_invalid_config_names_the_key(fields: dict, key: str) -> None:
    with pytest.raises(ValueError, match=rf"schedules\.tau_auto\.{key}"):
        build(name="tau_auto", **fields)
