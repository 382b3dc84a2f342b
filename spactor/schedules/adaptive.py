"""Adaptive τ: switch to stage 2 when a monitored metric stops improving.

SpacTor's fixed τ is a guess made before training; the paper (Fig. 4b) sees the hybrid
objective's edge over plain SC shrink after an inflection point (~200K steps for
T5-Base) as the generator's replacements get harder. This schedule watches a logged
metric (default ``loss/rtd``) and switches when it plateaus, within
``[min_tau, max_tau]``.

After every logging step (``trainer.log_every``) the runner calls ``observe(step,
metrics)`` with the logged record (losses averaged over the logging window). Steps before ``warmup`` are
ignored; from then on, each observed value x of ``metric`` updates a bias-corrected
exponential moving average (as in Adam; ``n`` counts the tracked values)::

    m ← smoothing · m + (1 - smoothing) · x,   n ← n + 1      (m = 0, n = 0 at first)
    ema = m / (1 - smoothing^n)

i.e. the smoothing-weighted mean of the values tracked so far, so the first (noisy)
value does not dominate as it would if it seeded the EMA. Plateau tracking starts once
``n ≥ 1 / (1 - smoothing)`` values are averaged (the EMA's horizon: 10 at 0.9, 1 for
the raw metric), because the mean of a few noisy values says little about a trend. From
then the EMA is compared with the best EMA so far, by an *absolute* margin
``min_delta``::

    mode min (a loss):      improved  iff  ema < best - min_delta
    mode max (an accuracy): improved  iff  ema > best + min_delta

An improvement sets ``best = ema`` and resets the count of stale observations; anything
else adds one. ``best`` only moves on an improvement, so a slow steady improvement still
resets the count once it adds up to more than ``min_delta``. When the count reaches
``patience`` after step s, stage 2 starts at the next step: ``switch_step = s + 1``, but
not before ``min_tau`` (a plateau before it switches at ``min_tau``). It switches at
``max_tau`` at the latest, plateau or not.

``patience`` counts *observations that carry the metric*: a step whose metrics lack it
(or hold NaN/inf) is skipped, not counted as "no improvement". With the metric logged
every ``log_every`` steps, that is ``patience · log_every`` steps.

The switch step is decided once, never changes afterwards, and is checkpointed together
with the tracking state (m, n, best, stale count), so a resumed run decides identically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spactor.checks import CheckContext, check_fields
from spactor.config import ConfigError
from spactor.registry import SCHEDULES
from spactor.schedules.base import Schedule, ScheduleContext, schedule_field_rule

MODES = ("min", "max")


@dataclass
class AdaptiveConfig:
    metric: str = "loss/rtd"  # a logged metric key
    mode: str = "min"  # min: lower is better (a loss); max: higher is better (rtd/generator_accuracy)
    smoothing: float = 0.9  # EMA factor in [0, 1); 0 = the raw metric
    min_delta: float = 1e-3  # absolute margin an EMA must beat the best by
    patience: int = 1000  # stale observations before switching
    min_tau: int = 0  # earliest switch step
    max_tau: int = 250_000  # latest switch step
    warmup: int = 100  # steps [0, warmup) are not tracked

    def check(self, where: str, ctx: CheckContext) -> None:
        check_fields(where, self, schedule_field_rule)
        if self.mode not in MODES:
            raise ConfigError(f"{where}.mode: must be one of {', '.join(MODES)}, got '{self.mode}'")
        if not 0.0 <= self.smoothing < 1.0:
            raise ConfigError(f"{where}.smoothing: must be in [0, 1), got {self.smoothing}")
        if self.min_delta < 0:
            raise ConfigError(f"{where}.min_delta: must be >= 0, got {self.min_delta}")
        if self.patience < 1:
            raise ConfigError(f"{where}.patience: must be >= 1, got {self.patience}")
        if self.warmup < 0:
            raise ConfigError(f"{where}.warmup: must be >= 0, got {self.warmup}")
        if self.max_tau < self.min_tau:
            raise ConfigError(f"{where}.max_tau: must be >= min_tau ({self.min_tau}), got {self.max_tau}")


def improved(value: float, best: float, mode: str, min_delta: float) -> bool:
    return value < best - min_delta if mode == "min" else value > best + min_delta


class Adaptive(Schedule):
    def __init__(self, cfg: AdaptiveConfig) -> None:
        self.cfg = cfg
        # The tracked values so far: biased EMA accumulator and count (see ema()).
        self.m = 0.0
        self.n = 0
        # Values the EMA must average before it is trusted to show a plateau.
        self.horizon = math.ceil(1.0 / (1.0 - cfg.smoothing) - 1e-9)
        self.best: float | None = None
        self.stale = 0  # tracked observations since the last improvement
        # max_tau 0 means stage 2 from the first step, before anything is observed.
        self.switch: int | None = 0 if cfg.max_tau == 0 else None

    def switch_step(self) -> int | None:
        return self.switch

    def observe(self, step: int, metrics: Mapping[str, float]) -> None:
        if self.switch is not None:
            return  # decided once, for good
        self.track(step, metrics)
        next_step = step + 1
        plateau = self.stale >= self.cfg.patience and next_step >= self.cfg.min_tau
        if plateau or next_step >= self.cfg.max_tau:
            self.switch = next_step

    def track(self, step: int, metrics: Mapping[str, float]) -> None:
        """Fold this step's metric into the EMA and the stale count."""
        if step < self.cfg.warmup:
            return
        raw = metrics.get(self.cfg.metric)
        if raw is None:
            return
        x = float(raw)
        if not math.isfinite(x):
            return  # a NaN step says nothing about a plateau; don't let it poison the EMA
        s = self.cfg.smoothing
        self.m = s * self.m + (1.0 - s) * x
        self.n += 1
        if self.n < self.horizon:
            return
        ema = self.ema()
        if self.best is None or improved(ema, self.best, self.cfg.mode, self.cfg.min_delta):
            self.best = ema
            self.stale = 0
        else:
            self.stale += 1

    def ema(self) -> float | None:
        """The bias-corrected EMA of the tracked values (None before the first)."""
        if self.n == 0:
            return None
        return self.m / (1.0 - self.cfg.smoothing**self.n)

    def state_dict(self) -> dict[str, Any]:
        return {"m": self.m, "n": self.n, "best": self.best, "stale": self.stale, "switch_step": self.switch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.m = float(state["m"])
        self.n = int(state["n"])
        self.best = None if state["best"] is None else float(state["best"])
        self.stale = int(state["stale"])
        self.switch = None if state["switch_step"] is None else int(state["switch_step"])


@SCHEDULES.register("adaptive", AdaptiveConfig)
def build_adaptive(cfg: AdaptiveConfig, ctx: ScheduleContext) -> Adaptive:
    """Adaptive τ: switch to plain SC when a smoothed metric plateaus."""
    cfg.check(f"schedules.{ctx.name}", ctx.check_context())
    return Adaptive(cfg)
