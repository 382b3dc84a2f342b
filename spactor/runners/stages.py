"""Knobs and stages: applying schedule values, and SpacTor's switch to stage 2."""

from __future__ import annotations

import gc

import torch
from torch import nn

from spactor.objectives.base import Objective


def knob_values(objectives: dict[str, Objective]) -> dict[str, float]:
    return {f"objectives.{name}.{k}": v for name, obj in objectives.items() for k, v in obj.knobs().items()}


def apply_knobs(objectives: dict[str, Objective], values: dict[str, float]) -> None:
    for path, value in values.items():
        _, name, knob = path.split(".", 2)
        if name in objectives:  # released stage-1 objectives no longer take values
            objectives[name].set_knob(knob, value)


def stage1_finished(objectives: dict[str, Objective]) -> bool:
    """Every stage-1 objective has been turned off by its knobs (e.g. λ1 and the MLM
    ratio annealed to 0): the hybrid stage is over even without a two_stage schedule."""
    stage1 = [o for o in objectives.values() if o.STAGE1_ONLY]
    return bool(stage1) and all(o.is_off() for o in stage1)


def release_stage1(
    modules: nn.Module, objectives: dict[str, Objective], optimizer: torch.optim.Optimizer | None
) -> list[str]:
    """Switch to stage 2: drop the stage-1 objectives (generator, RTD head, MLM masking),
    their parameters from the optimizer and their optimizer state, and free the memory.
    Every rank does the same at the same step, so sharded modules stay consistent."""
    released = [name for name, obj in objectives.items() if obj.STAGE1_ONLY]
    for name in released:
        objectives[name].release()
        del modules.objectives[name]  # type: ignore[attr-defined]
        del objectives[name]
    if optimizer is not None:
        keep = {id(p) for p in modules.parameters()}
        for group in optimizer.param_groups:
            dropped = [p for p in group["params"] if id(p) not in keep]
            group["params"] = [p for p in group["params"] if id(p) in keep]
            for p in dropped:
                optimizer.state.pop(p, None)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return released


def trainable_parameters(modules: nn.Module) -> list[nn.Parameter]:
    return [p for p in modules.parameters() if p.requires_grad]
