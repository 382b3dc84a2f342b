"""Periodic checkpoints."""

from __future__ import annotations

from collections.abc import Callable

from spactor.train.callbacks.base import Callback, LoopState


class Checkpointing(Callback):
    """Saves every ``every`` steps (0: never), except at the last step, which the loop
    saves itself once it ends. ``save`` writes the run (modules, optimizer, the loop's and
    every callback's state) at ``state.step``."""

    def __init__(self, every: int, save: Callable[[], None]) -> None:
        self.every = every
        self.save = save

    def due(self, state: LoopState) -> bool:
        return bool(self.every) and state.step % self.every == 0 and state.step != state.max_steps

    def end_step(self, state: LoopState) -> None:
        if self.due(state):
            self.save()
