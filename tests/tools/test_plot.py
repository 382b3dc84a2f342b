"""``spactor plot``: several runs' loss and throughput against steps, tokens or FLOPs."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from spactor.cli import main
from spactor.tools.plot import ema, plot_runs, read_run, series, unique_labels

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _matplotlib():
    pytest.importorskip("matplotlib", reason="pip install -e '.[plot]' for the plotting tests")


def write_run(
    root: Path,
    name: str,
    steps: int = 40,
    flops: bool = True,
    switch_at: int | None = None,
    rate: float = 0.05,
) -> Path:
    """A metrics.jsonl like the trainer's: per-step loss, evaluation every 10 steps."""
    run = root / name
    run.mkdir(parents=True)
    lines = []
    for step in range(1, steps + 1):
        stage = 1 if switch_at is None or step <= switch_at else 2
        record = {
            "step": step,
            "stage": stage,
            "loss": 10 * (2 + 3 * math.exp(-rate * step)),
            "loss/span_corruption": 2 + 3 * math.exp(-rate * step),
            "tokens_seen": 4096 * step,
            "tokens_per_s": 5000.0 if stage == 1 else 8000.0,
        }
        if flops:
            per_step = 1.375e12 if stage == 1 else 1e12
            record["flops_per_step"] = per_step
            record["flops_cum"] = sum(
                1.375e12 if (switch_at is None or s <= switch_at) else 1e12 for s in range(1, step + 1)
            )
        if step == (switch_at or 0) + 1:
            record["stage_switch_step"] = switch_at
            record["released"] = ["rtd", "mlm_mask"]
        if step % 10 == 0:
            record["val/loss/span_corruption"] = record["loss/span_corruption"] + 0.1
        lines.append(json.dumps(record))
    lines.append('{"step": 41, "loss": 1.0')  # a line cut short by a crash is skipped
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 20_000  # two panels, curves, legend: far from an empty canvas


@pytest.mark.parametrize("x", ["steps", "tokens", "flops"])
def test_plots_several_runs_on_every_axis(tmp_path, x):
    runs = [write_run(tmp_path, "t5-sc"), write_run(tmp_path, "spactor-tau20", switch_at=20, rate=0.08)]
    out = plot_runs(runs, tmp_path / "out" / f"{x}.png", x=x, smooth=0.5 if x == "tokens" else 0.0)
    assert_png(out)


