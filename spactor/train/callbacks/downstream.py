"""Downstream scores during pre-training (``trainer.downstream_every``).

The loop does not know how a checkpoint is scored: the caller that owns the evaluation
hands it a :data:`DownstreamScorer` (``spactor train`` and studies pass the evaluation
layer's ``downstream_scores``), so the training loop imports nothing from the layer above
it."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist

from spactor.train.callbacks.base import Callback, LoopState

# (run directory, step of the checkpoint just saved, task names) -> the record's fields,
# ``eval/<task>/score`` and ``eval/<task>/std``.
DownstreamScorer = Callable[[Path, int, list[str]], dict[str, float]]

# How long the other ranks wait for rank 0's fine-tuning: hours at Base with several
# tasks and seeds, far beyond NCCL's collective timeout, hence a gloo group of its own.
WAIT_FOR_RANK0 = datetime.timedelta(hours=24)


class DownstreamEval(Callback):
    """Every ``every`` steps, fine-tunes and scores ``tasks`` from the checkpoint of that
    step (written first if the periodic ones did not) and logs ``eval/<task>/score`` as
    a record of its own. Rank 0 evaluates; it reads the weights back from disk. The other
    ranks wait for it in a barrier of a gloo group with a day's timeout, not in the next
    step's first collective, which would time out on NCCL long before the evaluation ends."""

    def __init__(self, every: int, tasks: Sequence[str], run_dir: Path, save: Callable[[], None],
                 write: Callable[[dict[str, Any]], None], score: DownstreamScorer | None) -> None:
        if every and score is None:
            raise ValueError("trainer.downstream_every is set but train() was given no downstream scorer: "
                             "pass train(..., downstream=downstream_scores) from the evaluation's finetune module")
        self.every = every
        self.score = score
        self.tasks = list(tasks)
        self.run_dir = run_dir
        self.save = save
        self.write = write
        self._wait_group: Any = None

    def end_step(self, state: LoopState) -> None:
        if not (self.every and state.step % self.every == 0):
            return
        if state.last_checkpoint_step != state.step:
            self.save()  # the evaluation reads the weights back from this checkpoint
        if state.is_main:
            assert self.score is not None  # checked at construction
            self.write({"step": state.step, **self.score(self.run_dir, state.step, self.tasks)})
        if state.world_size > 1:
            if self._wait_group is None:  # every rank reaches this step: a collective call
                self._wait_group = dist.new_group(backend="gloo", timeout=WAIT_FOR_RANK0)
            dist.barrier(group=self._wait_group)
