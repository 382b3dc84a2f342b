"""Fast-ELECTRA's sampling-temperature curriculum.

Fast-ELECTRA (arXiv 2310.07347) replaces ELECTRA's jointly trained generator with a
frozen, already trained language model. A frozen generator is strong from the first
step, so the replaced-token-detection task would be hard from the start; the paper
recovers ELECTRA's implicit curriculum by sampling replacements from the generator's
distribution smoothed by a temperature T (softmax(logits / T)) that *decays
exponentially* towards 1, the unmodified distribution: early on (T > 1) replacements
come from a flatter distribution and are easier to spot; later they are as plausible as
the generator can make them. The reading notes we work from say the schedule decays
exponentially towards T = 1 but give neither its exact form nor its constants, so we
fix them here, as exponential decay of the excess over the final temperature:

    T(step) = T_end + (T0 - T_end) · exp(-rate · step / D)

with ``D = decay_steps`` (default: ``max_steps``). T(0) = T0, and T moves monotonically
from T0 towards T_end (1 by default) without crossing it. By ``step = D`` the excess over
T_end has shrunk to ``exp(-rate)`` of its start (0.7% at the default rate 5); past D the
curve keeps its shape rather than jumping to T_end. ``rate = D / h`` is the
``exp(-step / h)`` form with time constant ``h`` steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from spactor.checks import CheckContext
from spactor.config import ConfigError
from spactor.registry import SCHEDULES
from spactor.schedules.base import Schedule, ScheduleContext, check_knob


@dataclass
class TemperatureConfig:
    knob: str = "objectives.rtd.temperature"
    t0: float = 2.0  # temperature at step 0
    t_end: float = 1.0  # asymptote; 1 = the generator's own distribution
    decay_steps: int | None = None  # time scale D; None: trainer.max_steps
    rate: float = 5.0  # the excess T - t_end is exp(-rate) of its start at step D

    def check(self, where: str, ctx: CheckContext) -> None:
        if ctx.knobs is not None:
            check_knob(f"{where}.knob", self.knob, ctx.knobs)
        # A temperature divides the logits: it must be positive everywhere on the curve,
        # which lies between t0 and t_end.
        for key in ("t0", "t_end"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{where}.{key}: a temperature must be > 0, got {getattr(self, key)}")
        if not self.rate > 0:
            raise ConfigError(f"{where}.rate: must be > 0, got {self.rate}")
        decay_steps = ctx.max_steps if self.decay_steps is None else self.decay_steps
        if decay_steps is not None and decay_steps <= 0:
            origin = "" if self.decay_steps is not None else " (null: taken from trainer.max_steps)"
            raise ConfigError(f"{where}.decay_steps{origin}: must be > 0, got {decay_steps}")


def temperature_at(step: int, t0: float, t_end: float, decay_steps: int, rate: float) -> float:
    """T(step) = t_end + (t0 - t_end) · exp(-rate · step / decay_steps)."""
    return t_end + (t0 - t_end) * math.exp(-rate * step / decay_steps)


class Temperature(Schedule):
    def __init__(self, knob: str, t0: float, t_end: float, decay_steps: int, rate: float) -> None:
        self.knob = knob
        self.t0 = t0
        self.t_end = t_end
        self.decay_steps = decay_steps
        self.rate = rate

    def driven_knobs(self) -> list[str]:
        return [self.knob]

    def values(self, step: int) -> dict[str, float]:
        return {self.knob: temperature_at(step, self.t0, self.t_end, self.decay_steps, self.rate)}


@SCHEDULES.register("temperature", TemperatureConfig)
def build_temperature(cfg: TemperatureConfig, ctx: ScheduleContext) -> Temperature:
    """Fast-ELECTRA: sampling temperature decaying exponentially from t0 towards t_end."""
    cfg.check(f"schedules.{ctx.name}", ctx.check_context())
    decay_steps = ctx.max_steps if cfg.decay_steps is None else cfg.decay_steps
    return Temperature(cfg.knob, float(cfg.t0), float(cfg.t_end), decay_steps, float(cfg.rate))
