"""Knobs and stages: applying schedule values, and releasing the objectives a stage no
longer runs (SpacTor's switch to stage 2 is one such release)."""

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
        if name in objectives:  # released objectives no longer take values
            objectives[name].set_knob(knob, value)


def release_objectives(
    modules: nn.Module,
    objectives: dict[str, Objective],
    names: list[str],
    optimizer: torch.optim.Optimizer | None,
) -> list[str]:
    """Enter a stage that no longer runs ``names``: drop those objectives (their modules,
    e.g. the RTD generator and head, and buffers), their parameters from the optimizer and
    their optimizer state, and free the memory. Parameters another module still holds
    (the shared token embedder) stay. Every rank does the same at the same step, so
    sharded modules stay consistent. Returns the names released, in config order."""
    released = [name for name in objectives if name in set(names)]
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


def release_stage1(
    modules: nn.Module, objectives: dict[str, Objective], optimizer: torch.optim.Optimizer | None
) -> list[str]:
    """SpacTor's switch to stage 2 of the implicit two-stage curriculum: release the
    objectives whose class says ``STAGE1_ONLY`` (generator, RTD head, MLM masking)."""
    names = [name for name, obj in objectives.items() if obj.STAGE1_ONLY]
    return release_objectives(modules, objectives, names, optimizer)


def trainable_parameters(modules: nn.Module) -> list[nn.Parameter]:
    return [p for p in modules.parameters() if p.requires_grad]
