"""SpacTor's switch to stage 2 of the implicit two-stage curriculum, for tests and
benchmarks that build a stage-2 step directly (the trainer gets there through
``ScheduleSet.stages.inactive_in``)."""

from __future__ import annotations

import torch
from torch import nn

from spactor.objectives.base import Objective
from spactor.train.stages import release_objectives


def release_stage1(
    modules: nn.Module, objectives: dict[str, Objective], optimizer: torch.optim.Optimizer | None
) -> list[str]:
    """Release the objectives whose class says ``STAGE1_ONLY`` (generator, RTD head, MLM
    masking), as the two-stage curriculum does on entering stage 2."""
    names = [name for name, obj in objectives.items() if obj.STAGE1_ONLY]
    return release_objectives(modules, objectives, names, optimizer)
