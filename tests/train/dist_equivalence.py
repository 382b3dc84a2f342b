"""Run under torchrun by test_distributed.py: three steps of a recipe (``--recipe``, SC by
default) on a fixed global batch, each rank holding its slice; rank 0 writes the logged
losses (every loss, summed over ranks) to the JSON path in argv[1], and the dtype of the
residual stream entering the first block (``model.blocks()[0]``) to ``argv[1].residual``."""

from __future__ import annotations

import json
import sys

import torch

from spactor.config import load_config
from spactor.objectives.base import Vocab
from spactor.plugins import load_plugins
from spactor.registry import OPTIMIZERS
from spactor.train import parallel
from spactor.train.builders import build_model, build_objectives, raw_length_for, seeded_generator
from spactor.train.stages import trainable_parameters
from spactor.train.step import StepContext, TrainModules, train_step
from spactor.train.loop import autocast_dtype, parallelize


def main(out_path: str, overrides: list[str], recipe: str = "sc") -> None:
    load_plugins()
    cpu = torch.device("cpu")
    info = parallel.init_distributed(cpu)
    resolved = load_config(recipe, ["model.size=tiny", "data.input_length=64", "runtime.device=cpu", *overrides])
    vocab = Vocab(size=640, first_sentinel_id=610, mask_id=611)
    torch.manual_seed(0)
    model = build_model(resolved, vocab)
    objectives = build_objectives(resolved, vocab, model)
    modules = TrainModules(model, objectives, vocab.pad_id)
    parallelize(modules, objectives, resolved, cpu, info)
    optimizer = OPTIMIZERS.get(resolved.optimizer.type).factory(resolved.optimizer.config,
                                                                trainable_parameters(modules))
    # Both generators the same on every rank, as the runner makes them.
    ctx = StepContext(info, seeded_generator(1, cpu), seeded_generator(2, cpu),
                      grad_accum_steps=resolved.cfg.trainer.grad_accum_steps,
                      amp_dtype=autocast_dtype(resolved.cfg.runtime.precision, cpu))
    residual: list[torch.dtype] = []
    model.blocks()[0].register_forward_pre_hook(lambda _, args: residual.append(args[0].dtype))
    data = torch.Generator().manual_seed(3)
    losses = []
    raw_length = raw_length_for(objectives, resolved.cfg.data.input_length)  # 70 for SC at 64
    for _ in range(3):
        global_batch = torch.randint(3, 600, (8, raw_length), generator=data)
        local = global_batch.chunk(info.world_size)[info.rank]
        out = train_step(modules, optimizer, {"original": local}, ctx)
        # the loss and the losses are Reduce.SUM: the ranks' values sum to the step's
        shares = {k: r.value.double() for k, r in out.logged.items() if k == "loss" or k.startswith("loss/")}
        keys = sorted(shares)
        summed = parallel.all_reduce_tensor(torch.stack([shares[k] for k in keys]))  # the ranks' shares summed
        losses.append(dict(zip(keys, summed.tolist())))
    if info.is_main:
        with open(out_path, "w") as f:
            json.dump(losses, f)
        with open(out_path + ".residual", "w") as f:
            f.write(str(residual[0]))
    parallel.shutdown_distributed()


if __name__ == "__main__":
    args = sys.argv[1:]
    recipe = "sc"
    if args[1:2] == ["--recipe"]:
        recipe, args = args[2], [args[0], *args[3:]]
    main(args[0], args[1:], recipe)
