"""Turn pytest-benchmark JSON into a comparison table (Markdown) and a bar chart (PNG).

    pytest benchmarks/ -k tiny --benchmark-json out.json
    python -m benchmarks.compare out.json [more.json ...] -o table.md --png chart.png

One detail table per results file (median and fastest step time, seq/s (from the median), tokens/s, FLOPs, TFLOP/s,
MFU, speed against the group's reference benchmark where one is marked, the timer and
rounds), a table of every train step against the SC step of its group (time and FLOPs
per sequence, side by side: what SpacTor stage 1, ELECTRA and Fast-ELECTRA cost over SC)
and, given several files, a side-by-side table of seq/s with each file's ratio to the first. The
chart shows seq/s per benchmark, one bar per file, on a log axis (the suites span orders
of magnitude). Without matplotlib the table is still written and the chart skipped with
a message.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Result:
    name: str
    group: str
    median_s: float
    min_s: float
    rounds: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def seq_per_s(self) -> float | None:
        return self.info.get("seq_per_s")


@dataclass
class Run:
    label: str
    results: list[Result]
    timers: list[str] = field(default_factory=list)  # the timers its benchmarks were measured with

    def by_name(self) -> dict[str, Result]:
        return {r.name: r for r in self.results}


def load_run(path: Path) -> Run:
    data = json.loads(path.read_text())
    benchmarks = data.get("benchmarks", [])
    results = [
        Result(
            name=b["name"],
            group=b.get("group") or "",
            median_s=b["stats"]["median"],
            min_s=b["stats"]["min"],
            rounds=b["stats"]["rounds"],
            info=b.get("extra_info") or {},
        )
        for b in benchmarks
    ]
    timers = sorted({str((b.get("options") or {}).get("timer", "")) for b in benchmarks} - {""})
    return Run(label=path.stem, results=results, timers=timers)


def reference_ratios(run: Run) -> dict[str, float]:
    """seq/s of each benchmark over the reference doing the same work: same group and
    ``extra_info.kind``, marked ``extra_info.reference``."""
    refs = {(r.group, r.info.get("kind")): r for r in run.results if r.info.get("reference") and r.seq_per_s}
    out = {}
    for r in run.results:
        ref = refs.get((r.group, r.info.get("kind")))
        if ref is not None and r.seq_per_s:
            out[r.name] = r.seq_per_s / ref.seq_per_s
    return out


# The baseline every other train step is set against: the SC recipe's step (not HF's).
SC_RECIPE = "sc"


@dataclass
class AgainstSC:
    """One benchmark over the SC step of its group, per sequence (the batch sizes may differ)."""

    time: float  # median step time per sequence ÷ SC's
    flops: float | None  # FLOPs per sequence ÷ SC's (None: either not counted)

    @property
    def time_per_flop(self) -> float | None:
        """time ÷ FLOPs: above 1, each FLOP costs more than in the SC step."""
        return None if self.flops is None else self.time / self.flops


def _per_sequence(r: Result, value: float | None) -> float | None:
    batch = r.info.get("batch_size")
    return None if value is None or not batch else value / batch


def sc_ratios(run: Run) -> dict[str, AgainstSC]:
    """Every benchmark (SpacTor stage 1 and 2, ELECTRA, Fast-ELECTRA, ...) against the SC
    step in its group (``extra_info.recipe == "sc"``, not a marked reference): its step
    time and its FLOPs per sequence over SC's. Groups without an SC step are left out."""
    scs = {r.group: r for r in run.results
           if r.info.get("recipe") == SC_RECIPE and not r.info.get("reference")}
    out = {}
    for r in run.results:
        sc = scs.get(r.group)
        if sc is None or r is sc or r.info.get("reference"):
            continue
        time, sc_time = _per_sequence(r, r.median_s), _per_sequence(sc, sc.median_s)
        if time is None or not sc_time:
            continue
        flops, sc_flops = (_per_sequence(x, x.info.get("flops_per_step")) for x in (r, sc))
        out[r.name] = AgainstSC(time / sc_time, flops / sc_flops if flops and sc_flops else None)
    return out


# --------------------------------------------------------------------------- the table


