"""Logged numbers, recorded where they are computed with their reduction declared.

Every number of a ``metrics.jsonl`` training record is recorded by the code that computes
it, as ``record(name, value, Reduce.X)``: an objective on its ``ObjectiveOutput``
(``out.record(f"{self.name}/accuracy", ..., Reduce.MEAN)``), the step for the losses
and the gradient norm. Values stay device tensors (reading one is a host sync); the
step combines a key's micro-batches by its reduction (:class:`MetricRecord`), and the
runner's ``MetricWindow`` (``spactor.train.metrics``) reduces every key over the ranks
once per logging window, one all-reduce per reduction kind, and logs the mean over the
window's steps.

Names are namespaced by the objective instance (its key under ``objectives:``):
``loss/<instance>`` and ``<instance>/<metric>``, so two instances of one objective type
never share a key.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import torch


class Reduce(enum.Enum):
    """How one step's values of a metric combine over micro-batches and ranks."""

    # Summed: each micro-batch's value is its part of a global total (a loss summed over
    # its items and divided by the global item count).
    SUM = "sum"
    # Averaged: each micro-batch computes a ratio of its own (an accuracy).
    MEAN = "mean"
    # The largest (the gradient norm: the same global value on every rank).
    MAX = "max"


class Recorded(NamedTuple):
    """A recorded value and its reduction; ``count``: the values combined into it (a
    MEAN's sum is divided by the count, over every rank, at log time)."""

    value: torch.Tensor
    reduce: Reduce
    count: int = 1


class MetricRecord:
    """One step's recorded metrics on this rank: name -> :class:`Recorded`. A name
    recorded again (the next micro-batch) is combined by its reduction, on the device:
    SUM and MEAN add up (MEAN counts the values), MAX keeps the largest."""

    def __init__(self) -> None:
        self._entries: dict[str, Recorded] = {}

    def record(self, name: str, value: torch.Tensor, reduce: Reduce) -> None:
        value = value.detach()
        held = self._entries.get(name)
        if held is None:
            self._entries[name] = Recorded(value, reduce)
            return
        if held.reduce is not reduce:
            raise ValueError(f"metric '{name}' is recorded with Reduce.{held.reduce.name} and Reduce.{reduce.name}")
        combined = torch.maximum(held.value, value) if reduce is Reduce.MAX else held.value + value
        self._entries[name] = Recorded(combined, reduce, held.count + 1)

    def local_value(self, name: str) -> torch.Tensor:
        """``name`` reduced over this rank's micro-batches (a MEAN divided by its count);
        for tests and one-rank callers (a device tensor: no read)."""
        held = self._entries[name]
        return held.value / held.count if held.reduce is Reduce.MEAN else held.value

    def __getitem__(self, name: str) -> Recorded:
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> Iterator[tuple[str, Recorded]]:
        return iter(self._entries.items())


def as_recorded(value: Recorded | torch.Tensor) -> Recorded:
    """An objective's metric: a :class:`Recorded`, or a bare tensor (a plugin written
    before reductions were declared), which is a per-micro-batch ratio: Reduce.MEAN."""
    return value if isinstance(value, Recorded) else Recorded(value, Reduce.MEAN)


def recorded_items(values: MetricRecord | Mapping[str, Recorded | torch.Tensor]) -> Iterator[tuple[str, Recorded]]:
    """``(name, Recorded)`` pairs of a record or of a mapping (bare tensors: see :func:`as_recorded`)."""
    if isinstance(values, MetricRecord):
        return values.items()
    return ((k, as_recorded(v)) for k, v in values.items())
