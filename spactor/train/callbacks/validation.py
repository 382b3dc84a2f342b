"""Validation losses on the run's held-out batches, on evaluation steps."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from spactor.train.builders import seeded_generator
from spactor.train.callbacks.base import Callback, LoopState
from spactor.train.callbacks.data_skipped import skipped_fields
from spactor.train.parallel import DistInfo
from spactor.train.step import EvalPass, TrainModules, evaluate


class Validation(Callback):
    """On evaluation steps (every ``eval_every`` and the last), ``val/...`` from
    ``eval_batches`` validation batches, corrupted with a fresh generator of the same
    seed each time (every evaluation sees the same inputs), and the skip counts again
    (with what the validation pass skipped). ``passes``: the evaluation passes
    ``trainer.eval_passes`` declares (``spactor.train.eval_passes``: ``val/clean/loss/...``),
    run on the same batches.

    Validation keeps its own cadence, independent of ``log_every``: on an evaluation step
    that is also a logging step its fields join that step's record; on any other
    evaluation step they are a record of their own (``step``, ``stage``, ``val/...``),
    written through ``write`` at ``end_step`` (before that step's checkpoint)."""

    def __init__(self, modules: TrainModules, data: Any, *, every: int, batches: int, seed: int,
                 info: DistInfo, amp_dtype: torch.dtype | None, device: torch.device,
                 passes: Sequence[EvalPass] = (),
                 write: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.modules = modules
        self.passes = list(passes)
        self.data = data
        self.every = every
        self.batches = batches
        self.seed = seed
        self.info = info
        self.amp_dtype = amp_dtype
        self.device = device
        self.write = write

    def due(self, state: LoopState) -> bool:
        return state.step == state.max_steps or bool(self.every and state.step % self.every == 0)

    def fields(self) -> dict[str, Any]:
        """One validation pass: the ``val/...`` losses and the skip counts."""
        rng = seeded_generator(self.seed, self.device)
        fields: dict[str, Any] = evaluate(self.modules, self.data.validation_batches(), self.batches, rng,
                                          self.info, self.amp_dtype, self.device, passes=self.passes)
        fields.update(skipped_fields(self.data))
        return fields

    def log(self, state: LoopState, record: dict[str, Any]) -> None:
        if self.due(state) and self.data.has_validation:
            record.update(self.fields())

    def end_step(self, state: LoopState) -> None:
        # Every rank runs the pass (its forwards are collective under FSDP); rank 0's
        # writer is the only one enabled.
        if state.log_step or not self.due(state) or not self.data.has_validation:
            return
        record = {"step": state.step, "stage": state.stage, **self.fields()}
        if self.write is not None:
            self.write(record)
