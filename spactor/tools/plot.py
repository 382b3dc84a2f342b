"""``spactor plot RUN [RUN ...] [--x steps|tokens|flops] -o FILE.png``: compare runs.

Reads each run's ``metrics.jsonl`` and draws one PNG with two panels sharing the x
axis: the training loss (``loss/span_corruption`` by default; its ``val/`` twin as
markers where evaluated) and the throughput (``tokens_per_s``). The x axis is the step,
the raw tokens consumed (``tokens_seen``) or the cumulative training FLOPs
(``flops_cum``) — the last is how the SpacTor paper compares a hybrid run with the SC
baseline: same compute, not same steps. A run's stage switches (``stage_switch_step``) are
vertical lines in its colour, one line style per stage entered (stage 2 dashed, stage 3
dotted, ...), each named once in the legend. Every run has its own colour (28 before
they repeat, then with another line style: :func:`run_styles`).

matplotlib is an optional dependency (``pip install 'spactor[plot]'``); it is used
through its object-oriented API with the Agg canvas, so plotting never touches a
display or pyplot's global state. This module stays import-light at the top.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Run colours: matplotlib's tab10, then tab20's lighter halves of the same hues, then
# Dark2: 28 distinct colours. Past them the colours repeat with another line style, so
# every run keeps its own (colour, line style) pair however many are compared.
RUN_COLORS: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5",
    "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
)
RUN_LINE_STYLES: tuple[Any, ...] = ("-", (0, (6, 2)), (0, (6, 2, 1, 2)), (0, (1, 1.5)))


def run_styles(n: int) -> list[tuple[str, Any]]:
    """A distinct (colour, line style) for each of ``n`` runs: solid lines in the 28
    colours first, then the colours again with each further line style (past four: ever
    longer dashes)."""
    styles = []
    for i in range(n):
        cycle, k = divmod(i, len(RUN_COLORS))
        style = RUN_LINE_STYLES[cycle] if cycle < len(RUN_LINE_STYLES) else (0, (cycle + 4, 2))
        styles.append((RUN_COLORS[k], style))
    return styles


X_AXES: dict[str, tuple[str, str]] = {
    "steps": ("step", "step"),
    "tokens": ("tokens_seen", "tokens seen (raw text tokens)"),
    "flops": ("flops_cum", "cumulative training FLOPs"),
}
DEFAULT_METRIC = "loss/span_corruption"
THROUGHPUT = "tokens_per_s"
METRICS_FILE = "metrics.jsonl"


@dataclass
class Run:
    path: Path  # the run directory
    label: str
    records: list[dict[str, Any]] = field(default_factory=list)


def read_run(path: Path) -> Run:
    """A run directory (or its ``metrics.jsonl``); lines cut short by a crash are skipped."""
    path = Path(path)
    file = path if path.is_file() else path / METRICS_FILE
    if not file.is_file():
        raise ValueError(f"{path}: no {METRICS_FILE} (is it a spactor run directory?)")
    records = []
    for line in file.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    if not records:
        raise ValueError(f"{file}: no records yet")
    run_dir = file.parent
    return Run(run_dir, run_dir.resolve().name, records)


def unique_labels(paths: Sequence[Path]) -> list[str]:
    """Run-directory names, lengthened by parent directories until they differ
    (``a/run`` and ``b/run`` rather than two ``run``)."""
    parts = [Path(p).resolve().parts for p in paths]
    depth = 1
    while True:
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels) or all(depth >= len(p) for p in parts):
            return labels
        depth += 1


def _number(value: Any) -> float | None:
    """A finite float, or None (missing, non-numeric, or the "nan"/"inf" strings the
    metrics writer stores for non-finite values)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def series(records: Sequence[dict[str, Any]], x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for record in records:
        x, y = _number(record.get(x_key)), _number(record.get(y_key))
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


def ema(values: Sequence[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased so the first
    points are not pulled towards zero."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def _matplotlib() -> tuple[Any, Any, Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.ticker import EngFormatter
    except ImportError:
        raise ImportError(
            "spactor plot needs matplotlib: pip install 'spactor[plot]' (or pip install matplotlib)"
        ) from None
    return Figure, FigureCanvasAgg, Line2D, EngFormatter


SWITCH_STYLES: tuple[Any, ...] = ("--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)))


def switch_style(stage: int) -> Any:
    """The line style of a switch into ``stage`` (2: dashed, 3: dotted, ...; cycling)."""
    return SWITCH_STYLES[(stage - 2) % len(SWITCH_STYLES)]


def stage_switches(records: Sequence[dict[str, Any]], x_key: str) -> list[tuple[float, int]]:
    """``(x, stage entered)`` of every logged switch: the record carrying
    ``stage_switch_step`` is logged in the stage it entered (older two-stage logs without
    ``stage``: stage 2)."""
    found = []
    for record in records:
        at = _number(record.get(x_key)) if "stage_switch_step" in record else None
        if at is not None:
            stage = record.get("stage")
            found.append((at, int(stage) if isinstance(stage, int) and not isinstance(stage, bool) else 2))
    return found


def plot_runs(
    paths: Sequence[Path],
    out: Path,
    x: str = "steps",
    metric: str = DEFAULT_METRIC,
    smooth: float = 0.0,
    title: str | None = None,
) -> Path:
    """Draw ``metric`` and throughput of every run against ``x`` into the PNG ``out``.

    Raises ``ValueError`` (one line, naming the run) when a run lacks the metric or the
    x-axis field, and ``ImportError`` when matplotlib is not installed.
    """
    if x not in X_AXES:
        raise ValueError(f"--x must be one of {', '.join(X_AXES)}, got {x!r}")
    if eval_task(metric) is not None:
        return plot_eval(paths, out, eval_task(metric) or "", x=x, title=title)
    if not 0.0 <= smooth < 1.0:
        raise ValueError(f"--smooth must be in [0, 1), got {smooth}")
    if not paths:
        raise ValueError("no runs given")
    Figure, FigureCanvasAgg, Line2D, EngFormatter = _matplotlib()
    x_key, x_label = X_AXES[x]
    runs = [read_run(Path(p)) for p in paths]
    for run, label in zip(runs, unique_labels([r.path for r in runs]), strict=True):
        run.label = label
        _require(
            run,
            x_key,
            "FLOPs are logged by spactor versions that count them; use --x steps or --x tokens"
            if x == "flops"
            else "choose another --x",
        )
        _require(
            run, metric, f"its loss keys: {', '.join(_loss_keys(run)) or '(none)'}; choose one with --metric"
        )

    fig = Figure(figsize=(10, 7.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2.2, 1]})
    val_key = f"val/{metric}"
    entered: set[int] = set()  # stages some run switched to
    evaluated = False
    for run, (color, style) in zip(runs, run_styles(len(runs)), strict=True):
        xs, ys = series(run.records, x_key, metric)
        if smooth > 0:
            top.plot(xs, ys, color=color, linestyle=style, alpha=0.25, linewidth=0.8)
            top.plot(xs, ema(ys, smooth), color=color, linestyle=style, linewidth=1.6, label=run.label)
        else:
            top.plot(xs, ys, color=color, linestyle=style, linewidth=1.3, label=run.label)
        vx, vy = series(run.records, x_key, val_key)
        if vx:
            top.plot(
                vx,
                vy,
                linestyle="none",
                marker="o",
                markersize=6,
                color=color,
                markeredgecolor="black",
                markeredgewidth=0.7,
            )
            evaluated = True
        tx, ty = series(run.records, x_key, THROUGHPUT)
        bottom.plot(tx, ty, color=color, linestyle=style, linewidth=1.1, label=run.label)
        for at, stage in stage_switches(run.records, x_key):
            for ax in (top, bottom):
                ax.axvline(at, color=color, linestyle=switch_style(stage), linewidth=1.0, alpha=0.7)
            entered.add(stage)

    top.set_ylabel(metric)
    heading = title or f"{metric} vs {x}" + (f" (EMA {smooth:g})" if smooth > 0 else "")
    top.set_title(heading)
    # One legend entry per run (its directory name); the markers and the switch line
    # are explained once, in grey, instead of once per run.
    handles, labels = top.get_legend_handles_labels()
    if evaluated:
        handles.append(Line2D([], [], linestyle="none", marker="o", color="0.6", markeredgecolor="black"))
        labels.append(f"{val_key} (evaluation)")
    for stage in sorted(entered):
        handles.append(Line2D([], [], linestyle=switch_style(stage), color="0.4"))
        labels.append(f"switch to stage {stage}")
    top.legend(handles, labels, loc="upper right", fontsize="small")
    bottom.set_ylabel("tokens/s")
    bottom.set_xlabel(x_label)
    bottom.set_ylim(bottom=0)
    bottom.yaxis.set_major_formatter(EngFormatter())
    if x != "steps":  # 20k tokens, 3 EFLOP rather than an offset exponent
        bottom.xaxis.set_major_formatter(EngFormatter(unit="FLOP" if x == "flops" else ""))
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def _require(run: Run, key: str, hint: str) -> None:
    if not any(_number(r.get(key)) is not None for r in run.records):
        raise ValueError(f"run {run.path}: metrics.jsonl has no '{key}' values; {hint}")


def _loss_keys(run: Run) -> list[str]:
    keys = {k for r in run.records for k in r if k.startswith("loss/")}
    return sorted(keys)


# --------------------------------------------------------------------------- downstream scores


def eval_task(metric: str) -> str | None:
    """``eval/<task>/score`` -> ``<task>``; None for any other metric."""
    parts = metric.split("/")
    return parts[1] if len(parts) == 3 and parts[0] == "eval" and parts[2] == "score" else None


def read_eval(run_dir: Path, task: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """A run's ``eval/<task>/step_<N>.json`` results by step, and its ``random.json``."""
    folder = Path(run_dir) / "eval" / task
    results = []
    for path in sorted(folder.glob("step_*.json")) if folder.is_dir() else []:
        try:
            results.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    random_file = folder / "random.json"
    random = json.loads(random_file.read_text()) if random_file.is_file() else None
    return sorted(results, key=lambda r: r["step"]), random


def draw_eval(ax: Any, paths: Sequence[Path], labels: Sequence[str], task: str, x: str) -> None:
    """Score ± std (error bars over seeds) of each run's evaluated checkpoints against
    ``step`` or ``flops_cum``; a run's random-init control as a dotted line."""
    if x not in ("steps", "flops"):
        raise ValueError(f"eval/{task}/score is plotted against steps or flops, not {x}")
    key = "step" if x == "steps" else "flops_cum"
    metric = None
    styles = run_styles(len(paths))
    for path, label, (color, style) in zip(paths, labels, styles, strict=True):
        results, random = read_eval(Path(path), task)
        points = [r for r in results if _number(r.get(key)) is not None]
        if not points:
            raise ValueError(f"run {path}: no eval/{task}/step_*.json with '{key}' "
                             f"(run `spactor evaluate {path} --task {task} --all` first)")
        metric = points[0].get("metric", metric)
        ax.errorbar([r[key] for r in points], [r["score"] for r in points], yerr=[r.get("std", 0.0) for r in points],
                    color=color, linestyle=style, marker="o", capsize=3, linewidth=1.3,
                    label=f"{label} ({points[0].get('seeds', 1)} seeds)")
        if random is not None:
            ax.axhline(random["score"], color=color, linestyle=":", linewidth=1.0, alpha=0.8)
    ax.set_ylabel(f"{task} {metric or 'score'}")
    ax.set_xlabel(X_AXES[x][1] + (" of pre-training" if x == "flops" else " (pre-training)"))
    ax.grid(True, alpha=0.3)


def plot_eval(paths: Sequence[Path], out: Path, task: str, x: str = "flops", title: str | None = None) -> Path:
    """The paper's Figure 2/3: downstream score of several runs' checkpoints."""
    if not paths:
        raise ValueError("no runs given")
    Figure, FigureCanvasAgg, Line2D, EngFormatter = _matplotlib()
    fig = Figure(figsize=(8, 5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    draw_eval(ax, paths, unique_labels(paths), task, x)
    if x == "flops":
        ax.xaxis.set_major_formatter(EngFormatter(unit="FLOP"))
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], linestyle=":", color="0.4"))
    labels.append("random init (same budget)")
    ax.legend(handles, labels, fontsize="small")
    ax.set_title(title or f"eval/{task}/score vs {x} (mean ± std over seeds)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


# --------------------------------------------------------------------------- CLI


def add_plot_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "plot",
        help="plot the loss and throughput of one or more runs into a PNG",
        description="Draw a loss (default loss/span_corruption; val/ values as markers) and tokens/s of "
        "several runs on one chart against steps, tokens seen or cumulative FLOPs. Needs matplotlib.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or their metrics.jsonl)")
    p.add_argument("--x", choices=sorted(X_AXES), default="steps", help="x axis (default: steps)")
    p.add_argument("--metric", default=DEFAULT_METRIC, help=f"the loss to plot (default: {DEFAULT_METRIC}); "
                   "eval/<task>/score: downstream scores from RUN/eval/<task>/ with error bars (--x steps|flops)")
    p.add_argument(
        "--smooth", type=float, default=0.0, help="EMA weight in [0, 1) for the training curve (0: raw)"
    )
    p.add_argument("--title", default=None, help="chart title")
    p.add_argument("-o", "--out", required=True, metavar="FILE.png", help="the PNG to write")
    p.set_defaults(func=cmd_plot)
    return p


def cmd_plot(ns: argparse.Namespace) -> int:
    from spactor.errors import UsageError

    try:
        out = plot_runs(
            [Path(r) for r in ns.runs],
            Path(ns.out),
            x=ns.x,
            metric=ns.metric,
            smooth=ns.smooth,
            title=ns.title,
        )
    except (ValueError, ImportError) as e:
        raise UsageError(str(e)) from None
    print(f"wrote {out}", flush=True)
    return 0
