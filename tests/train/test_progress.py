"""The progress bar (tqdm): a remaining-time estimate from the pace so far, no other
output ever glued onto its line, silent when disabled, stderr looked up when built."""

from __future__ import annotations

import io
import sys
import warnings

from spactor.train.metrics import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def screen_lines(raw: str) -> list[str]:
    """What a terminal shows: a carriage return moves back to the line's start, later
    text overwrites earlier text, and an erase-line clears from the cursor on."""
    lines = []
    for line in raw.split("\n"):
        shown: list[str] = []
        col = 0
        for part in line.replace("\x1b[K", "\x00").split("\r"):
            col = 0
            for ch in part:
                if ch == "\x00":
                    del shown[col:]
                    continue
                if col < len(shown):
                    shown[col] = ch
                else:
                    shown.append(ch)
                col += 1
        lines.append("".join(shown).rstrip())
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
        assert not ("/4 |" in line and ("skipping" in line or "warning" in line or "writes" in line)), line
    assert "skipping a bad record" in shown and "two writes" in shown
    assert any(line.startswith("4/4 |") and "loss=0.2500" in line for line in shown)
    assert shown[-2:] == ["the summary", ""]
    assert sys.stdout is term and sys.stderr is term  # the last step gave the streams back


def test_eta_from_the_pace_so_far(monkeypatch):
    clock = iter([100.0, 110.0, 120.0])
    monkeypatch.setattr("spactor.train.metrics.time.monotonic", lambda: next(clock))
    out = io.StringIO()  # not a terminal: one line per update (10 s apart, or the last)
    progress = Progress(12, stream=out)
    progress.update(2, {"loss": 1.0})  # a resumed run's first update: the pace starts here
    progress.update(4, {"loss": 0.9})
    progress.update(12, {"loss": 0.5})
    first, second, last = out.getvalue().splitlines()
    assert first.startswith("2/12 |") and "<?," in first  # no pace yet
    assert "00:10<00:40, loss=0.9000" in second  # 2 steps in 10 s, 8 to go
    assert last.startswith("12/12 |") and "<00:00," in last


def test_plain_lines_at_most_every_ten_seconds(monkeypatch):
    clock = iter([0.0, 3.0, 9.0, 10.5, 11.0])
    monkeypatch.setattr("spactor.train.metrics.time.monotonic", lambda: next(clock))
    out = io.StringIO()
    progress = Progress(5, stream=out)
    for step in range(1, 6):
        progress.update(step, {"loss": 1.0})
    assert [line.split(" ")[0] for line in out.getvalue().splitlines()] == ["1/5", "4/5", "5/5"]


def test_close_ends_the_line_once(monkeypatch):
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    progress = Progress(100, stream=term)
    progress.update(3, {"loss": 1.0})
    progress.close()
    progress.close()
    assert term.getvalue().endswith("loss=1.0000\n") and term.getvalue().count("\n") == 1
    assert sys.stderr is term


def test_disabled_writes_nothing(monkeypatch):
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    progress = Progress(3, enabled=False)
    for step in (1, 2, 3):
        progress.update(step, {"loss": 1.0})
    progress.close()
    assert term.getvalue() == "" and sys.stderr is term


def test_the_stream_is_stderr_at_construction(capsys):
    """Not the stderr of import time: under capsys (or any replaced stderr) the line
    goes to the stream that is current when the bar is built."""
    progress = Progress(2)
    progress.update(2, {"loss": 0.5})
    assert capsys.readouterr().err.startswith("2/2 |")