def _num(value: float | None, fmt: str = ",.1f") -> str:
    return "" if value is None else format(value, fmt)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def detail_table(run: Run) -> list[str]:
    ratios = reference_ratios(run)
    header = [
        "benchmark",
        "group",
        "median ms",
        "min ms",
        "seq/s",
        "tokens/s",
        "TFLOP/step",
        "TFLOP/s",
        "MFU",
        "vs reference",
        "device",
    ]
    rows = []
    for r in sorted(run.results, key=lambda r: (r.group, r.name)):
        flops = r.info.get("flops_per_step")
        mfu = r.info.get("mfu")
        rows.append(
            [
                r.name,
                r.group,
                _num(r.median_s * 1e3, ",.2f"),
                _num(r.min_s * 1e3, ",.2f"),
                _num(r.seq_per_s),
                _num(r.info.get("tokens_per_s"), ",.0f"),
                _num(None if flops is None else flops / 1e12, ",.4g"),
                _num(r.info.get("tflops_per_s"), ",.3g"),
                "" if mfu is None else f"{100 * mfu:.1f}%",
                "" if r.name not in ratios else f"{ratios[r.name]:.2f}x",
                str(r.info.get("device", "")),
            ]
        )
    rounds = sorted({r.rounds for r in run.results})
    span = "none" if not rounds else str(rounds[0]) if len(rounds) == 1 else f"{rounds[0]}-{rounds[-1]}"
    measured = f"timer {', '.join(run.timers) or 'unknown'}; rounds {span}"
    if any("perf_counter" in t for t in run.timers):  # pytest-benchmark's default: wall clock
        measured += " (wall clock: on a shared machine, --benchmark-timer=time.process_time)"
    return [f"### {run.label}", "", measured, "", *_table(header, rows), ""]


def sc_table(run: Run) -> list[str]:
    """Each train step against its group's SC step: time and FLOPs side by side."""
    ratios = sc_ratios(run)
    if not ratios:
        return []
    by_name = run.by_name()
    rows = []
    for name in sorted(ratios, key=lambda n: (by_name[n].group, n)):
        a = ratios[name]
        rows.append([
            name,
            by_name[name].group,
            f"{a.time:.2f}x",
            "" if a.flops is None else f"{a.flops:.2f}x",
            "" if a.time_per_flop is None else f"{a.time_per_flop:.2f}",
        ])
    header = ["benchmark", "group", "time / SC", "FLOPs / SC", "time / FLOPs"]
    return [f"### {run.label}: against SC (per sequence, same group)", "", *_table(header, rows), ""]


def comparison_table(runs: list[Run]) -> list[str]:
    names = _names(runs)
    first = runs[0].by_name()
    header = (
        ["benchmark"]
        + [f"seq/s {run.label}" for run in runs]
        + [f"{run.label} / {runs[0].label}" for run in runs[1:]]
    )
    rows = []
    for name in names:
        values = [run.by_name().get(name) for run in runs]
        cells = [_num(v.seq_per_s if v else None) for v in values]
        base = first.get(name)
        for v in values[1:]:
            ok = v is not None and base is not None and v.seq_per_s and base.seq_per_s
            cells.append(f"{v.seq_per_s / base.seq_per_s:.2f}x" if ok else "")  # type: ignore[union-attr,operator]
        rows.append([name, *cells])
    return ["### seq/s side by side", "", *_table(header, rows), ""]


def _names(runs: list[Run]) -> list[str]:
    names: list[str] = []
    for run in runs:
        names += [r.name for r in sorted(run.results, key=lambda r: (r.group, r.name)) if r.name not in names]
    return names


def render(runs: list[Run]) -> str:
    lines = ["## Benchmarks", ""]
    if len(runs) > 1:
        lines += comparison_table(runs)
    for run in runs:
        lines += detail_table(run)
        lines += sc_table(run)
    return "\n".join(lines)


# --------------------------------------------------------------------------- the chart


def write_chart(runs: list[Run], path: Path) -> bool:
    """Horizontal bars of seq/s per benchmark, one colour per results file. Returns
    False (and says why) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "warning: matplotlib is not installed, so no chart was written "
            "(pip install matplotlib); the table was written.",
            file=sys.stderr,
        )
        return False
    names = [n for n in _names(runs) if any((r := run.by_name().get(n)) and r.seq_per_s for run in runs)]
    height = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(names) * max(1, len(runs) * 0.6) + 1.5))
    for i, run in enumerate(runs):
        table = run.by_name()
        ys = [j + i * height for j in range(len(names))]
        xs = [(table[n].seq_per_s or 0) if n in table else 0 for n in names]
        ax.barh(ys, xs, height=height, label=run.label)
    ax.set_yticks([j + height * (len(runs) - 1) / 2 for j in range(len(names))], names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("sequences / s (log scale)")
    ax.set_title("spactor benchmarks")
    ax.grid(axis="x", which="both", alpha=0.3)
    if len(runs) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- command


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "results", nargs="+", type=Path, help="pytest-benchmark JSON files (--benchmark-json)"
    )
    parser.add_argument("-o", "--output", type=Path, help="Markdown table (default: stdout)")
    parser.add_argument("--png", type=Path, help="bar chart of seq/s")
    args = parser.parse_args(argv)

    runs = []
    for path in args.results:
        if not path.is_file():
            parser.error(f"no such file: {path}")
        runs.append(load_run(path))
    text = render(runs)
    if args.output is None:
        print(text)
    else:
        args.output.write_text(text + "\n")
        print(f"wrote {args.output}", file=sys.stderr)
    if args.png is not None and write_chart(runs, args.png):
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
