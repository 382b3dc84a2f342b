"""The non-finite guard: what a step with a non-finite loss or gradient does to the run."""

from __future__ import annotations

from typing import Any

from spactor.train.callbacks.base import Callback, LoopState


class NonFiniteStop(FloatingPointError):
    """A non-finite loss or gradient under ``trainer.nonfinite=stop`` (or too many skips)."""


class NonFiniteGuard(Callback):
    """``skip``: drop the update and count it; ``stop``: stop the run. Either way a
    run of ``max_consecutive`` bad steps stops it. ``train_step`` has already left the
    weights and optimizer state alone; the guard raises before the step counts, so the
    checkpoint the loop writes on :class:`NonFiniteStop` is the last good step's.

    The counts are checkpointed: a resumed run logs ``skipped_nonfinite`` as the total
    since the start, and a run of bad steps across a resume still counts as one."""

    name = "nonfinite"

    def __init__(self, policy: str, max_consecutive: int) -> None:
        if policy not in ("skip", "stop"):
            raise ValueError(f"trainer.nonfinite must be skip or stop, got {policy!r}")
        self.policy = policy
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total = 0

    def check_step(self, state: LoopState, out: Any) -> None:
        if out.applied:
            self.consecutive = 0
            return
        step = state.step + 1
        self.consecutive += 1
        self.total += 1
        what = out.nonfinite_message(step)
        if self.policy == "stop":
            raise NonFiniteStop(f"{what}; trainer.nonfinite=stop: checkpointed the last good step")
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteStop(f"{what}: {self.consecutive} bad steps in a row (trainer.max_consecutive_skips="
                                f"{self.max_consecutive}); checkpointed the last good step")
        print(f"skipping the update of step {step}: {what}", flush=True)

    def log(self, state: LoopState, record: dict[str, Any]) -> None:
        if self.total:
            record["skipped_nonfinite"] = self.total

    def state_dict(self) -> dict[str, Any]:
        return {"consecutive": self.consecutive, "total": self.total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.consecutive = int(state.get("consecutive", 0))
        self.total = int(state.get("total", 0))
