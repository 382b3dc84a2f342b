"""The stage switch: entering the curriculum's next stage between two steps."""

from __future__ import annotations

from typing import Any

import torch

from spactor.objectives.base import Objective
from spactor.train.callbacks.base import Callback, LoopState
from spactor.train.stages import apply_knobs, release_objectives
from spactor.train.step import TrainModules
from spactor.schedules.base import ScheduleSet


class StageSwitch(Callback):
    """Before each step (after :class:`KnobSchedules` applied its values), moves past
    every stage that has ended (``ScheduleSet.advance``). Entering a stage releases the
    objectives it no longer runs, with their parameters' optimizer state, sets the
    objectives the step runs (``TrainModules.active``) and applies the new stage's knob
    values. The next logged record carries ``stage_switch_step`` (the updates done
    before the new stage began) and ``released``; that pending part of the record is
    checkpointed, so a resume between the switch and its logging step still logs it.

    The stage itself is the loop's (``LoopState.stage``, the manifest's ``stage``)."""

    def __init__(self, schedules: ScheduleSet, modules: TrainModules, objectives: dict[str, Objective],
                 optimizer: torch.optim.Optimizer) -> None:
        self.schedules = schedules
        self.modules = modules
        self.objectives = objectives
        self.optimizer = optimizer
        self.pending: dict[str, Any] = {}  # fields for the next logged record

    def pre_step(self, state: LoopState) -> None:
        entered = self.schedules.advance(state.step, self.objectives)
        if entered == state.stage:
            return
        self.pending["stage_switch_step"] = state.step
        inactive = self.schedules.stages.inactive_in(entered, self.objectives)
        released = release_objectives(self.modules, self.objectives, inactive, self.optimizer)
        # two switches in one window: both
        self.pending["released"] = self.pending.get("released", []) + released
        state.stage = entered
        self.modules.active = self.schedules.stages.active_in(entered, self.objectives)
        apply_knobs(self.objectives, self.schedules.values(state.step))  # the new stage's knob values

    def log(self, state: LoopState, record: dict[str, Any]) -> None:
        record.update(self.pending)
        self.pending = {}

    def state_dict(self) -> dict[str, Any]:
        return dict(self.pending)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending = dict(state)
