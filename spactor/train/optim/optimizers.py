"""Optimizers and learning-rate schedules, registered by name.

Learning-rate schedules are pure functions of the step that return the absolute
learning rate; the runner writes it into every param group before each update, so a
resumed run needs no scheduler state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from spactor.registry import LR_SCHEDULES, OPTIMIZERS
from spactor.schedules.shapes import interpolate

LRSchedule = Callable[[int], float]


# --------------------------------------------------------------------------- optimizers


@dataclass
class AdafactorConfig:
    # T5's Adafactor, as Mesh TF's AdafactorOptimizer and T5X run it: factored second
    # moments for tensors whose two largest dims are both >= min_dim_size_to_factor, no
    # momentum, decay 1 - t^beta2_decay, updates clipped to RMS <= clipping_threshold and
    # scaled by max(eps2, RMS(p)). eps1 is added to grad² as is (in fp32), as Mesh TF
    # does. The learning rate is the lr_schedule's, with nothing taken off it.
    eps1: float = 1e-30
    eps2: float = 1e-3
    beta2_decay: float = -0.8
    clipping_threshold: float = 1.0
    min_dim_size_to_factor: int = 128
    weight_decay: float = 0.0  # decoupled, p *= 1 - lr * weight_decay; T5 uses none


@OPTIMIZERS.register("adafactor", AdafactorConfig)
def build_adafactor(cfg: AdafactorConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """spactor's Adafactor (spactor.train.optim.adafactor): one implementation for plain and
    FSDP2-sharded parameters, two all-reduces per step when sharded."""
    from spactor.train.optim.adafactor import Adafactor

    return Adafactor(
        params,
        lr=1e-2,  # overwritten every step by the lr_schedule
        eps1=cfg.eps1,
        eps2=cfg.eps2,
        beta2_decay=cfg.beta2_decay,
        clipping_threshold=cfg.clipping_threshold,
        min_dim_size_to_factor=cfg.min_dim_size_to_factor,
        weight_decay=cfg.weight_decay,
    )


@dataclass
class AdamWConfig:
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    # None: fused wherever torch has the kernel (CPU and CUDA): the foreach path reads
    # each parameter's step counter with .item() every step.
    fused: bool | None = None


@OPTIMIZERS.register("adamw", AdamWConfig)
def build_adamw(cfg: AdamWConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """torch.optim.AdamW (decoupled weight decay)."""
    params = list(params)
    fused = cfg.fused
    if fused is None:
        fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(
        params, lr=1e-3, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay, fused=fused
    )


# --------------------------------------------------------------------------- LR schedules


@dataclass
class RsqrtConfig:
    scale: float = 1.0
    warmup_steps: int = 10_000  # T5: lr = 1/sqrt(max(n, 10^4)) — constant 0.01 for 10k steps


@LR_SCHEDULES.register("rsqrt", RsqrtConfig)
def rsqrt_schedule(cfg: RsqrtConfig) -> LRSchedule:
    """T5's inverse square root: scale / sqrt(max(step, warmup_steps))."""
    floor = max(1, cfg.warmup_steps)
    return lambda step: cfg.scale / math.sqrt(max(step, floor))


@dataclass
class ConstantConfig:
    lr: float = 1e-3
    warmup_steps: int = 0


@LR_SCHEDULES.register("constant", ConstantConfig)
def constant_schedule(cfg: ConstantConfig) -> LRSchedule:
    """Constant learning rate after an optional linear warmup."""
    return lambda step: cfg.lr * _warmup(step, cfg.warmup_steps)


@dataclass
class DecayConfig:
    lr: float = 1e-3  # peak
    warmup_steps: int = 1000
    decay_steps: int = 100_000  # steps from the end of warmup to min_lr
    min_lr: float = 0.0


@LR_SCHEDULES.register("linear", DecayConfig)
def linear_schedule(cfg: DecayConfig) -> LRSchedule:
    """Linear warmup to ``lr`` then linear decay to ``min_lr`` (BERT/ELECTRA)."""
    return lambda step: _decay(step, cfg, "linear")


@LR_SCHEDULES.register("cosine", DecayConfig)
def cosine_schedule(cfg: DecayConfig) -> LRSchedule:
    """Linear warmup to ``lr`` then cosine decay to ``min_lr``."""
    return lambda step: _decay(step, cfg, "cosine")


def _warmup(step: int, warmup_steps: int) -> float:
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def _decay(step: int, cfg: DecayConfig, shape: str) -> float:
    """Warmup, then ``lr`` annealed to ``min_lr`` over ``decay_steps`` with the knob
    anneals' ``shape`` (``spactor.schedules.shapes``)."""
    if step < cfg.warmup_steps:
        return cfg.lr * _warmup(step, cfg.warmup_steps)
    frac = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.decay_steps))
    # Read backwards, from min_lr (progress 1 - frac = 0 at the end of the decay) to lr: the
    # value stays exact where it is smallest (lr - lr·f(frac) would cancel near min_lr = 0).
    return interpolate(cfg.min_lr, cfg.lr, 1.0 - frac, shape)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
