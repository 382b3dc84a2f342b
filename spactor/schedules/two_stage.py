"""SpacTor's two-stage curriculum at a fixed step τ.

Steps ``[0, τ)`` run the hybrid objective (SC + RTD), steps ``[τ, max_steps)`` plain span
corruption. ``tau: null`` never switches (the paper's SpacTor(∞)); ``tau: 0`` is the SC
baseline from the first step. The paper's T5-Base runs use τ ∈ {60K, 120K, 250K} of 1M
steps; 120K is the default (T5-Large's setting).

Drives no knobs. It is the switch rule of the implicit two-stage curriculum
(``spactor.schedules.base.two_stage_curriculum``): stage 1 ends at ``until_step`` τ, and
stage 2 drops the objectives of the types in ``STAGE1_TYPES`` (MLM masks, generator, RTD
head); a ``curriculum`` schedule writes the same thing out as two stages.
"""

from __future__ import annotations

from dataclasses import dataclass

from spactor.checks import CheckContext, check_fields
from spactor.registry import SCHEDULES
from spactor.schedules.base import Schedule, ScheduleContext, schedule_field_rule


@dataclass
class TwoStageConfig:
    tau: int | None = 120_000  # first step of stage 2; None = never switch, 0 = SC only

    def check(self, where: str, ctx: CheckContext) -> None:
        check_fields(where, self, schedule_field_rule)


class TwoStage(Schedule):
    def __init__(self, tau: int | None) -> None:
        self.tau = tau

    def switch_step(self) -> int | None:
        return self.tau


@SCHEDULES.register("two_stage", TwoStageConfig)
def build_two_stage(cfg: TwoStageConfig, ctx: ScheduleContext) -> TwoStage:
    """Switch from hybrid SC + RTD to plain SC at a fixed step τ (SpacTor(τ))."""
    cfg.check(f"schedules.{ctx.name}", ctx.check_context())
    return TwoStage(cfg.tau)
