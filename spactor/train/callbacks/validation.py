"""Validation losses on the run's held-out batches, on evaluation steps."""

from __future__ import annotations

from typing import Any

import torch

from spactor.train.builders import seeded_generator
from spactor.train.callbacks.base import Callback, LoopState
from spactor.train.callbacks.data_skipped import skipped_fields
from spactor.train.parallel import DistInfo
from spactor.train.step import TrainModules, evaluate


class Validation(Callback):
    """On logging steps that are evaluation steps (every ``eval_every`` and the last),
    adds ``val/...`` from ``eval_batches`` validation batches, corrupted with a fresh
    generator of the same seed each time (every evaluation sees the same inputs), and
    the skip counts again (with what the validation pass skipped). ``clean``: the
    objectives of the run's last stage, which ``val/clean/loss/...`` evaluates on the
    input without the generator (None: no clean pass)."""

    def __init__(self, modules: TrainModules, data: Any, *, every: int, batches: int, seed: int,
                 info: DistInfo, amp_dtype: torch.dtype | None, device: torch.device,
                 clean: list[str] | None = None) -> None:
        self.modules = modules
        self.clean = clean
        self.data = data
        self.every = every
        self.batches = batches
        self.seed = seed
        self.info = info
        self.amp_dtype = amp_dtype
        self.device = device

    def due(self, state: LoopState) -> bool:
        return state.step == state.max_steps or bool(self.every and state.step % self.every == 0)

    def log(self, state: LoopState, record: dict[str, Any]) -> None:
        if not self.due(state) or not self.data.has_validation:
            return
        rng = seeded_generator(self.seed, self.device)
        record.update(evaluate(self.modules, self.data.validation_batches(), self.batches, rng, self.info,
                               self.amp_dtype, self.device, clean=self.clean))
        record.update(skipped_fields(self.data))
