"""Shared benchmark plumbing: which device a size runs on, and the ``extra_info`` every
benchmark records (so ``python -m benchmarks.compare`` can tabulate any of them).

Selection: ``-k tiny`` picks everything that runs on CPU in seconds (the ``tiny`` model
size, and the corruption benchmarks on CPU, which carry a ``tiny`` mark); ``base`` and
``large`` need CUDA and are skipped without it. ``SPACTOR_PEAK_TFLOPS`` sets the peak
used for MFU (otherwise looked up from the GPU's name; no MFU on CPU).

CPU benchmarks run torch on one thread unless ``SPACTOR_BENCH_THREADS`` says otherwise:
it is the like-for-like comparison with the single-threaded numpy reference, and on a
shared machine every intra-op parallel region can wait a scheduler slice for a
descheduled sibling thread (measured: 2 threads on 2 busy cores made the train step
20-40x and span corruption 75x slower than 1 thread).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

GPU_SIZES = ("base", "large")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "tiny: CPU-sized benchmarks (selected by -k tiny)")
    torch.set_num_threads(int(os.environ.get("SPACTOR_BENCH_THREADS", "1")))


@pytest.fixture
def min_rounds(request: pytest.FixtureRequest) -> int:
    """``--benchmark-min-rounds`` (pytest-benchmark's default: 5). The benchmarks here fix
    their rounds (``pedantic``), which pytest-benchmark then does not raise: they take
    ``max(own rounds, min_rounds)`` so the option still buys a steadier median."""
    return int(request.config.getoption("benchmark_min_rounds", default=0) or 0)


def device_for(size: str) -> torch.device:
    """``tiny`` on CPU; ``base``/``large`` on CUDA, skipped where there is none."""
    if size in GPU_SIZES:
        if not torch.cuda.is_available():
            pytest.skip(f"size '{size}' needs a CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def peak(device: torch.device) -> float | None:
    from spactor.train.flops.mfu import peak_tflops

    override = os.environ.get("SPACTOR_PEAK_TFLOPS")
    if override:
        return float(override)
    return peak_tflops() if device.type == "cuda" else None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def record(
    benchmark: Any,
    *,
    sequences: int,
    tokens: int,
    device: torch.device,
    flops_per_step: float | None = None,
    **extra: Any,
) -> None:
    """Throughput from the median round time (robust to a slow first round or a noisy
    neighbour), plus FLOP/s and MFU when the step's FLOPs are known."""
    seconds = benchmark.stats.stats.median
    info: dict[str, Any] = {
        "seq_per_s": sequences / seconds,
        "tokens_per_s": tokens / seconds,
        "flops_per_step": flops_per_step,
        "tflops_per_s": None if flops_per_step is None else flops_per_step / seconds / 1e12,
        "mfu": None,
        "device": device_name(device),
        "batch_size": sequences,
        **extra,
    }
    peak_tflops = peak(device)
    if flops_per_step is not None and peak_tflops is not None:
        info["mfu"] = flops_per_step / seconds / (peak_tflops * 1e12)
        info["peak_tflops"] = peak_tflops
    benchmark.extra_info.update(info)
