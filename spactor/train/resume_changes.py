"""Which schedule changes a resume can still apply.

A resume may change ``schedules.*`` (their future values, :data:`spactor.train.run_dir.
MUTABLE`), but part of a schedule may lie in the past: a ``two_stage`` τ once the run is
in stage 2, a curriculum stage that has ended, an anneal whose decay is over. Saying the
resume "applies" such a change would be false; :func:`schedules_without_effect` finds
them by comparing what the run will do from the resumed step on, with each changed
schedule as saved and as now configured: the knob values of every remaining step, and
where each remaining stage ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from spactor.schedules.base import Schedule, ScheduleSet
from spactor.schedules.base import build as build_schedules


def changed_instances(applied: Iterable[str]) -> dict[str, list[str]]:
    """``schedules.<name>`` -> its applied changes (``key old -> new`` lines)."""
    out: dict[str, list[str]] = {}
    for change in applied:
        parts = change.split(" ", 1)[0].split(".")
        if parts[0] == "schedules" and len(parts) >= 3:
            out.setdefault(parts[1], []).append(change)
    return out


def _future(schedules: ScheduleSet, step: int, stage: int, max_steps: int) -> tuple[Any, ...] | None:
    """What the set does from ``step`` (in ``stage``) to the end, or None when part of it
    is decided from metrics still to come (then nothing can be said ahead)."""
    stages = schedules.stages
    ends = []
    for k in range(stage, stages.num_stages):
        if stages.decides_later(k):
            return None
        end = stages.decided_end(k)
        ends.append(None if end is None else max(end, step))  # a past end: the switch comes at once
    values = tuple(tuple(sorted(schedules.values(t).items())) for t in range(step, max_steps))
    return stages.num_stages, tuple(ends), values


def schedules_without_effect(old: Mapping[str, Any], new: Mapping[str, Any], names: Iterable[str],
                             knobs: Mapping[str, float], objectives: list[str], step: int, stage: int,
                             max_steps: int) -> set[str]:
    """Among the schedule instances ``names`` (changed by the resume), those whose change
    changes nothing from ``step`` on: the run as configured now and the run with that one
    schedule as ``old`` (the saved run's resolved ``schedules``) are the same from there.
    A schedule that decides from metrics (``adaptive``) counts as taking effect while the
    stage it may end is still running."""
    quiet = set()
    now = _future(build_schedules(new, knobs, max_steps, objectives), step, stage, max_steps)
    if now is None:
        return quiet
    for name in names:
        if name not in old or name not in new or old[name].type != new[name].type:
            continue
        before = build_schedules({**new, name: old[name]}, knobs, max_steps, objectives)
        observes = type(before.schedules[name]).observe is not Schedule.observe
        if observes and stage < before.stages.num_stages:
            continue
        if _future(before, step, stage, max_steps) == now:
            quiet.add(name)
    return quiet
