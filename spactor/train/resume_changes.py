"""Which schedule changes a resume can still apply.

A resume may change ``schedules.*`` (their future values, :data:`spactor.train.run_dir.
MUTABLE`), but part of a schedule may lie in the past: a ``two_stage`` τ once the run is
in stage 2, a curriculum stage that has ended, an anneal whose decay is over. Saying the
resume "applies" such a change would be false; :func:`schedules_without_effect` finds
them by comparing what the run will do from the resumed step on, with each changed
schedule as saved and as now configured: the knob values of every remaining step, and
where each remaining stage ends. The verdict only words the message: the change is
applied either way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from spactor.schedules.base import ScheduleSet
from spactor.schedules.base import build as build_schedules


def changed_instances(applied: Iterable[str]) -> dict[str, list[str]]:
    """``schedules.<name>`` -> its applied changes (``key old -> new`` lines)."""
    out: dict[str, list[str]] = {}
    for change in applied:
        parts = change.split(" ", 1)[0].split(".")
        if parts[0] == "schedules" and len(parts) >= 3:
            out.setdefault(parts[1], []).append(change)
    return out


# Every remaining step up to this many is compared; past it, a stride through the rest
# and the steps the configs name (a schedule's values change at its configured steps):
# a 1M-step run's full scan took ~10 s, and only the wording of a message depends on it.
DENSE_STEPS = 20_000


def _numbers(value: Any) -> set[int]:
    """The integers in a schedule config (steps such as ``tau``, ``end_step``, ``until_step``)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return set().union(*(_numbers(v) for v in value.values())) if value else set()
    if isinstance(value, (list, tuple)):
        return set().union(*(_numbers(v) for v in value)) if value else set()
    return {value} if isinstance(value, int) and not isinstance(value, bool) else set()


def compared_steps(step: int, max_steps: int, configs: Iterable[Any]) -> list[int]:
    """The steps from ``step`` to the end at which two schedules' values are compared."""
    steps = set(range(step, min(max_steps, step + DENSE_STEPS)))
    stride = max(1, (max_steps - step) // DENSE_STEPS)
    steps.update(range(step, max_steps, stride))
    for n in set().union(*(_numbers(c) for c in configs)):
        steps.update(t for t in (n - 1, n, n + 1) if step <= t < max_steps)
    steps.add(max_steps - 1)
    return sorted(t for t in steps if step <= t < max_steps)


def _future(schedules: ScheduleSet, steps: list[int], step: int, stage: int,
            live: set[str] | None) -> tuple[Any, ...] | None:
    """What the set does at ``steps`` from ``step`` (in ``stage``) on, or None when part of
    it is decided from metrics still to come (then nothing can be said ahead). ``live``:
    the objectives not released yet (a released one's knobs no longer set anything)."""
    stages = schedules.stages
    ends = []
    for k in range(stage, stages.num_stages):
        if stages.decides_later(k):
            return None
        end = stages.decided_end(k)
        ends.append(None if end is None else max(end, step))  # a past end: the switch comes at once

    def kept(knob: str) -> bool:
        parts = knob.split(".")
        return live is None or parts[0] != "objectives" or parts[1] in live

    values = []
    for t in steps:  # a curriculum's values are its stage's: walk the stages as the run would
        k = stage
        while k < stages.num_stages and (end := stages.decided_end(k)) is not None and t >= end:
            k += 1
        stages.current = k
        values.append((k, tuple(sorted((name, v) for name, v in schedules.values(t).items() if kept(name)))))
    return stages.num_stages, tuple(ends), tuple(values)


def schedules_without_effect(old: Mapping[str, Any], new: Mapping[str, Any], names: Iterable[str],
                             knobs: Mapping[str, float], objectives: Mapping[str, str] | list[str],
                             step: int, stage: int,
                             max_steps: int, live: Iterable[str] | None = None) -> set[str]:
    """Among the schedule instances ``names`` (changed by the resume), those whose change
    changes nothing from ``step`` on: the run as configured now and the run with that one
    schedule as ``old`` (the saved run's resolved ``schedules``) are the same from there.
    A stage end decided from metrics (``adaptive``) still to come makes every change count
    as taking effect. ``live``: the objectives the run still holds
    (default: all of ``objectives``)."""
    quiet: set[str] = set()
    current = build_schedules(new, knobs, max_steps, objectives)
    held = None if live is None else set(live)
    for name in names:
        if name not in old or name not in new or old[name].type != new[name].type:
            continue
        before = build_schedules({**new, name: old[name]}, knobs, max_steps, objectives)
        steps = compared_steps(step, max_steps, (old[name].config, new[name].config))
        now = _future(current, steps, step, stage, held)
        if now is not None and _future(before, steps, step, stage, held) == now:
            quiet.add(name)
    return quiet
