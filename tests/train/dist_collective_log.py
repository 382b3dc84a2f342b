"""Run under torchrun by test_distributed.py: ``spactor train`` with every
``torch.distributed`` collective recorded (name, and each tensor's dtype, shape and
device; the outermost call only: an object collective's own broadcasts are its). Rank r
writes its sequence to ``argv[1]/rank<r>.json``; the CLI arguments follow, after an
optional ``--tiny-finetune`` (the downstream evaluation's budget made a few steps)."""

from __future__ import annotations

import functools
import json
import os
import runpy
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

# FSDP2 calls all_gather_single / reduce_scatter_single where torch has them (newer ones)
COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter",
               "all_gather_single", "reduce_scatter_single",
               "reduce_scatter_tensor", "reduce", "gather", "scatter", "all_to_all", "all_to_all_single",
               "barrier", "monitored_barrier", "new_group", "broadcast_object_list", "all_gather_object",
               "gather_object", "scatter_object_list")


def tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in tensors(v)]
    return []


def main(out_dir: str, argv: list[str]) -> None:
    calls: list[dict[str, Any]] = []
    depth = [0]

    def recorded(name: str, fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if depth[0] == 0:
                found = tensors(list(args) + list(kwargs.values()))
                calls.append({"op": name, "tensors": [[str(t.dtype), list(t.shape), t.device.type] for t in found]})
            depth[0] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                depth[0] -= 1

        return wrapper

    for name in (n for n in COLLECTIVES if hasattr(dist, n)):
        setattr(dist, name, recorded(name, getattr(dist, name)))
    if argv[:1] == ["--tiny-finetune"]:
        import spactor.evaluation.finetune as finetune

        budget = finetune.FinetuneConfig(steps=3, batch_size=4, max_input_length=32, max_target_length=4,
                                         eval_batch_size=256)
        finetune.FinetuneConfig = lambda: budget  # the default budget downstream_every uses
        argv = argv[1:]
    rank = int(os.environ["RANK"])
    sys.argv = ["spactor", *argv]
    try:
        runpy.run_module("spactor", run_name="__main__")
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    finally:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(calls))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
