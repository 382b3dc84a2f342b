"""``t5gemma`` against ``t5`` on CPU: the SC step's time and peak memory at (about) equal
parameters, and SpacTor stage 1 over SC on ``t5gemma`` (time and FLOPs), one table.

    OMP_NUM_THREADS=1 python -m benchmarks.t5gemma_cpu [--size tiny] [--steps 3]

Each case runs in a subprocess of its own; the memory column is the peak resident size
sampled every millisecond during the timed steps minus the resident size just before them
(what a step allocates: activations, gradients, temporaries; weights and optimizer state
exist before), with glibc told to give freed memory back at once
(``MALLOC_MMAP_THRESHOLD_=65536``, ``MALLOC_TRIM_THRESHOLD_=0``) so that a step's buffers
do not stay resident between steps and hide the next step's peak. ``tiny`` t5gemma runs with ``d_ff=192``, its encoder FLOP-match of T5.1.0
tiny (the preset's 128 keeps ``d_ff`` off the lengths the dispatch probes use). The step is the runner's (``spactor.train.step.train_step``, fp32, the recipe's
optimizer) on a fixed batch of random token ids, timed after two warm-up steps. At input
length 2048 span corruption's default 3-token mean span needs more sentinels than the
vocabulary has, so every case there uses ``mean_noise_span_length=4``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

LENGTHS = (512, 2048)
BATCH_TOKENS = 4096  # sequences per batch: BATCH_TOKENS // input_length


def _overrides(arch: str, size: str, length: int) -> list[str]:
    extra = ["objectives.span_corruption.mean_noise_span_length=4"] if length > 1024 else []
    if arch == "t5gemma" and size == "tiny":
        extra.append("model.d_ff=192")
    return [f"model.arch={arch}", f"model.size={size}", f"data.input_length={length}",
            "data.tokenizer_vocab_size=8000", f"trainer.batch_size={max(1, BATCH_TOKENS // length)}",
            "runtime.device=cpu", "runtime.precision=fp32", "model.dropout=0.0", *extra]


def run_case(recipe: str, arch: str, size: str, length: int, steps: int) -> dict[str, float]:
    import torch

    from spactor.config import load_config
    from spactor.plugins import load_plugins
    from spactor.registry import OPTIMIZERS
    from spactor.architectures.t5 import count_parameters
    from spactor.train.builders import build_model, build_objectives, raw_length_for, seeded_generator
    from spactor.train.flops.counting import count_step_flops, count_vocab
    from spactor.train.parallel import DistInfo
    from spactor.train.stages import trainable_parameters
    from spactor.train.step import StepContext, TrainModules, train_step

    load_plugins()
    resolved = load_config(recipe, _overrides(arch, size, length))
    vocab = count_vocab(resolved.cfg.data)
    torch.manual_seed(0)
    model = build_model(resolved, vocab)
    objectives = build_objectives(resolved, vocab, model)
    modules = TrainModules(model, objectives, vocab.pad_id).train()
    optimizer = OPTIMIZERS.get(resolved.optimizer.type).factory(resolved.optimizer.config,
                                                                trainable_parameters(modules))
    cpu = torch.device("cpu")
    ctx = StepContext(DistInfo(), seeded_generator(1, cpu), seeded_generator(2, cpu),
                      clip_grad_norm=resolved.cfg.trainer.clip_grad_norm)
    raw = raw_length_for(objectives, length)
    batch = {"original": torch.randint(3, vocab.last_sentinel_id, (resolved.cfg.trainer.batch_size, raw),
                                       generator=torch.Generator().manual_seed(3))}
    train_step(modules, optimizer, batch, ctx, with_metrics=False)
    train_step(modules, optimizer, batch, ctx, with_metrics=False)
    before = _rss_now()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.001):
            peak[0] = max(peak[0], _rss_now())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    for _ in range(steps):
        train_step(modules, optimizer, batch, ctx, with_metrics=False)
    step_s = (time.perf_counter() - start) / steps
    done.set()
    sampler.join()
    flops = count_step_flops(resolved, stage=1, vocab=vocab, device=cpu).flops_per_step
    return {"parameters": count_parameters(model), "step_s": step_s, "gflops": flops / 1e9,
            "peak_mib": (peak[0] - before) / 2**20, "batch": resolved.cfg.trainer.batch_size}


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.t5gemma_cpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--case", nargs=3, metavar=("RECIPE", "ARCH", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        recipe, arch, length = args.case
        print(json.dumps(run_case(recipe, arch, args.size, int(length), args.steps)))
        return 0
    cases = [("sc", arch, n) for n in LENGTHS for arch in ("t5", "t5gemma")] + [("spactor", "t5gemma", 512)]
    print(f"| recipe | arch | input length | batch | parameters | step s | peak MiB | GFLOP/step |")
    print("|---|---|---|---|---|---|---|---|")
    for recipe, arch, length in cases:
        done = subprocess.run([sys.executable, "-m", "benchmarks.t5gemma_cpu", "--size", args.size, "--steps",
                               str(args.steps), "--case", recipe, arch, str(length)],
                              capture_output=True, text=True, check=False,
                              env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"})
        if done.returncode != 0:
            print(f"| {recipe} | {arch} | {length} | failed: {done.stderr.strip().splitlines()[-1:]} |")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| {recipe} | {arch} | {length} | {r['batch']} | {r['parameters'] / 1e6:.2f}M | {r['step_s']:.3f} | "
              f"{r['peak_mib']:.0f} | {r['gflops']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
