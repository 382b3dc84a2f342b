"""Knobs and stages: applying schedule values, the raw chunk length a run's stages need,
releasing the objectives no later stage runs (SpacTor's switch to stage 2 is one such
release), and walking a run's stages before training (what each runs, where each ends)
for the FLOPs report."""

from __future__ import annotations

import gc
from collections.abc import Mapping

import torch
from torch import nn

from spactor.config import Resolved
from spactor.objectives.base import Objective, has_loss
from spactor.train.builders import raw_length_for
from spactor.schedules.base import ScheduleSet, Stages


def knob_values(objectives: dict[str, Objective]) -> dict[str, float]:
    return {f"objectives.{name}.{k}": v for name, obj in objectives.items() for k, v in obj.knobs().items()}


def configured_types(resolved: Resolved, objectives: Mapping[str, Objective]) -> dict[str, str]:
    """Objective name -> its configured type, in config order: what the schedules' implicit
    two-stage curriculum reads to tell the objectives its stage 2 drops."""
    return {name: resolved.objectives[name].type if name in resolved.objectives else name
            for name in objectives}


def apply_knobs(objectives: dict[str, Objective], values: dict[str, float]) -> None:
    for path, value in values.items():
        _, name, knob = path.split(".", 2)
        if name in objectives:  # released objectives no longer take values
            objectives[name].set_knob(knob, value)


def run_raw_length(objectives: dict[str, Objective], stages: Stages, input_length: int) -> int:
    """The raw chunk length the data delivers for the whole run: the longest any stage
    needs, each stage folding the lengths of the objectives it runs (``raw_length_for``).
    Two objectives that read the raw chunk never run in the same stage, so their needs
    are not chained (SC's 568 for SC + RTD, UL2's 1004 for UL2: 1004, not SC's need for a
    1004-token output). Call it with every objective built, before any is released: the
    length is one for the whole run, so a resumed run reads the same stream. Each
    transform crops the chunk to its own length; a run whose stages all need the same
    length gets exactly ``raw_length_for`` of every objective, as before curricula."""
    needs = [
        raw_length_for({n: objectives[n] for n in stages.active_in(k, objectives)}, input_length)
        for k in range(1, stages.num_stages + 1)
    ]
    return max(needs)


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


# --------------------------------------------------------------------------- walking the stages (FLOPs)


def enter_stage(
    modules: nn.Module, objectives: dict[str, Objective], schedules: ScheduleSet, stage: int
) -> None:
    """Put the counting build into ``stage`` as the trainer does: release what no stage
    from it on runs, run only what it names (``TrainModules.active``), and apply the knob
    values of its step 0 (the curriculum's constants for the stage)."""
    schedules.stages.current = stage
    if stage > 1:
        inactive = schedules.stages.inactive_in(stage, objectives)
        release_objectives(modules, objectives, inactive, optimizer=None)
    modules.active = schedules.stages.active_in(stage, objectives)  # type: ignore[assignment]
    apply_knobs(objectives, schedules.values(0))


def stage_exists(objectives: dict[str, Objective], schedules: ScheduleSet, stage: int) -> bool:
    """Whether ``stage`` trains something of its own: what it runs has a loss, and (for the
    implicit two-stage curriculum) it releases something (ELECTRA has nothing left after
    dropping its stage-1-only objectives, so it has no stage 2). A written-out curriculum's
    stages all exist."""
    if stage == 1:
        return True
    rest = [objectives[name] for name in schedules.stages.active_in(stage, objectives)]
    trains = any(has_loss(type(o)) for o in rest)
    explicit = any(s is schedules.stages for s in schedules.schedules.values())
    return trains and (explicit or len(rest) < len(objectives))


def stage_end_step(
    objectives: dict[str, Objective], schedules: ScheduleSet, stage: int, first: int, max_steps: int
) -> int | None:
    """First step in ``[first, max_steps)`` before which ``stage`` has ended (a fixed end
    step, or the knobs turning its leaving objectives off, e.g. an annealed λ1 reaching 0),
    by bisection: the conditions that end a stage are monotone in the step. None if it
    does not end before ``max_steps``. Leaves the knobs at their step-0 values."""
    stages = schedules.stages
    if stage >= stages.num_stages or max_steps < 1 or first >= max_steps:
        return None
    stages.current = stage

    def ended(step: int) -> bool:
        apply_knobs(objectives, schedules.values(step))
        return stages.ends(stage, step, objectives)

    try:
        if not ended(max_steps - 1):
            return None
        lo, hi = first, max_steps - 1
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if ended(mid) else (mid + 1, hi)
        return lo
    finally:
        apply_knobs(objectives, schedules.values(0))


def trainable_parameters(modules: nn.Module) -> list[nn.Parameter]:
    return [p for p in modules.parameters() if p.requires_grad]