def test_cli_writes_the_png(tmp_path, capsys):
    runs = [write_run(tmp_path, "a"), write_run(tmp_path, "b", switch_at=10)]
    out = tmp_path / "chart.png"
    assert main(["plot", *map(str, runs), "--x", "flops", "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert_png(out)


def test_missing_flops_is_a_one_line_error(tmp_path, capsys):
    run = write_run(tmp_path, "old", flops=False)
    assert main(["plot", str(run), "--x", "flops", "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "no 'flops_cum'" in err and "--x steps" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()
    assert main(["plot", str(run), "--x", "tokens", "-o", str(tmp_path / "x.png")]) == 0


def test_missing_metric_names_the_run_and_its_losses(tmp_path):
    run = write_run(tmp_path, "r")
    with pytest.raises(ValueError, match=r"no 'loss/rtd'.*loss/span_corruption.*--metric"):
        plot_runs([run], tmp_path / "x.png", metric="loss/rtd")
    with pytest.raises(ValueError, match="no metrics.jsonl"):
        plot_runs([tmp_path / "nowhere"], tmp_path / "x.png")


def test_missing_matplotlib_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import` raise ImportError
    run = write_run(tmp_path, "r")
    assert main(["plot", str(run), "-o", str(tmp_path / "x.png")]) == 2
    assert "pip install 'spactor[plot]'" in capsys.readouterr().err


def test_helpers(tmp_path):
    assert unique_labels([Path("/x/a/run"), Path("/x/b/run"), Path("/x/c")]) == ["a/run", "b/run", "x/c"]
    assert unique_labels([Path("/x/one"), Path("/x/two")]) == ["one", "two"]
    records = [{"step": 1, "l": 2.0}, {"step": 2, "l": "nan"}, {"step": 3}, {"step": 4, "l": 1}]
    assert series(records, "step", "l") == ([1.0, 4.0], [2.0, 1.0])
    assert ema([4.0, 4.0, 4.0], 0.9) == pytest.approx([4.0, 4.0, 4.0])  # debiased: no pull to 0
    run = read_run(write_run(tmp_path, "r") / "metrics.jsonl")  # the file itself works too
    assert run.label == "r" and len(run.records) == 40


def test_plots_a_real_quickstart_run(tmp_path, tiny_overrides):
    from spactor.config import load_config
    from spactor.plugins import load_plugins
    from spactor.train.loop import train

    load_plugins()
    run = tmp_path / "quickstart"
    train(
        load_config(
            "quickstart", [*tiny_overrides, "trainer.max_steps=4", "trainer.eval_every=2", f"run.dir={run}"]
        )
    )
    out = tmp_path / "real.png"
    assert main(["plot", str(run), "--x", "tokens", "-o", str(out)]) == 0
    assert_png(out)
    if any("flops_cum" in r for r in read_run(run).records):  # FLOPs counting on (the default)
        assert main(["plot", str(run), "--x", "flops", "-o", str(out)]) == 0
        assert_png(out)


def test_each_stage_switch_is_named_in_the_legend(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from spactor.tools.plot import stage_switches, switch_style

    two = write_run(tmp_path, "two", switch_at=10)
    three = write_run(tmp_path, "three", switch_at=10)
    records = [json.loads(line) for line in (three / "metrics.jsonl").read_text().splitlines()[:-1]]
    for r in records:  # a third stage from step 25 on, as a curriculum logs it
        if r["step"] > 25:
            r["stage"] = 3
        if r["step"] == 26:
            r["stage_switch_step"], r["released"] = 25, ["mlm_mask", "rtd"]
    (three / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert stage_switches(records, "step") == [(11.0, 2), (26.0, 3)]
    assert stage_switches([{"step": 5, "stage_switch_step": 4}], "step") == [(5.0, 2)]  # no stage field
    assert switch_style(2) != switch_style(3)

    legends = []
    original = Axes.legend

    def spy(self, handles, labels, **kwargs):
        legends.append(list(labels))
        return original(self, handles, labels, **kwargs)

    monkeypatch.setattr(Axes, "legend", spy)
    assert_png(plot_runs([two, three], tmp_path / "three.png"))
    assert legends[-1][-2:] == ["switch to stage 2", "switch to stage 3"]
    plot_runs([two], tmp_path / "two.png")
    assert [label for label in legends[-1] if label.startswith("switch")] == ["switch to stage 2"]


def test_twelve_runs_get_twelve_distinct_colour_and_style_pairs(tmp_path, monkeypatch):
    """matplotlib's C0-C9 repeated from the 11th run on; every run now has its own
    (colour, line style) pair, in the plot and the legend."""
    from matplotlib.axes import Axes
    from matplotlib.colors import to_hex

    runs = [write_run(tmp_path, f"run{i:02d}", steps=12, flops=False) for i in range(12)]
    legends = []
    original = Axes.legend

    def spy(self, handles, labels, **kwargs):
        legends.append((list(handles), list(labels)))
        return original(self, handles, labels, **kwargs)

    monkeypatch.setattr(Axes, "legend", spy)
    assert_png(plot_runs(runs, tmp_path / "twelve.png", x="steps"))
    handles, labels = legends[0]
    pairs = {(to_hex(h.get_color()), str(h.get_linestyle())) for h, label in zip(handles, labels)
             if label.startswith("run")}
    assert len(pairs) == 12
    from spactor.tools.plot import run_styles

    many = run_styles(200)  # far past the colours: still one pair per run
    assert len({(c, str(s)) for c, s in many}) == 200
