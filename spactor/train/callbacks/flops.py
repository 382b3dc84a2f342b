"""FLOPs done per step and so far, from the run's :class:`~spactor.train.flops.mfu.FlopsTracker`."""

from __future__ import annotations

from typing import Any

from spactor.train.callbacks.base import Callback, LoopState
from spactor.train.flops.mfu import FlopsTracker


class FlopsCounter(Callback):
    """Counts every step's FLOPs in the stage it ran in, and logs ``flops_per_step``,
    ``flops_cum`` and ``flops_normalized`` (MFU is throughput: :class:`Throughput`).
    Checkpointed as the manifest's ``flops`` (the tracker's state), so ``flops_cum``
    resumes and ``spactor evaluate`` reads a checkpoint's FLOPs without the run."""

    name = "flops"

    def __init__(self, tracker: FlopsTracker) -> None:
        self.tracker = tracker
        self._fields: dict[str, float] = {}

    def post_step(self, state: LoopState, out: Any) -> None:
        self._fields = self.tracker.update(state.stage, state.step)

    def log(self, state: LoopState, record: dict[str, Any]) -> None:
        record.update(self._fields)

    def state_dict(self) -> dict[str, Any]:
        return self.tracker.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state)
