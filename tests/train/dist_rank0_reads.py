"""Run under torchrun by test_distributed.py: every rank saves a checkpoint, then rank 0
alone reads weights back from it, as the downstream evaluation (``load_model_weights``)
and the FLOPs count (a Fast-ELECTRA generator's ``load_generator_weights``) do, while
the other ranks wait for it in a gloo group of their own. A read that joined the
default group's collectives would wait for ranks that never join it. Writes
``{"model": bool, "generator": bool}`` (the weights read equal the saved ones) to argv[1]."""

from __future__ import annotations

import datetime
import json
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from spactor.architectures.generator import Generator, GeneratorConfig, load_generator_weights
from spactor.evaluation.finetune import load_model_weights
from spactor.train.checkpoint import Checkpointer


def generator(seed: int) -> Generator:
    torch.manual_seed(seed)
    cfg = GeneratorConfig(num_layers=1, d_model=32, num_heads=2, d_ff=64, d_kv=16, embedding_sharing="none")
    return Generator(cfg, nn.Embedding(64, 32))


def main(out_path: str, root: str) -> None:
    warnings.simplefilter("ignore")
    # short: a rank-0 read stuck in a collective fails the test in seconds, not minutes
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
    wait_group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=120))
    run = nn.Module()
    run.model = generator(0)  # the discriminator's place in the training state: ``model.*``
    run.objectives = nn.ModuleDict({"rtd": nn.ModuleDict({"generator": generator(1)})})
    optimizer = torch.optim.SGD(run.parameters(), lr=0.1)
    path = Checkpointer(Path(root)).save(1, run, optimizer, shared={}, local={})
    if dist.get_rank() == 0:
        model, gen = generator(2), generator(3)
        load_model_weights(model, path)
        load_generator_weights(gen, path)
        same = {
            "model": all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                          run.model.state_dict().values())),
            "generator": all(torch.equal(a, b) for a, b in zip(
                gen.state_dict().values(), run.objectives["rtd"]["generator"].state_dict().values())),
        }
        Path(out_path).write_text(json.dumps(same))
    dist.barrier(group=wait_group)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
