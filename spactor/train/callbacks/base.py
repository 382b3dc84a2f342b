"""The callback protocol of the training loop: named points, the loop's own state, and
where each callback's state goes in a checkpoint.

One step of the loop, and the points a callback is called at::

    pre_step(state)                 # knob values, the stage switch
    <the batch, set_lr, train_step>
    check_step(state, out)          # whether the step counts (raise: stop at the last good step)
    <state.step += 1, state.tokens_seen += ...>
    post_step(state, out)           # per-step accounting (metric window, FLOPs)
    log(state, record)              # logging steps: each callback adds its fields
    post_log(state, record)         # the record is complete: write it, show it, observe it
    end_step(state)                 # checkpoints, downstream evaluation, whether to stop

``pre_train`` runs once after set-up and the checkpoint load, ``post_train`` after the
last save of a run that ended normally (finished or preempted), ``close`` always (an
error included). Every save goes through ``pre_checkpoint`` and ``post_checkpoint``.
Callbacks run in list order at every point.

A callback's ``state_dict`` is checkpointed under its ``name``: in the manifest's
``shared`` (the same on every rank; rank 0 writes it) or, with ``per_rank = True``, in
each rank's local file (state that is a rank's own share, such as the metric window's
device sums). A checkpoint without an entry for a callback (written before it existed)
leaves it fresh.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

# The manifest keys of the loop's own state (written by every version of spactor).
LOOP_STATE_KEYS = ("step", "stage", "tokens_seen")


@dataclass
class LoopState:
    """What the loop itself tracks; every callback sees the same object."""

    max_steps: int
    step: int = 0  # updates done (skipped ones included); during pre_step: the step about to run is step + 1
    stage: int = 1  # the curriculum's current stage, 1..N
    tokens_seen: int = 0  # over all ranks
    start_step: int = 0  # the step this run (or resume) started from
    world_size: int = 1
    is_main: bool = True  # rank 0: the one that writes files
    log_step: bool = False  # the current step is a logging step
    data_s: float = 0.0  # seconds the current step waited for its batch
    last_checkpoint_step: int | None = None  # the step of the newest checkpoint this run wrote
    stop: bool = False  # a callback asks the loop to end after the current step

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "stage": self.stage, "tokens_seen": self.tokens_seen}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class Callback:
    """A part of the training loop with state of its own. Subclasses override the
    points they need; every point defaults to doing nothing."""

    name: ClassVar[str] = ""  # the key of its state in a checkpoint (default: the class name, snake_case)
    per_rank: ClassVar[bool] = False  # state in each rank's local file instead of the shared manifest

    @classmethod
    def state_key(cls) -> str:
        return cls.name or _snake(cls.__name__)

    # -- points of the loop -------------------------------------------------------------
    def pre_train(self, state: LoopState) -> None:
        """After set-up and the checkpoint load, before the first step."""

    def pre_step(self, state: LoopState) -> None:
        """Before step ``state.step + 1`` fetches its batch."""

    def check_step(self, state: LoopState, out: Any) -> None:
        """Right after ``train_step``, before the step counts (``state.step`` is still the
        previous one). Raising here stops the run with the state of the last good step."""

    def post_step(self, state: LoopState, out: Any) -> None:
        """After step ``state.step`` counted (``out``: its ``StepOutput``)."""

    def log(self, state: LoopState, record: dict[str, Any]) -> None:
        """A logging step: add this callback's fields to ``record``."""

    def post_log(self, state: LoopState, record: dict[str, Any]) -> None:
        """The logging step's record is complete (read it; do not change it)."""

    def end_step(self, state: LoopState) -> None:
        """The end of every step: checkpoints, evaluations, ``state.stop``."""

    def pre_checkpoint(self, state: LoopState) -> None:
        """Before a checkpoint of ``state.step`` is written."""

    def post_checkpoint(self, state: LoopState, path: Path) -> None:
        """After a checkpoint was written to ``path``."""

    def post_train(self, state: LoopState) -> None:
        """The loop ended (finished or preempted) and its last checkpoint is written."""

    def close(self) -> None:
        """Always, as the run ends, an error included: give back what was taken."""

    # -- checkpointed state ------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


