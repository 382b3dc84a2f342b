"""Knob schedules: every step's knob values, logged, and the logged records they observe."""

from __future__ import annotations

from typing import Any

from spactor.objectives.base import Objective
from spactor.train.callbacks.base import Callback, LoopState
from spactor.train.stages import apply_knobs, knob_values
from spactor.schedules.base import ScheduleSet


class KnobSchedules(Callback):
    """Before each step, applies the schedules' values for it (``apply_knobs``); logs the
    knob values of the objectives the stage runs as ``knob/<path>``; after each logging step, lets the
    schedules observe the record (adaptive ones decide from logged windows only).
    Checkpointed as the manifest's ``schedules`` (each schedule's own state)."""

    name = "schedules"

    def __init__(self, schedules: ScheduleSet, objectives: dict[str, Objective]) -> None:
        self.schedules = schedules
        self.objectives = objectives  # the run's dict: a released objective leaves it

    def pre_step(self, state: LoopState) -> None:
        apply_knobs(self.objectives, self.schedules.values(state.step))

    def log(self, state: LoopState, record: dict[str, Any]) -> None:
        # The stage's objectives only: one held for a later stage has no value in effect yet.
        active = self.schedules.stages.active_in(state.stage, self.objectives)
        running = {name: self.objectives[name] for name in active}
        record.update({f"knob/{k}": v for k, v in knob_values(running).items()})

    def post_log(self, state: LoopState, record: dict[str, Any]) -> None:
        self.schedules.observe(state.step, record)

    def state_dict(self) -> dict[str, Any]:
        return self.schedules.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.schedules.load_state_dict(state)
