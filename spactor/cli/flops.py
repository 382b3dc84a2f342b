"""``spactor flops RECIPE [key=value ...] [--json] [--steps 250K,500K,1M]``.

Prints the training FLOPs per step of each stage the recipe runs, the per-module
breakdown, the ratio to the baseline (span corruption on the same architecture; MLM for
encoder-only models) and the cumulative FLOPs normalised to that baseline at chosen
steps (the SpacTor paper's Table 2 column). The paper's vocabulary is T5's 32k
SentencePiece model: add ``data.tokenizer_vocab_size=32000`` (or ``data.tokenizer=...``)
to count with it; recipes default to the 8k built-in tokenizer.

This module stays import-light (argparse only): ``spactor --help`` builds every parser.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

_SUFFIXES = {"K": 1_000, "M": 1_000_000}


def parse_steps(text: str) -> list[int]:
    """``250000,500000`` or ``250K,500K,1M`` → sorted step counts."""
    steps = []
    for part in text.split(","):
        part = part.strip().upper()
        if not part:
            continue
        scale = _SUFFIXES.get(part[-1], 1)
        number = part[:-1] if part[-1] in _SUFFIXES else part
        try:
            value = float(number) * scale
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a step count: '{part}' (e.g. 250000 or 250K)") from None
        if value <= 0 or value != int(value):
            raise argparse.ArgumentTypeError(f"step counts must be positive integers, got '{part}'")
        steps.append(int(value))
    if not steps:
        raise argparse.ArgumentTypeError("no steps given")
    return sorted(set(steps))


def add_flops_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "flops",
        help="training FLOPs per step of each stage, per module, and vs the baseline",
        description=__doc__.split("\n\n")[1].replace("``", "'"),
    )
    p.add_argument("args", nargs="*", metavar="[RECIPE|PATH] [key=value ...]")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--steps",
        type=parse_steps,
        default=None,
        help="steps at which to report cumulative FLOPs normalised to the baseline, comma-separated "
        "(250000,500000 or 250K,500K; default: the switch step, max_steps/2, max_steps)",
    )
    p.add_argument(
        "--tau", type=int, default=None, help="assume stage 2 starts at this step (overrides the schedules)"
    )
    p.add_argument(
        "--elementwise",
        action="store_true",
        help="also count elementwise ops, norms, softmax and losses (rough per-element costs)",
    )
    p.add_argument(
        "--device", default="cpu", help="where the dry run executes (cpu | cuda); FLOPs do not depend on it"
    )
    p.set_defaults(func=cmd_flops)
    return p


def cmd_flops(ns: argparse.Namespace) -> int:
    from spactor.config import QUICKSTART, load_config, split_recipe
    from spactor.train.flops.counting import flops_report

    recipe, overrides = split_recipe(ns.args)
    resolved = load_config(recipe or QUICKSTART, overrides)
    report = flops_report(resolved, elementwise=ns.elementwise, tau=ns.tau, device=ns.device)
    data = report.to_json(ns.steps)
    if ns.json:
        print(json.dumps(data, indent=2))
    else:
        print(format_report(data))
    return 0


# --------------------------------------------------------------------------- the table


_UNITS = (
    (1e21, "ZFLOP"),
    (1e18, "EFLOP"),
    (1e15, "PFLOP"),
    (1e12, "TFLOP"),
    (1e9, "GFLOP"),
    (1e6, "MFLOP"),
    (1.0, "FLOP"),
)


def _unit(flops: float) -> tuple[float, str]:
    """The largest unit in which ``flops`` is at least 1 (one unit per table)."""
    return next(((scale, name) for scale, name in _UNITS if flops >= scale), _UNITS[-1])


def _steps(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def format_report(data: dict[str, Any]) -> str:
    """A plain-text rendering of :meth:`FlopsReport.to_json`."""
    stages = data["stages"]
    header = (
        f"{data['recipe'] or 'config'}: {data['architecture']}, batch {data['batch_size']:,} x "
        f"{data['input_length']} tokens (raw chunk {data['raw_length']}), vocabulary {data['vocab_size']:,}"
    )
    lines = [header]
    switches = data.get("switch_steps") or [data["switch_step"]]
    known = [(k + 2, step) for k, step in enumerate(switches) if step is not None]
    if known:
        lines.append(", ".join(f"stage {k} from step {step:,}" for k, step in known) + f" of {data['max_steps']:,}")
    lines.append(f"baseline: {' + '.join(data['baseline_objectives'])} on the same model")
    lines.append("")

    columns = [s["name"] for s in stages] + ["baseline"]
    modules: list[str] = []
    for table in [s["modules"] for s in stages] + [data["baseline_modules"]]:
        modules += [m for m in table if m not in modules]
    frozen = {m for s in stages for m, trained in s["trained"].items() if not trained}
    labels = {m: f"  {m}" + (" (frozen)" if m in frozen else "") for m in modules}
    width = max([len(label) for label in labels.values()] + [len("ratio to baseline")]) + 2

    scale, unit = _unit(data["baseline_flops_per_step"])

    def fmt(flops: float) -> str:
        return f"{flops / scale:,.2f}"

    def row(label: str, cells: list[str]) -> str:
        return f"{label:<{width}}" + "".join(f"{c:>14}" for c in cells)

    lines.append(row("", columns))
    lines.append(row("steps", [_steps(s["steps"]) for s in stages] + [""]))
    lines.append(
        row(
            f"{unit}/step",
            [fmt(s["flops_per_step"]) for s in stages] + [fmt(data["baseline_flops_per_step"])],
        )
    )
    lines.append(row("ratio to baseline", [f"{s['ratio_to_baseline']:.3f}" for s in stages] + ["1.000"]))
    for m in modules:
        cells = [
            fmt(t[m]) if m in t else "-" for t in [s["modules"] for s in stages] + [data["baseline_modules"]]
        ]
        lines.append(row(labels[m], cells))

    points = data["cumulative"]
    cum_scale, cum_unit = _unit(max([p["flops"] for p in points] + [1.0]))
    lines += ["", "cumulative FLOPs normalised to the baseline (the SpacTor paper's Table 2 column):"]
    lines.append(f"{'step':>12}{cum_unit:>14}{'normalised':>12}")
    for point in points:
        lines.append(f"{point['step']:>12,}{point['flops'] / cum_scale:>14,.1f}{point['normalized']:>12.3f}")
    lines += ["", data["convention"] + "."]
    lines += [f"note: {n}" for n in data["notes"]]
    return "\n".join(lines)
