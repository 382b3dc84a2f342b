"""The logged records: ``metrics.jsonl`` (and TensorBoard), and the progress line."""

from __future__ import annotations

from typing import Any

from spactor.train.callbacks.base import Callback, LoopState
from spactor.train.metrics import MetricsWriter, Progress


class MetricsLog(Callback):
    """Opens ``metrics.jsonl`` at ``pre_train`` (a resumed run drops the lines after its
    checkpoint's step; a new one starts it empty), writes every complete record, shows
    the progress line, and closes both at ``close``. Only rank 0's writer is enabled."""

    def __init__(self, writer: MetricsWriter, progress: Progress, *, resumed: bool) -> None:
        self.writer = writer
        self.progress = progress
        self.resumed = resumed

    def pre_train(self, state: LoopState) -> None:
        self.writer.open(resume_step=state.step if self.resumed else None)
        if not self.resumed and state.is_main:
            self.writer.path.write_text("")

    def write(self, record: dict[str, Any]) -> None:
        """A record of its own (downstream scores)."""
        self.writer.write(record)

    def post_log(self, state: LoopState, record: dict[str, Any]) -> None:
        self.writer.write(record)
        shown = {"loss": record.get("loss"), "stage": state.stage, "tok/s": record.get("tokens_per_s")}
        if record.get("mfu") is not None:
            shown["mfu"] = record["mfu"]
        if "flops_normalized" in record:
            shown["flops/base"] = record["flops_normalized"]
        self.progress.update(state.step, shown)

    def close(self) -> None:
        self.writer.close()
        self.progress.close()