class CallbackList:
    """The run's callbacks in call order, dispatching each point to all of them."""

    def __init__(self, callbacks: Iterable[Callback]) -> None:
        self.callbacks = list(callbacks)
        seen: dict[str, Callback] = {}
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"{type(cb).__name__} is not a spactor.train.callbacks.Callback")
            key = cb.state_key()
            if key in LOOP_STATE_KEYS:
                raise ValueError(f"callback {type(cb).__name__}: name {key!r} is the loop's own state; "
                                 "choose another")
            if key in seen:
                raise ValueError(f"callbacks {type(seen[key]).__name__} and {type(cb).__name__} share the name "
                                 f"{key!r}; each needs its own (the key of its checkpointed state)")
            seen[key] = cb

    def __iter__(self) -> Iterator[Callback]:
        return iter(self.callbacks)

    def __len__(self) -> int:
        return len(self.callbacks)

    def pre_train(self, state: LoopState) -> None:
        for cb in self.callbacks:
            cb.pre_train(state)

    def pre_step(self, state: LoopState) -> None:
        for cb in self.callbacks:
            cb.pre_step(state)

    def check_step(self, state: LoopState, out: Any) -> None:
        for cb in self.callbacks:
            cb.check_step(state, out)

    def post_step(self, state: LoopState, out: Any) -> None:
        for cb in self.callbacks:
            cb.post_step(state, out)

    def log(self, state: LoopState) -> dict[str, Any]:
        """The logging step's record: the loop's fields, then each callback's, then
        ``post_log`` with the complete record. Returns it."""
        record: dict[str, Any] = {"step": state.step, "stage": state.stage}
        for cb in self.callbacks:
            cb.log(state, record)
        for cb in self.callbacks:
            cb.post_log(state, record)
        return record

    def end_step(self, state: LoopState) -> None:
        for cb in self.callbacks:
            cb.end_step(state)

    def pre_checkpoint(self, state: LoopState) -> None:
        for cb in self.callbacks:
            cb.pre_checkpoint(state)

    def post_checkpoint(self, state: LoopState, path: Path) -> None:
        for cb in self.callbacks:
            cb.post_checkpoint(state, path)

    def post_train(self, state: LoopState) -> None:
        for cb in self.callbacks:
            cb.post_train(state)

    def close(self) -> None:
        """Close every callback, even when one fails (the first error is raised after)."""
        error: BaseException | None = None
        for cb in self.callbacks:
            try:
                cb.close()
            except BaseException as e:  # noqa: BLE001 — the others still close
                error = error or e
        if error is not None:
            raise error

    # -- checkpoints -------------------------------------------------------------------
    def shared_state(self, state: LoopState) -> dict[str, Any]:
        """The manifest's ``shared``: the loop's state, then every shared callback's."""
        shared = state.state_dict()
        for cb in self.callbacks:
            if not cb.per_rank:
                entry = cb.state_dict()
                if entry:
                    shared[cb.state_key()] = entry
        return shared

    def local_state(self) -> dict[str, Any]:
        """This rank's callback states (the ``callbacks`` entry of its local file)."""
        local = {}
        for cb in self.callbacks:
            if cb.per_rank:
                entry = cb.state_dict()
                if entry:
                    local[cb.state_key()] = entry
        return local

    def load_state_dict(self, shared: dict[str, Any], local: dict[str, Any] | None) -> None:
        """Give each callback its entry. ``local`` is None when the checkpoint was written
        by another number of ranks: per-rank callbacks then start fresh."""
        for cb in self.callbacks:
            source = local if cb.per_rank else shared
            if source is not None and cb.state_key() in source:
                cb.load_state_dict(source[cb.state_key()])
