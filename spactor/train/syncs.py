"""Counting, on any device, the ops of a step that would make the host wait for a GPU.

One counter for the structural test (``tests/train/test_host_syncs.py``) and the
device check (``benchmarks/device_check.py``), so both classify an op the same way.
A ``TorchDispatchMode`` sees the aten ops below autograd, on CPU exactly as on CUDA, so
the counts carry over:

* **syncs** — the host reads a value: ``_local_scalar_dense`` (what ``.item()``,
  ``float(t)``, ``int(t)`` and ``bool(t)`` dispatch to), and the two ops that return a
  Python bool computed on the device, ``equal`` and ``is_nonzero`` (where a backend runs
  them as one op rather than decomposing them into ``_local_scalar_dense``);
* **data-dependent** — the output's shape depends on values, so the host must read a
  size before it can allocate: ``nonzero``, ``masked_select``, the ``unique`` family,
  indexing / ``index_put`` with a boolean mask, and ``repeat_interleave`` with tensor
  repeats and no ``output_size``. (``nonzero_static`` is not one: its size is given.)

A dispatch mode slows every op down: use it to count, never to time.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = frozenset({"_local_scalar_dense", "item", "equal", "is_nonzero"})
DATA_DEPENDENT_OPS = frozenset(
    {"nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_dim", "unique_consecutive"}
)
_MASK_INDEXING = ("index", "index_put", "index_put_")


def classify(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, str] | None:
    """``("sync" | "data_dependent", name)`` for an op the counter records, else None."""
    name = func.overloadpacket.__name__
    if name in SYNC_OPS:
        return "sync", name
    if name in DATA_DEPENDENT_OPS:
        return "data_dependent", name
    if name in _MASK_INDEXING and len(args) > 1:
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in (args[1] or [])):
            return "data_dependent", f"{name}(bool mask)"
    if name == "repeat_interleave" and func._overloadname in ("Tensor", "self_Tensor"):
        if kwargs.get("output_size") is None:  # repeats is a tensor: the length is its sum
            return "data_dependent", name
    return None


class SyncCounter(TorchDispatchMode):
    """``with SyncCounter() as counter: ...`` records ``counter.syncs`` and
    ``counter.data_dependent`` (op names, in call order) and ``counter.counts``."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []
        self.data_dependent: list[str] = []
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        hit = classify(func, args, kwargs)
        if hit is not None:
            kind, name = hit
            (self.syncs if kind == "sync" else self.data_dependent).append(name)
            self.counts[name] += 1
        return func(*args, **kwargs)
