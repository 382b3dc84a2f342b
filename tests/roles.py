"""An objective's ``modify``/``loss`` called in a test as the runner calls them: with the
context the runner builds (``MicroBatchContext``), here for that objective alone."""

from __future__ import annotations

from spactor.objectives.base import Batch, MicroBatchContext, Objective


def ctx_for(obj: Objective, batch: Batch, with_metrics: bool = True) -> MicroBatchContext:
    """``obj``'s counts on ``batch`` (what the runner counts before the forward), its pad
    id, metrics on (as a logging step)."""
    return MicroBatchContext.of([obj], batch, obj.vocab.pad_id, with_metrics)
