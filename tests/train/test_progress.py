"""The progress bar: an ETA, and no other output ever glued onto its line."""

from __future__ import annotations

import io
import re
import sys
import warnings

from spactor.train.metrics import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def screen_lines(raw: str) -> list[str]:
    """What a terminal shows: carriage return + erase-line restart the current line."""
    lines = []
    for line in raw.split("\n"):
        lines.append(re.split(r"\r\x1b\[K", line)[-1])
    return lines


def test_other_output_gets_its_own_line_and_the_bar_comes_back(monkeypatch):
    term = Terminal()
    monkeypatch.setattr(sys, "stdout", term)
    monkeypatch.setattr(sys, "stderr", term)
    progress = Progress(4, stream=term)
    progress.update(1, {"loss": 1.0})
    print("skipping a bad record")  # stdout
    warnings.warn("a warning on stderr", UserWarning, stacklevel=1)
    sys.stdout.write("two ")
    sys.stdout.write("writes\n")
    progress.update(2, {"loss": 0.5})
    progress.update(4, {"loss": 0.25})
    print("the summary")
    shown = screen_lines(term.getvalue())
    for line in shown:
        assert not ("[" in line and "/4" in line and ("skipping" in line or "warning" in line or "writes" in line)), line
    assert "skipping a bad record" in shown and "two writes" in shown
    assert any(line.startswith("[") and "4/4" in line for line in shown)
    assert shown[-2:] == ["the summary", ""]
    assert sys.stdout is term and sys.stderr is term  # the last step gave the streams back


def test_eta_from_the_pace_so_far(monkeypatch):
    clock = iter([0.0, 100.0, 110.0, 120.0])
    monkeypatch.setattr("spactor.train.metrics.time.monotonic", lambda: next(clock))
    out = io.StringIO()  # not a terminal: one line per update
    progress = Progress(12, stream=out)
    progress.update(2, {"loss": 1.0})  # a resumed run's first update: the pace starts here
    progress.update(4, {"loss": 0.9})
    progress.update(12, {"loss": 0.5})
    first, second, last = out.getvalue().splitlines()
    assert "eta" not in first
    assert "eta 40s" in second  # 2 steps in 10 s, 8 to go
    assert "eta" not in last


def test_close_ends_the_line_once(monkeypatch):
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    progress = Progress(100, stream=term)
    progress.update(3, {"loss": 1.0})
    progress.close()
    progress.close()
    assert term.getvalue().endswith("loss 1.0000\n") and sys.stderr is term
