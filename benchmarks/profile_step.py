"""Where a train step spends its time: torch.profiler op tables of spactor's step and of
Hugging Face's T5 on the same batch, side by side (forward, backward and optimizer).

    OMP_NUM_THREADS=1 python -m benchmarks.profile_step --size small [--case sc] [--steps 2]

Both steps are the ones ``benchmarks/test_train_step.py`` times. Prints one table: per
aten op, the self CPU milliseconds per step of each and the difference, largest
differences first, then the totals, then the same time by category (matmuls, attention,
cross-entropy, the optimizer step, ...); ``--json`` also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.test_train_step import CASES, SIZES, build_hf_step, build_spactor_step


# op-name fragments -> category, first match wins; everything under Optimizer.step is "optimizer"
CATEGORIES = (
    ("matmul", ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm")),
    ("cross-entropy", ("log_softmax", "nll_loss", "logsumexp", "_TokenCrossEntropy")),
    ("attention softmax/sdpa", ("softmax", "scaled_dot_product", "isneginf")),
    ("embedding", ("embedding",)),
    ("norms", ("linalg_vector_norm", "_foreach_norm")),
    ("alloc/zero/copy",
     ("aten::empty", "aten::fill_", "aten::zero_", "aten::copy_", "aten::zeros", "aten::clone")),
)


def _category(name: str, in_optimizer: bool) -> str:
    if in_optimizer:
        return "optimizer (Adafactor.step)"
    for category, fragments in CATEGORIES:
        if any(f in name for f in fragments):
            return category
    if name.startswith("aten::"):
        return "other aten (elementwise, reductions, views)"
    return "autograd/python overhead"


def _profile_once(step, ops: dict[str, list[float]], categories: dict[str, float]) -> None:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    for e in prof.key_averages():
        if e.self_cpu_time_total > 0:
            entry = ops.setdefault(e.key, [0.0, 0])
            entry[0] += e.self_cpu_time_total / 1000.0
            entry[1] += e.count
    for event in prof.events():
        parent, in_optimizer = event, False
        while parent is not None and not in_optimizer:
            in_optimizer = parent.name.startswith("Optimizer.step")
            parent = parent.cpu_parent
        key = _category(event.name, in_optimizer)
        categories[key] = categories.get(key, 0.0) + event.self_cpu_time_total / 1000.0


def op_times(steps: dict[str, Callable[[], None]], rounds: int, warmup: int) -> dict[str, tuple[dict, dict]]:
    """Per step, for each of ``steps``: self CPU ms and calls of every op, and self CPU ms
    by category. The steps take turns, one profiled step each per round, so a load that
    changes over the run (a shared machine) weighs on all of them alike."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    out = {name: ({}, {}) for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            _profile_once(step, *out[name])
    return {
        name: (
            {k: (v[0] / rounds, v[1] // rounds) for k, v in ops.items()},
            {k: v / rounds for k, v in cats.items()},
        )
        for name, (ops, cats) in out.items()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=[s for s in SIZES if s not in ("base", "large")])
    parser.add_argument("--case", default="sc", choices=list(CASES))
    parser.add_argument("--steps", type=int, default=3, help="profiled steps of each, taking turns")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("SPACTOR_BENCH_THREADS", "1")))
    device = torch.device("cpu")
    measured = op_times(
        {
            "spactor": build_spactor_step(args.case, args.size, device).step,
            "hf": build_hf_step(args.size, device).step,
        },
        args.steps,
        args.warmup,
    )
    (ours, our_categories), (theirs, their_categories) = measured["spactor"], measured["hf"]
    def gap(name: str) -> float:
        return -abs(ours.get(name, (0.0, 0))[0] - theirs.get(name, (0.0, 0))[0])

    names = sorted(set(ours) | set(theirs), key=gap)
    print(f"{args.case} vs hf at {args.size}: self CPU ms per step (calls per step)")
    print(f"{'op':<48} {'spactor':>16} {'hf':>16} {'diff':>9}")
    rows = []
    for name in names:
        (a, ca), (b, cb) = ours.get(name, (0.0, 0)), theirs.get(name, (0.0, 0))
        rows.append({"op": name, "spactor_ms": a, "spactor_calls": ca, "hf_ms": b, "hf_calls": cb})
    for r in rows[: args.top]:
        print(f"{r['op'][:48]:<48} {r['spactor_ms']:9.1f} ({r['spactor_calls']:4d}) "
              f"{r['hf_ms']:9.1f} ({r['hf_calls']:4d}) {r['spactor_ms'] - r['hf_ms']:+9.1f}")
    total_a, total_b = sum(v[0] for v in ours.values()), sum(v[0] for v in theirs.values())
    print(f"{'total':<48} {total_a:16.1f} {total_b:16.1f} {total_a - total_b:+9.1f}")
    print(f"\n{'category':<48} {'spactor ms':>16} {'hf ms':>16} {'diff':>9}")
    for key in sorted(set(our_categories) | set(their_categories), key=lambda k: -our_categories.get(k, 0.0)):
        a, b = our_categories.get(key, 0.0), their_categories.get(key, 0.0)
        print(f"{key:<48} {a:16.1f} {b:16.1f} {a - b:+9.1f}")
    if args.json is not None:
        categories = {"spactor": our_categories, "hf": their_categories}
        args.json.write_text(json.dumps({"ops": rows, "categories": categories}, indent=1))


if __name__ == "__main__":
    main()
