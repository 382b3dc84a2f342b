"""Bad records the data sources skipped, counted so far."""

from __future__ import annotations

from typing import Any

from spactor.train.callbacks.base import Callback, LoopState


def skipped_fields(data: Any) -> dict[str, int]:
    """``data/skipped/<reason>`` for every reason with a count (the loader's totals)."""
    return {f"data/skipped/{k}": v for k, v in data.skipped_counts().items() if v}


class DataSkipped(Callback):
    """Logs the loader's skip counts (they are the loader's state: checkpointed with it)."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def log(self, state: LoopState, record: dict[str, Any]) -> None:
        record.update(skipped_fields(self.data))
