"""Metrics: one JSON object per logged step in ``metrics.jsonl``, and a progress line.

The JSONL file is opened in append mode and truncated to the resumed step on resume,
so an interrupted and resumed run has one line per step, as if it had not stopped.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO


class MetricsWriter:
    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._file: TextIO | None = None

    def open(self, resume_step: int | None) -> None:
        if not self.enabled:
            return
        if resume_step is not None and self.path.exists():
            drop_lines_after(self.path, resume_step)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


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
    """A one-line progress display on stderr (redrawn in a terminal, periodic lines
    otherwise)."""

    def __init__(self, total: int, enabled: bool = True, stream: TextIO = sys.stderr) -> None:
        self.total = total
        self.enabled = enabled
        self.stream = stream
        self.tty = stream.isatty()
        self._last = 0.0
        self._start = time.monotonic()

    def update(self, step: int, fields: dict[str, Any]) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        last_step = step >= self.total
        if not self.tty and not last_step and now - self._last < 10.0 and step > 1:
            return
        self._last = now
        width = 24
        done = int(width * step / max(1, self.total))
        bar = "#" * done + "-" * (width - done)
        elapsed = now - self._start
        text = " ".join(f"{k} {_fmt(v)}" for k, v in fields.items())
        line = f"[{bar}] {step}/{self.total} {elapsed:5.0f}s {text}"
        if self.tty:
            self.stream.write("\r" + line[:200] + ("\n" if last_step else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _fmt(value: Any) -> str:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)
