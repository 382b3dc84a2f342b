"""SpacTor's switch to stage 2 of the implicit two-stage curriculum, for tests and
benchmarks that build a stage-2 step directly (the trainer gets there through
``ScheduleSet.stages.inactive_in``)."""

from __future__ import annotations

import torch
from torch import nn

from spactor.objectives.base import Objective
from spactor.schedules.base import two_stage_curriculum
from spactor.train.stages import release_objectives


def release_stage1(
    modules: nn.Module, objectives: dict[str, Objective], optimizer: torch.optim.Optimizer | None
) -> list[str]:
    """Release what the implicit curriculum's stage 2 drops (generator, RTD head, MLM
    masking: the objectives of ``STAGE1_TYPES``; each objective here is named by its
    type), as the trainer does on entering stage 2."""
    stages = two_stage_curriculum({name: name for name in objectives}, {})
    return release_objectives(modules, objectives, stages.inactive_in(2, objectives), optimizer)
