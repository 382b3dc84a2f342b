"""Where a train step spends its time: torch.profiler op tables of spactor's step and of
Hugging Face's T5 on the same batch, side by side (forward, backward and optimizer).

    OMP_NUM_THREADS=1 python -m benchmarks.profile_step --size small [--case sc] [--steps 2]

Both steps are the ones ``benchmarks/test_train_step.py`` times. Prints one table: per
aten op, the self CPU milliseconds per step of each and the difference, largest
differences first, then the totals; ``--json`` also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.test_train_step import CASES, SIZES, build_hf_step, build_spactor_step


def op_times(step, steps: int, warmup: int) -> dict[str, tuple[float, int]]:
    """Self CPU ms per step and calls per step of every op over ``steps`` profiled steps."""
    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return {
        e.key: (e.self_cpu_time_total / 1000.0 / steps, e.count // steps)
        for e in prof.key_averages()
        if e.self_cpu_time_total > 0
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=[s for s in SIZES if s not in ("base", "large")])
    parser.add_argument("--case", default="sc", choices=list(CASES))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("SPACTOR_BENCH_THREADS", "1")))
    device = torch.device("cpu")
    ours = op_times(build_spactor_step(args.case, args.size, device).step, args.steps, args.warmup)
    theirs = op_times(build_hf_step(args.size, device).step, args.steps, args.warmup)
    names = sorted(set(ours) | set(theirs), key=lambda n: -abs(ours.get(n, (0, 0))[0] - theirs.get(n, (0, 0))[0]))
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
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
