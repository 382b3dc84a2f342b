"""Anneal one knob from ``start_value`` to ``end_value`` over ``[start_step, end_step)``.

E.g. SpacTor with a continuous hand-over instead of a hard switch: the RTD weight λ1
from 10 to 0 (``knob: objectives.rtd.weight``); or a mask-ratio curriculum.

With ``s = start_value`` (default: the knob's configured value), ``e = end_value`` and
progress ``p = (step - start_step) / (end_step - start_step)``::

    step <  start_step          ->  s
    step >= end_step            ->  e
    otherwise                   ->  s + (e - s) · f(p), with f by ``shape``:

    linear        f(p) = p
    cosine        f(p) = (1 - cos(π p)) / 2
                  i.e. value = e + (s - e) · (1 + cos(π p)) / 2; the midpoint at p = 1/2
    exponential   f(p) = (1 - exp(-rate · p)) / (1 - exp(-rate))
                  i.e. value = e + (s - e) · (exp(-rate·p) - exp(-rate)) / (1 - exp(-rate)):
                  the gap to e decays exponentially, renormalised so the value is exactly
                  s at p = 0 and exactly e at p = 1. Unlike geometric interpolation
                  s · (e/s)^p it is defined when an end is 0 (λ1: 10 → 0) or negative,
                  and for rising anneals. ``rate`` > 0 sets how front-loaded the change
                  is: the fraction of it done by p = 1/2 is 1/(1 + exp(-rate/2)), 0.92 at
                  the default 5; rate → 0 approaches linear.
    step          s until end_step, then e: one drop at end_step (start_step plays no
                  part beyond validation). The shape for on/off knobs such as ``enabled``.

Every shape is monotone between s and e, and continuous except ``step``. The shapes are
``spactor.schedules.shapes``, which the learning-rate decays use too.
"""

from __future__ import annotations

from dataclasses import dataclass

from spactor.checks import CheckContext
from spactor.config import ConfigError
from spactor.registry import SCHEDULES
from spactor.schedules.base import Schedule, ScheduleContext, check_knob
from spactor.schedules.shapes import SHAPES, interpolate


@dataclass
class AnnealConfig:
    knob: str  # dotted knob path, e.g. objectives.rtd.weight
    end_step: int  # first step at which the value is end_value
    start_value: float | None = None  # None: the knob's configured value
    end_value: float = 0.0
    start_step: int = 0  # last step at which the value is start_value
    shape: str = "linear"  # linear | cosine | exponential | step
    rate: float = 5.0  # exponential only: decay rate over the whole anneal

    def check(self, where: str, ctx: CheckContext) -> None:
        if ctx.knobs is not None:
            check_knob(f"{where}.knob", self.knob, ctx.knobs)
        if self.shape not in SHAPES:
            raise ConfigError(f"{where}.shape: unknown shape '{self.shape}'; valid: {', '.join(SHAPES)}")
        if self.start_step < 0:
            raise ConfigError(f"{where}.start_step: must be >= 0, got {self.start_step}")
        if self.end_step <= self.start_step:
            raise ConfigError(f"{where}.end_step: must be > start_step ({self.start_step}), got {self.end_step}")
        if self.shape == "exponential" and not self.rate > 0:
            raise ConfigError(f"{where}.rate: must be > 0, got {self.rate}")


class Anneal(Schedule):
    def __init__(
        self,
        knob: str,
        start_value: float,
        end_value: float,
        start_step: int,
        end_step: int,
        shape: str,
        rate: float,
    ) -> None:
        self.knob = knob
        self.start_value = start_value
        self.end_value = end_value
        self.start_step = start_step
        self.end_step = end_step
        self.shape = shape
        self.rate = rate

    def driven_knobs(self) -> list[str]:
        return [self.knob]

    def values(self, step: int) -> dict[str, float]:
        return {self.knob: self.value(step)}

    def value(self, step: int) -> float:
        s, e = self.start_value, self.end_value
        if step >= self.end_step:
            return e
        if step <= self.start_step:
            return s
        p = (step - self.start_step) / (self.end_step - self.start_step)
        return interpolate(s, e, p, self.shape, self.rate)


@SCHEDULES.register("anneal", AnnealConfig)
def build_anneal(cfg: AnnealConfig, ctx: ScheduleContext) -> Anneal:
    """Anneal one knob from start_value to end_value (linear, cosine, exponential, step)."""
    cfg.check(f"schedules.{ctx.name}", ctx.check_context())
    start = ctx.knobs[cfg.knob] if cfg.start_value is None else cfg.start_value
    return Anneal(
        cfg.knob, float(start), float(cfg.end_value), cfg.start_step, cfg.end_step, cfg.shape, float(cfg.rate)
    )
