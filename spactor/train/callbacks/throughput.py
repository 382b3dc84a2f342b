"""Tokens per second, time per step and batch wait, and MFU, per logging window."""

from __future__ import annotations

import time
from typing import Any

import torch

from spactor.train.callbacks.base import Callback, LoopState
from spactor.train.flops.mfu import FlopsTracker


class Throughput(Callback):
    """The window's time is the time its steps took: from each ``pre_step`` to its
    ``post_step``, plus, on the logging step, the wait for the device's queued work (a
    CUDA synchronize). What happens between steps — logging, validation, checkpoints,
    downstream evaluation — is not in it. ``tokens_per_s``, ``time/step_s``,
    ``time/data_s`` and (with a FLOPs tracker and a known peak) ``mfu`` come from it."""

    def __init__(self, device: torch.device, flops: FlopsTracker | None = None) -> None:
        self.device = device
        self.flops = flops
        self._reset(tokens_seen=0)
        self._step_start = 0.0
        self._step_end = 0.0

    def _reset(self, tokens_seen: int) -> None:
        self._busy_s = 0.0
        self._data_s = 0.0
        self._steps = 0
        self._tokens_start = tokens_seen

    def pre_train(self, state: LoopState) -> None:
        self._reset(state.tokens_seen)

    def pre_step(self, state: LoopState) -> None:
        self._step_start = time.perf_counter()

    def post_step(self, state: LoopState, out: Any) -> None:
        self._step_end = time.perf_counter()
        self._busy_s += self._step_end - self._step_start
        self._data_s += state.data_s
        self._steps += 1

    def log(self, state: LoopState, record: dict[str, Any]) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = max(self._busy_s + time.perf_counter() - self._step_end, 1e-9)
        steps = max(self._steps, 1)
        record["tokens_seen"] = state.tokens_seen
        record["tokens_per_s"] = (state.tokens_seen - self._tokens_start) / seconds
        record["time/step_s"] = seconds / steps
        record["time/data_s"] = self._data_s / steps
        if self.flops is not None:
            record["mfu"] = self.flops.mfu(seconds)
        self._reset(state.tokens_seen)
