"""Random draws of a transform that do not depend on how the batch is split over ranks.

A transform draws its noise row by row, batch dimension first (``row_rand((B, N))``). On
one rank that is a plain draw. Under :func:`rows_of_global_batch` (the step sets it with
several ranks), each draw is made for the whole global batch from a generator that is the
same on every rank, and this rank keeps its rows: the numbers a row gets, and so its
corruption, are the ones it gets on one rank, while the transform itself only works on
this rank's rows. Drawing the global noise is cheap; corrupting the global batch is not.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RowSlice:
    start: int  # this rank's first row in the global batch
    rows: int  # this rank's rows
    total: int  # rows of the global batch


_SLICE: contextvars.ContextVar[RowSlice | None] = contextvars.ContextVar("spactor_row_slice", default=None)


@contextlib.contextmanager
def rows_of_global_batch(start: int, rows: int, total: int) -> Iterator[None]:
    """Within: the batch a transform gets holds rows ``start .. start + rows`` of a global
    batch of ``total`` rows."""
    token = _SLICE.set(RowSlice(start, rows, total))
    try:
        yield
    finally:
        _SLICE.reset(token)


def _global(rows: int) -> RowSlice | None:
    where = _SLICE.get()
    if where is not None and rows != where.rows:
        raise ValueError(f"a row draw of {rows} rows in a batch of {where.rows} rows: draw per batch row")
    return where


def row_rand(
    shape: tuple[int, ...] | torch.Size, *, generator: torch.Generator | None, device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``torch.rand(shape)``, ``shape[0]`` the batch rows."""
    where = _global(shape[0])
    if where is None:
        return torch.rand(shape, generator=generator, device=device, dtype=dtype)
    full = torch.rand((where.total, *shape[1:]), generator=generator, device=device, dtype=dtype)
    return full[where.start : where.start + where.rows]


def row_randint(
    low: int, high: int, shape: tuple[int, ...] | torch.Size, *, generator: torch.Generator | None,
    device: torch.device, dtype: torch.dtype = torch.long,
) -> torch.Tensor:
    """``torch.randint(low, high, shape)``, ``shape[0]`` the batch rows."""
    where = _global(shape[0])
    if where is None:
        return torch.randint(low, high, shape, generator=generator, device=device, dtype=dtype)
    full = torch.randint(low, high, (where.total, *shape[1:]), generator=generator, device=device, dtype=dtype)
    return full[where.start : where.start + where.rows]


def row_multinomial(probs: torch.Tensor, rows: int, *, generator: torch.Generator | None) -> torch.Tensor:
    """``(rows,)`` draws from the 1-D ``probs`` with replacement, one per batch row."""
    where = _global(rows)
    if where is None:
        return torch.multinomial(probs, rows, replacement=True, generator=generator)
    full = torch.multinomial(probs, where.total, replacement=True, generator=generator)
    return full[where.start : where.start + where.rows]


def row_index(rows: int, device: torch.device) -> torch.Tensor:
    """``(rows,)`` the rows' indices in the global batch."""
    where = _global(rows)
    start = 0 if where is None else where.start
    return torch.arange(start, start + rows, device=device)
