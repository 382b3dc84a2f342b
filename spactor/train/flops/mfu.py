"""Model FLOPs utilisation: per-GPU peak table and the runner's FLOPs tracker."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from spactor.config import Resolved
from spactor.train.flops.counting import FlopsReport, flops_report

# --------------------------------------------------------------------------- peak FLOP/s

# Dense bf16 tensor-core peak per GPU, TFLOP/s (vendor datasheets; no sparsity).
PEAK_TFLOPS: dict[str, float] = {
    "B200": 2250.0,
    "H200": 989.0,
    "H200-NVL": 835.0,
    "GH200": 989.0,
    "H100-SXM": 989.0,
    "H100-NVL": 835.0,
    "H100-PCIe": 756.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "A10": 125.0,
    "L4": 121.0,
    "MI300X": 1307.0,
}

# torch.cuda.get_device_name() substrings → table key; the most specific first.
_DEVICE_PATTERNS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("GH200",), "GH200"),
    (("H200", "NVL"), "H200-NVL"),
    (("H200",), "H200"),
    (("H100", "NVL"), "H100-NVL"),
    (("H100", "PCIE"), "H100-PCIe"),
    (("H100",), "H100-SXM"),  # "NVIDIA H100 80GB HBM3" is the SXM part
    (("B200",), "B200"),
    (("A100",), "A100"),
    (("L40S",), "L40S"),
    (("L40",), "L40"),  # after L40S, before L4
    (("A10",), "A10"),  # after A100
    (("L4",), "L4"),  # after L40S
    (("MI300X",), "MI300X"),
)


def peak_tflops(device_name: str | None = None, override: float | None = None) -> float | None:
    """Dense bf16 peak TFLOP/s of one device: ``override`` if given (the config hook,
    e.g. ``runtime.peak_tflops``), else looked up from ``device_name`` (default: the
    current CUDA device's name). None when unknown or on CPU, so MFU is then not reported
    rather than made up."""
    if override is not None:
        return float(override)
    if device_name is None:
        if not torch.cuda.is_available():
            return None
        device_name = torch.cuda.get_device_name()
    name = device_name.upper()
    for parts, key in _DEVICE_PATTERNS:
        if all(p in name for p in parts):
            return PEAK_TFLOPS[key]
    return None


def mfu(flops: float, seconds: float, peak: float | None, world_size: int = 1) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over ``world_size`` devices' peak
    (``peak`` in TFLOP/s per device)."""
    if peak is None or seconds <= 0:
        return None
    return flops / seconds / (peak * 1e12 * world_size)


# --------------------------------------------------------------------------- for the runner


class FlopsTracker:
    """Per-step FLOPs metrics for the training loop.

    ``update(stage, step)`` after every optimizer step (``step`` = updates done, this
    one included) returns ``flops_per_step``, ``flops_cum`` and ``flops_normalized``
    (cumulative over the baseline's for as many steps); ``mfu(seconds)`` at log time
    returns the utilisation of the FLOPs done since the previous call. ``state_dict``
    goes into the checkpoint so ``flops_cum`` resumes.
    """

    def __init__(self, report: FlopsReport, peak_tflops: float | None = None, world_size: int = 1) -> None:
        self.report = report
        self.peak_tflops = peak_tflops
        self.world_size = world_size
        self.flops_cum = 0.0
        self.steps = 0
        self.steps_by_stage: dict[int, int] = {}  # steps counted in each stage, resumes included
        self._window = 0.0

    def update(self, stage: int, step: int | None = None) -> dict[str, float]:
        per_step = self._per_step(stage)
        self.flops_cum += per_step
        self.steps = self.steps + 1 if step is None else step
        self.steps_by_stage[stage] = self.steps_by_stage.get(stage, 0) + 1
        self._window += per_step
        return {
            "flops_per_step": per_step,
            "flops_cum": self.flops_cum,
            "flops_normalized": self.flops_cum / (self.steps * self.report.baseline_flops_per_step),
        }

    def _per_step(self, stage: int) -> float:
        try:
            return self.report.per_step(stage)
        except KeyError:
            # A switch the report did not foresee (a non-monotone knob schedule): metrics
            # must not stop the run; the nearest counted stage is the best estimate.
            fallback = min(self.report.stages, key=lambda s: abs(s.stage - stage))
            warnings.warn(f"FLOPs of stage {stage} were not counted; using stage {fallback.stage}'s")
            return fallback.flops.flops_per_step

    def mfu(self, seconds: float) -> float | None:
        value = mfu(self._window, seconds, self.peak_tflops, self.world_size)
        self._window = 0.0
        return value

    def state_dict(self) -> dict[str, Any]:
        return {"flops_cum": self.flops_cum, "steps": self.steps,
                "steps_by_stage": {str(k): v for k, v in self.steps_by_stage.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.flops_cum = float(state.get("flops_cum", 0.0))
        self.steps = int(state.get("steps", 0))
        self.steps_by_stage = {int(k): int(v) for k, v in state.get("steps_by_stage", {}).items()}


def tracker_for(
    resolved: Resolved,
    device: torch.device,
    world_size: int = 1,
    count_device: torch.device | str = "cpu",
) -> FlopsTracker:
    """The tracker the runner builds once per run. The dry run traces one sequence on
    ``count_device`` — CPU by default, never the training device: it builds a temporary,
    unsharded copy of the model, which must not take GPU memory from the real one — and
    scales to ``trainer.batch_size`` (FLOPs are linear in the batch). ``"meta"`` needs no
    storage at all, for steps without data-dependent shapes (the runner tries it first,
    see ``trainer.count_flops``)."""
    report = flops_report(resolved, device=count_device, every_stage=True)
    return tracker_from_report(resolved, device, report, world_size)


def tracker_from_report(
    resolved: Resolved, device: torch.device, report: FlopsReport, world_size: int = 1
) -> FlopsTracker:
    """The tracker for a report counted elsewhere (by rank 0, for every rank). The peak
    comes from ``runtime.peak_tflops`` when the config has that key, else from the GPU's
    name; none on CPU, so MFU is then None."""
    note = report.unhandled_note()
    if note is not None:  # flops_per_step and MFU would be low by their cost: say so once
        warnings.warn(note)
    override = getattr(resolved.cfg.runtime, "peak_tflops", None)
    peak = peak_tflops(override=override) if device.type == "cuda" or override is not None else None
    return FlopsTracker(report, peak_tflops=peak, world_size=world_size)
