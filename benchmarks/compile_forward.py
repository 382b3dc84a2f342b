"""Eager vs ``runtime.compile=model`` (``TrainModules.compiled_forward``: the whole
forward, corrupted batch -> every loss, as one graph), forward + backward, side by side
in one process.

The forward has no graph break (``tests/train/test_graph_breaks.py``), so one graph
covers the generator, the encoder, the decoder and every loss. Iterations alternate
between the two so that load on a shared machine hits both alike; the median of each is
printed with the ratio.

    python -m benchmarks.compile_forward --recipe sc --size tiny --length 128 --batch 8
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from spactor.config import load_config
from spactor.objectives.base import Vocab
from spactor.plugins import load_plugins
from spactor.train.step import TrainModules, corrupt_local_rows, row_noise_seeds
from spactor.train.parallel import DistInfo
from spactor.train.builders import build_model, build_objectives, raw_length_for, seeded_generator


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", default="sc")
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_plugins()
    resolved = load_config(args.recipe, [f"model.size={args.size}", f"data.input_length={args.length}",
                                         "runtime.device=cpu", *args.overrides])
    vocab = Vocab(size=32128)
    torch.manual_seed(0)
    model = build_model(resolved, vocab)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        objectives = build_objectives(resolved, vocab, model)
    modules = TrainModules(model, objectives, vocab.pad_id).train()
    compiled = modules.compiled_forward()
    raw = raw_length_for(objectives, args.length)
    data = torch.Generator().manual_seed(1)
    cpu = torch.device("cpu")
    transform_rng, modify_rng = seeded_generator(2, cpu), seeded_generator(3, cpu)

    def batch() -> dict[str, torch.Tensor]:
        original = torch.randint(3, 32000, (args.batch, raw), generator=data)
        out = corrupt_local_rows(objectives, {"original": original}, transform_rng, DistInfo())
        out["noise_seed"] = row_noise_seeds(modify_rng, args.batch, DistInfo())
        return out

    def step(fn) -> float:
        b = batch()
        start = time.perf_counter()
        losses, _ = fn(b, modify_rng, modules.context(b))
        weights = modules.loss_weights(losses)
        sum(weights[n] * t.float() / c.clamp(min=1) for n, (t, c) in losses.items()).backward()
        modules.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    t0 = time.perf_counter()
    for _ in range(2):
        step(compiled)
    compile_s = time.perf_counter() - t0
    step(modules)
    eager, comp = [], []
    for _ in range(args.iters):
        eager.append(step(modules))
        comp.append(step(compiled))
    e, c = statistics.median(eager), statistics.median(comp)
    print(f"{args.recipe} {args.size} L={args.length} B={args.batch} threads={args.threads}: "
          f"eager {e * 1e3:.1f} ms, compiled {c * 1e3:.1f} ms, eager/compiled {e / c:.2f}x "
          f"(first two compiled steps {compile_s:.1f} s)")


if __name__ == "__main__":
    main()
