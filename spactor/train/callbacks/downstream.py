"""Downstream scores during pre-training (``trainer.downstream_every``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from spactor.train.callbacks.base import Callback, LoopState


class DownstreamEval(Callback):
    """Every ``every`` steps, fine-tunes and scores ``tasks`` from the checkpoint of that
    step (written first if the periodic ones did not) and logs ``eval/<task>/score`` as
    a record of its own. Rank 0 evaluates; it reads the weights back from disk."""

    def __init__(self, every: int, tasks: Sequence[str], run_dir: Path, save: Callable[[], None],
                 write: Callable[[dict[str, Any]], None]) -> None:
        self.every = every
        self.tasks = list(tasks)
        self.run_dir = run_dir
        self.save = save
        self.write = write

    def end_step(self, state: LoopState) -> None:
        if not (self.every and state.step % self.every == 0):
            return
        if state.last_checkpoint_step != state.step:
            self.save()  # the evaluation reads the weights back from this checkpoint
        if state.is_main:
            from spactor.evaluation.finetune import downstream_scores

            self.write({"step": state.step, **downstream_scores(self.run_dir, state.step, self.tasks)})
