"""CPU timing of one Adafactor ``step()`` on T5.1.0-Small's parameters, side by side:
``torch.optim.Adafactor`` (foreach, as spactor used it before) and spactor's Adafactor,
alternating in one process. Not a test: prints median milliseconds and the ratio.

    OMP_NUM_THREADS=1 python -m benchmarks.adafactor_step [--steps N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from spactor.config import load_config
from spactor.objectives.base import Vocab
from spactor.plugins import load_plugins
from spactor.train.optim.adafactor import Adafactor
from spactor.train.builders import build_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    load_plugins()
    resolved = load_config("sc", ["model.size=small", "runtime.device=cpu"])
    torch.manual_seed(0)
    model = build_model(resolved, Vocab(size=32128, first_sentinel_id=32000, mask_id=32100))
    shapes = [tuple(p.shape) for p in model.parameters()]
    print(f"{len(shapes)} tensors, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")

    def make(kind: str) -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer]:
        params = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]
        if kind == "torch.optim.Adafactor":
            return params, torch.optim.Adafactor(params, lr=1e-2, eps=(1e-15, 1e-3), foreach=True)
        return params, Adafactor(params, lr=1e-2)

    runs = {kind: make(kind) for kind in ("torch.optim.Adafactor", "spactor Adafactor")}
    grads = [torch.randn(s) * 1e-2 for s in shapes]
    times: dict[str, list[float]] = {kind: [] for kind in runs}
    for i in range(args.steps + 2):  # two warm-up steps
        for kind, (params, opt) in runs.items():
            for p, g in zip(params, grads):
                p.grad = g
            start = time.perf_counter()
            opt.step()
            if i >= 2:
                times[kind].append(time.perf_counter() - start)
    med = {kind: statistics.median(t) * 1e3 for kind, t in times.items()}
    for kind, ms in med.items():
        print(f"{kind:24s} {ms:8.1f} ms / step (median of {args.steps})")
    print(f"spactor / torch time: {med['spactor Adafactor'] / med['torch.optim.Adafactor']:.2f}")


if __name__ == "__main__":
    main()
