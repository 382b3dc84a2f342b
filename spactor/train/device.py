"""Device and precision: where a run computes and in which dtype its autocast runs. One
definition for pre-training (``runtime.device``, ``runtime.precision``) and fine-tuning
(``finetune.device``, ``finetune.precision``)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from spactor.config import ConfigError


def resolve_device(name: str, key: str = "runtime.device", error: type[Exception] = ConfigError) -> torch.device:
    """``auto``: CUDA when there is one, else the CPU. ``key`` names the setting in the
    error; ``error`` is the caller's bad-input exception."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise error(f"{key}: 'cuda' — no CUDA device is available here (use cpu or auto)")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device, key: str = "runtime.precision",
                   error: type[Exception] = ValueError) -> torch.dtype | None:
    """The compute dtype of the step's autocast, with and without FSDP: one precision
    policy on 1 and N devices (bf16 matmuls; fp32 master weights, optimizer state,
    residual stream, norms' statistics, softmax and cross-entropy; FSDP adds bf16
    all-gathers of the blocks and fp32 gradient reduction, see ``parallel.apply_fsdp``).
    None: no autocast (fp32)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32":
        return None
    raise error(f"{key} must be fp32, bf16 or auto, got {precision!r}")


def autocast(dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Autocast to ``dtype`` on ``device``'s type; a no-op for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
