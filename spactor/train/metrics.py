"""Metrics: one JSON object per logged step in ``metrics.jsonl``, and a progress line;
optionally TensorBoard event files beside them (``run.tensorboard=true``).

The JSONL file is opened in append mode and truncated to the resumed step on resume,
so an interrupted and resumed run has one line per step, as if it had not stopped. The
TensorBoard writer does the same with ``purge_step``: events after the resumed step,
left by the interrupted attempt, are hidden.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.distributed as dist
from tqdm import tqdm
from tqdm.contrib import DummyTqdmFile

from spactor.metric_record import MetricRecord, Reduce, recorded_items


class MetricsWriter:
    """``metrics.jsonl``; with ``tensorboard=True`` every record also goes to a
    :class:`TensorBoardWriter` in ``tensorboard/`` beside the file."""

    def __init__(self, path: Path, enabled: bool = True, tensorboard: bool = False) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._file: TextIO | None = None
        log_dir = self.path.parent / "tensorboard"
        self.tensorboard = TensorBoardWriter(log_dir, enabled=enabled and tensorboard)

    def open(self, resume_step: int | None) -> None:
        if not self.enabled:
            return
        if resume_step is not None and self.path.exists():
            drop_lines_after(self.path, resume_step)
        self._file = self.path.open("a", encoding="utf-8")
        self.tensorboard.open(resume_step)

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")
        self._file.flush()
        self.tensorboard.write(record)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.tensorboard.close()


class MetricWindow:
    """Recorded values of one logging window, reduced on the device, read once.

    ``add`` takes one step's :class:`~spactor.metric_record.MetricRecord` (this rank's
    values, each with its declared reduction, already combined over the step's
    micro-batches) and keeps them without reading them; ``read`` reduces every key over
    the ranks (one all-reduce per reduction kind: a sum for SUM and MEAN keys, a max for
    MAX keys), reads them (one host sync) and returns, per key, the mean per step over
    the steps that carried it, then starts a new window:

    * SUM: the sum over micro-batches and ranks (a loss's parts of its global mean);
    * MEAN: the mean over micro-batches and ranks (an accuracy);
    * MAX: the largest over micro-batches and ranks, kept per step (grad_norm).

    Keys may come and go inside a window (the stage switch drops the RTD losses): each is
    averaged over its own steps. Every rank must record the same keys in the same steps."""

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self._reduce: dict[str, Reduce] = {}
        self._sums: dict[str, torch.Tensor] = {}  # SUM and MEAN keys: summed over the steps
        self._counts: dict[str, int] = {}  # MEAN keys: the values summed on this rank
        self._maxima: dict[str, list[torch.Tensor]] = {}  # MAX keys: this rank's value per step
        self._steps: dict[str, int] = {}

    def add(self, values: MetricRecord | Mapping[str, torch.Tensor]) -> None:
        """One step's values (a mapping of bare tensors: Reduce.MEAN, see ``as_recorded``)."""
        for key, (value, reduce, count) in recorded_items(values):
            held = self._reduce.setdefault(key, reduce)
            if held is not reduce:
                raise ValueError(f"metric '{key}' is recorded with Reduce.{held.name} and Reduce.{reduce.name}")
            value = value.detach().double().reshape(())  # float64 sums: long windows add up many steps
            if reduce is Reduce.MAX:
                self._maxima.setdefault(key, []).append(value)
            else:
                self._sums[key] = self._sums[key] + value if key in self._sums else value
                self._counts[key] = self._counts.get(key, 0) + count
            self._steps[key] = self._steps.get(key, 0) + 1

    def __len__(self) -> int:
        return len(self._steps)

    def state_dict(self) -> dict[str, Any]:
        """The window so far (its values copied to the host: a checkpoint's read), so a
        resume inside a window logs the same means as an uninterrupted run."""
        if not self._steps:
            return {}
        return {
            "sums": {k: v.detach().cpu() for k, v in self._sums.items()},
            "steps": dict(self._steps),
            "counts": dict(self._counts),
            "reduce": {k: r.value for k, r in self._reduce.items()},
            "maxima": {k: torch.stack(v).cpu() for k, v in self._maxima.items()},
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        self._clear()
        if state and "reduce" not in state:
            # Saved before reductions were declared: every value is a rank's share, whose
            # sum over ranks is the value (SUM), but grad_norm's share cannot become a MAX:
            # the first record after the resume averages it over the steps since.
            state = {"sums": {k: v for k, v in state["sums"].items() if k != "grad_norm"},
                     "steps": {k: n for k, n in state["steps"].items() if k != "grad_norm"}}
            state["reduce"] = {k: Reduce.SUM.value for k in state["sums"]}
        self._reduce = {k: Reduce(r) for k, r in state.get("reduce", {}).items()}
        self._sums = {k: v.to(device) for k, v in state.get("sums", {}).items()}
        self._counts = {k: int(n) for k, n in state.get("counts", {}).items()}
        self._maxima = {k: list(v.to(device).unbind()) for k, v in state.get("maxima", {}).items()}
        self._steps = {k: int(n) for k, n in state.get("steps", {}).items()}

    def read(self) -> dict[str, float]:
        if not self._steps:
            return {}
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        summed_keys, max_keys = sorted(self._sums), sorted(self._maxima)
        parts = []
        if summed_keys:  # SUM and MEAN: one all-reduce (sum)
            summed = torch.stack([self._sums[k] for k in summed_keys])
            if world > 1:
                dist.all_reduce(summed)
            parts.append(summed)
        if max_keys:  # MAX: one all-reduce (max) of every step's value
            maxima = torch.stack([v for k in max_keys for v in self._maxima[k]])
            if world > 1:
                dist.all_reduce(maxima, op=dist.ReduceOp.MAX)
            parts.append(maxima)
        values = torch.cat(parts).tolist()  # the window's one host sync
        means: dict[str, float] = {}
        for key, value in zip(summed_keys, values):
            if self._reduce[key] is Reduce.MEAN:
                means[key] = value / (self._counts[key] * world)
            else:
                means[key] = value / self._steps[key]
        at = len(summed_keys)
        for key in max_keys:
            steps = len(self._maxima[key])
            means[key] = sum(values[at : at + steps]) / self._steps[key]
            at += steps
        self._clear()  # a new window
        return means


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` can work: it needs the ``tensorboard`` package."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardWriter:
    """Scalars of each record as TensorBoard events in ``log_dir`` (``tensorboard
    --logdir runs/`` then compares runs side by side).

    Every numeric field except ``step`` becomes a scalar tagged with its metrics.jsonl
    key (``loss/span_corruption``, ``knob/objectives.rtd.weight``, ...), so TensorBoard
    groups them by their prefix. Without the ``tensorboard`` package this is a no-op
    that says so once: logging must never stop a training run.
    """

    _warned = False  # one notice per process, however many writers are made

    def __init__(self, log_dir: Path, enabled: bool = True, flush_secs: int = 30) -> None:
        self.log_dir = Path(log_dir)
        self.enabled = enabled
        self.flush_secs = flush_secs
        self._writer: Any = None

    def open(self, resume_step: int | None = None) -> None:
        if not self.enabled or self._writer is not None:
            return
        if not tensorboard_available():
            if not TensorBoardWriter._warned:
                TensorBoardWriter._warned = True
                print("run.tensorboard=true but the tensorboard package is not installed "
                      "(pip install tensorboard); logging to metrics.jsonl only", file=sys.stderr, flush=True)
            self.enabled = False
            return
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run re-logs the steps after its checkpoint, and a fresh
        # run in a reused run.dir logs from step 1; TensorBoard hides older events from
        # that step on, as metrics.jsonl drops their lines.
        purge = (resume_step or 0) + 1
        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge, flush_secs=self.flush_secs)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._writer is None:
            self.open()
            if self._writer is None:
                return
        step = int(record["step"])
        for key, value in record.items():
            if key == "step":
                continue
            number = _scalar(value)
            if number is not None:
                self._writer.add_scalar(key, number, global_step=step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _scalar(value: Any) -> float | None:
    """A number TensorBoard can plot (NaN/inf included: they are worth seeing), or None
    for lists, strings and other non-scalars (``released``)."""
    if hasattr(value, "item"):  # a torch or numpy scalar
        try:
            value = value.item()
        except (ValueError, RuntimeError):  # more than one element
            return None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def drop_lines_after(path: Path, step: int) -> None:
    """Keep only records of steps ≤ ``step`` (a resumed run re-logs the steps after its
    checkpoint; lines from the crashed attempt would otherwise appear twice)."""
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the crash
        if record.get("step", -1) <= step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep the fact visible
    return value


class Progress:
    """A progress bar on stderr (``tqdm``): redrawn in place in a terminal, a plain line
    every 10 s (and at the first and last step) otherwise, so logs stay readable. The
    time and the remaining estimate count from the first update, so a resumed run's pace
    is its own.

    While the terminal bar is shown, stdout and stderr pass through ``tqdm``'s
    :class:`~tqdm.contrib.DummyTqdmFile`, which clears the bar before other text (a
    warning, a skipped record, a checkpoint notice) and redraws it after. :meth:`close`
    (or the last step) ends the bar and gives the streams back.
    """

    FORMAT = "{n_fmt}/{total_fmt} |{bar:24}| {elapsed}<{remaining}{postfix}"
    PLAIN_EVERY_S = 10.0  # seconds between lines when stderr is not a terminal

    def __init__(self, total: int, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.total = total
        self.enabled = enabled
        # Resolved now, not at import: a test's (or a caller's) replaced stderr is used.
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self._bar: tqdm | None = None
        self._saved: tuple[TextIO, TextIO] | None = None
        self._first: tuple[float, int] | None = None  # (time, step) of the first update, plain lines
        self._last = 0.0

    def update(self, step: int, fields: dict[str, Any]) -> None:
        if not self.enabled:
            return
        postfix = ", ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        if self.tty:
            self._draw(step, postfix)
        else:
            self._line(step, postfix)

    def _draw(self, step: int, postfix: str) -> None:
        if self._bar is None:
            self._saved = (sys.stdout, sys.stderr)
            sys.stdout, sys.stderr = DummyTqdmFile(sys.stdout), DummyTqdmFile(sys.stderr)  # type: ignore[assignment]
            self._bar = tqdm(total=self.total, initial=step, file=self.stream, bar_format=self.FORMAT,
                             postfix=postfix, dynamic_ncols=True, smoothing=0)
        else:
            self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(step - self._bar.n)
        if step >= self.total:
            self.close()

    def _line(self, step: int, postfix: str) -> None:
        now = time.monotonic()
        if self._first is None:
            self._first = (now, step)
        elif step < self.total and now - self._last < self.PLAIN_EVERY_S:
            return
        self._last = now
        t0, s0 = self._first
        line = tqdm.format_meter(step, self.total, now - t0, bar_format=self.FORMAT, postfix=postfix,
                                 initial=s0, ascii=True)
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line and give the streams back (idempotent)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._saved is not None:
            # The wrappers, dropped here, write out any unfinished line they still hold.
            sys.stdout, sys.stderr = self._saved
            self._saved = None


def _fmt(value: Any) -> str:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)
