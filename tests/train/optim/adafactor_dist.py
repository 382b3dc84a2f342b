"""Run under torchrun (2 ranks, gloo) by test_adafactor.py: spactor's Adafactor on FSDP2
shards against Mesh TF's reference, the collectives of each step() for 3 and 30
parameters, and a checkpoint at step 3 for the one-rank resume test. Rank 0 writes
result.json into the directory in argv[1]."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).parent))
from adafactor_reference import LRS, SHAPES, MeshTFAdafactor, make_grads, make_params  # noqa: E402

from spactor.train.optim.adafactor import Adafactor  # noqa: E402
from spactor.train.checkpoint import Checkpointer  # noqa: E402


class Collectives(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func.namespace in ("c10d", "_c10d_functional", "c10d_functional") and "wait" not in func.__name__:
            name = func.overloadpacket.__name__
            self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


class Table(torch.nn.Module):
    def __init__(self, shapes: list[tuple[int, ...]]) -> None:
        super().__init__()
        self.weights = torch.nn.ParameterList([torch.nn.Parameter(p) for p in make_params(shapes)])


def set_grads(model: Table, grads: list[torch.Tensor]) -> None:
    from torch.distributed.tensor import distribute_tensor

    for p, g in zip(model.weights, grads):
        p.grad = distribute_tensor(g, p.device_mesh, p.placements, src_data_rank=None)


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    shapes = [s for s, _ in SHAPES]
    model = Table(shapes)
    fully_shard(model)
    opt = Adafactor(model.parameters())
    ref = MeshTFAdafactor(make_params(shapes))
    errors: dict[str, float] = {}
    ckpt = Checkpointer(out / "ckpt")
    for step, lr in enumerate(LRS):
        grads = make_grads(shapes, step)
        set_grads(model, grads)
        opt.param_groups[0]["lr"] = lr
        opt.step()
        opt.zero_grad(set_to_none=True)
        ref.apply(grads, lr)
        for (shape, _), p, q in zip(SHAPES, model.weights, ref.params):
            err = (p.full_tensor().double() - q).abs().max().item()
            errors[str(shape)] = max(errors.get(str(shape), 0.0), err)
        if step == 2:
            ckpt.save(3, model, opt, shared={}, local={})

    local_rows = {}
    for (shape, _), p in zip(SHAPES, model.weights):
        rows = torch.tensor([p.to_local().shape[0]])
        gathered = [torch.zeros_like(rows) for _ in range(world)]
        dist.all_gather(gathered, rows)
        local_rows[str(shape)] = [int(r) for r in gathered]
    placements = {str(s): str(p.placements[0]) for (s, _), p in zip(SHAPES, model.weights)}

    per_step: dict[str, list[dict[str, int]]] = {}
    for n in (3, 30):
        many = [SHAPES[i % len(SHAPES)][0] for i in range(n)]
        m = Table(many)
        fully_shard(m)
        o = Adafactor(m.parameters())
        per_step[str(n)] = []
        for step in range(3):
            set_grads(m, make_grads(many, step))
            with Collectives() as probe:
                o.step()
            per_step[str(n)].append(probe.counts)
            o.zero_grad(set_to_none=True)
    if rank == 0:
        result = {"max_abs_error": errors, "local_rows": local_rows, "placements": placements,
                  "collectives_per_step": per_step}
        (out / "result.json").write_text(json.dumps(result, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
