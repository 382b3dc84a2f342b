"""Run under torchrun by test_meta_init.py: build ``recipe`` on meta, shard it with FSDP2,
materialise and initialise each rank's shards, and check on rank 0 that the gathered
weights equal an eager single-process build with the same seed, bit for bit. Writes
``{"params": N, "mismatched": [...]}`` to argv[1]."""

from __future__ import annotations

import json
import sys
import warnings

import torch

from spactor.config import load_config
from spactor.objectives.base import Vocab
from spactor.plugins import load_plugins
from spactor.train import parallel
from spactor.train.builders import build_model, build_objectives, build_on_meta
from spactor.train.step import TrainModules
from spactor.train.loop import parallelize


def main(out_path: str, recipe: str) -> None:
    load_plugins()
    warnings.simplefilter("ignore")
    cpu = torch.device("cpu")
    info = parallel.init_distributed(cpu)
    resolved = load_config(recipe, ["model.size=tiny", "data.input_length=64", "runtime.device=cpu"])
    vocab = Vocab(size=640, first_sentinel_id=610, mask_id=611)

    torch.manual_seed(0)
    model, objectives, program = build_on_meta(resolved, vocab)
    assert program is not None, "the build fell back to CPU"
    assert all(p.is_meta for p in model.parameters())
    sharded = TrainModules(model, objectives, vocab.pad_id)
    program.bind(sharded)
    assert parallelize(sharded, objectives, resolved, cpu, info)
    program.materialize(sharded, cpu)
    gathered = {name: p.full_tensor() for name, p in sharded.named_parameters()}

    if info.is_main:
        torch.manual_seed(0)
        eager_model = build_model(resolved, vocab)
        eager = TrainModules(eager_model, build_objectives(resolved, vocab, eager_model), vocab.pad_id)
        reference = dict(eager.named_parameters())
        mismatched = [n for n, v in gathered.items() if not torch.equal(v, reference[n])]
        with open(out_path, "w") as f:
            json.dump({"params": len(gathered), "mismatched": mismatched}, f)
    parallel.shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
