"""A curriculum of N stages, schedule ``curriculum``.

Each stage names the objectives it runs and, optionally, constant knob values; every
stage but the last says when it ends. ``stages`` maps a stage name to its options, in
order (a mapping, so ``schedules.curriculum.stages.handover.until_step=4`` overrides one
from the command line; a plain list works too); stage k is the k-th, 1-based::

    schedules:
      curriculum:
        stages:
          hybrid:
            objectives: [span_corruption, mlm_mask, rtd]  # default: every objective
            until_step: 120000                            # the first step of stage 2
          handover:
            knobs: {objectives.rtd.weight: 1.0}           # default objectives: the previous stage's
            until_off: true
          sc:
            objectives: [span_corruption]

A stage may also bring in an objective the previous one did not run (``spactor_ul2_sc``:
``hybrid: {objectives: [span_corruption, mlm_mask, rtd], ...}``, ``ul2: {objectives: [ul2],
...}``, ``sc: {objectives: [span_corruption]}``).

A stage ends at the first of its end conditions that holds, checked before every step:

* ``until_step: N``: stage k+1 starts at step N (N updates done), like ``two_stage``'s τ;
* ``until_off: true``: once the knobs have turned off every objective this stage runs and
  the next one does not (``enabled`` false or ``weight`` 0, e.g. an anneal of λ1 reaching 0);
* ``adaptive: {...}``: a plateau of a logged metric, with ``adaptive``'s options and
  meaning (its ``min_tau``/``max_tau``/``warmup`` are absolute steps); it watches the
  logged records from the start of its stage.

Objectives may enter and leave: a stage runs exactly the objectives it names, so one can
sit out a stage and come back (``SC + RTD → UL2 → SC``, recipe ``spactor_ul2_sc``). Every
objective is built at the start (the data delivers the longest raw chunk any stage needs;
each transform uses its own leading part) and is held, untrained, while a stage does not
run it; it is released (its modules and their optimizer state) on entering a stage that
neither names it nor is followed by one that does. Every objective must be named by some
stage. A knob named by some stage holds its configured value in the stages that do not
name it; knobs the curriculum sets may not be driven by another schedule. ``two_stage``,
``adaptive`` and anneal-to-zero recipes run the same :class:`Curriculum`, built implicitly
(``spactor.schedules.base.two_stage_curriculum``: their τ, adaptive decision or annealed
λ1 ends its first stage); a run with a ``curriculum`` decides its stages with it alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from spactor.config import ConfigError
from spactor.registry import SCHEDULES
from spactor.schedules.adaptive import Adaptive, AdaptiveConfig, build_adaptive
from spactor.schedules.base import Curriculum, ScheduleContext, Stage, check_knob

STAGE_KEYS = ("objectives", "knobs", "until_step", "until_off", "adaptive")


@dataclass
class CurriculumConfig:
    # stage name -> {objectives, knobs, until_step, until_off, adaptive}, in order (or a list).
    stages: Any = field(default_factory=dict)


def _stage(raw: Any, where: str, previous: list[str], ctx: ScheduleContext, last: bool) -> Stage:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a mapping with keys {', '.join(STAGE_KEYS)}, got {raw!r}")
    unknown = sorted(set(raw) - set(STAGE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}'; valid keys: {', '.join(STAGE_KEYS)}")

    names = raw.get("objectives")
    if names is None:
        names = list(previous)
    if isinstance(names, str) or not isinstance(names, list) or not names:
        raise ConfigError(f"{where}.objectives: must be a non-empty list of objective names, got {names!r}")
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{where}.objectives: '{name}' is named twice")
        if name not in ctx.objectives:
            raise ConfigError(
                f"{where}.objectives: unknown objective '{name}'; configured objectives: "
                f"{', '.join(ctx.objectives) or '(none)'}"
            )

    knobs_raw = raw.get("knobs") or {}
    if not isinstance(knobs_raw, Mapping):
        raise ConfigError(f"{where}.knobs: must map knob paths to values, got {knobs_raw!r}")
    knobs: dict[str, float] = {}
    for knob, value in knobs_raw.items():
        check_knob(f"{where}.knobs", str(knob), ctx.knobs)
        if isinstance(value, bool) or isinstance(value, (int, float)):
            knobs[str(knob)] = float(value)
        else:
            raise ConfigError(f"{where}.knobs.{knob}: must be a number or a boolean, got {value!r}")

    until_step = raw.get("until_step")
    is_step = isinstance(until_step, int) and not isinstance(until_step, bool) and until_step >= 0
    if until_step is not None and not is_step:
        raise ConfigError(f"{where}.until_step: must be a step >= 0, got {until_step!r}")
    until_off = raw.get("until_off", False)
    if not isinstance(until_off, bool):
        raise ConfigError(f"{where}.until_off: must be true or false, got {until_off!r}")
    adaptive = None
    if raw.get("adaptive") is not None:
        adaptive = _adaptive(raw["adaptive"], f"{where}.adaptive", ctx)
    has_end = until_step is not None or until_off or adaptive is not None
    if last and has_end:
        raise ConfigError(f"{where}: the last stage runs to trainer.max_steps and has no end condition")
    if not last and not has_end:
        raise ConfigError(f"{where}: a stage before the last needs an end: until_step, until_off or adaptive")
    return Stage(list(names), knobs, until_step, until_off, adaptive)


def _adaptive(raw: Any, where: str, ctx: ScheduleContext) -> Adaptive:
    valid = [f.name for f in dataclasses.fields(AdaptiveConfig)]
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a mapping of adaptive options ({', '.join(valid)}), got {raw!r}")
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}'; valid keys: {', '.join(valid)}")
    return build_adaptive(AdaptiveConfig(**raw), ScheduleContext(where.removeprefix("schedules."), ctx.knobs,
                                                                 ctx.max_steps, ctx.objectives))


@SCHEDULES.register("curriculum", CurriculumConfig)
def build_curriculum(cfg: CurriculumConfig, ctx: ScheduleContext) -> Curriculum:
    """N stages, each naming the objectives it runs and its knob values, ending at a step,
    when the objectives it hands over are off, or on a metric plateau."""
    where = f"schedules.{ctx.name}.stages"
    if isinstance(cfg.stages, Mapping):
        entries = [(f"{where}.{key}", raw) for key, raw in cfg.stages.items()]
    elif isinstance(cfg.stages, list):
        entries = [(f"{where}[{i}]", raw) for i, raw in enumerate(cfg.stages)]
    else:
        raise ConfigError(f"{where}: must map stage names to their options, got {cfg.stages!r}")
    if not entries:
        raise ConfigError(f"{where}: must have at least one stage")
    stages: list[Stage] = []
    previous = list(ctx.objectives)
    for i, (at, raw) in enumerate(entries):
        stage = _stage(raw, at, previous, ctx, last=i == len(entries) - 1)
        stages.append(stage)
        previous = stage.objectives
    named = {name for stage in stages for name in stage.objectives}
    unused = [name for name in ctx.objectives if name not in named]
    if unused:
        raise ConfigError(
            f"{where}: no stage names objective '{unused[0]}'; name it in a stage's objectives "
            "or remove it from objectives"
        )
    # Fixed ends must come in order: stage k+1 cannot end before stage k does.
    last_end, last_at = -1, ""
    for (at, _), stage in zip(entries[:-1], stages[:-1]):
        if stage.until_step is None:
            continue
        if stage.until_step < last_end:
            raise ConfigError(
                f"{at}.until_step: {stage.until_step} is before {last_at}.until_step {last_end}; "
                "stage ends must be in order"
            )
        last_end, last_at = stage.until_step, at
    return Curriculum(stages, ctx.knobs)
