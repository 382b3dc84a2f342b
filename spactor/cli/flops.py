"""``spactor flops RECIPE [key=value ...] [--json] [--steps 250K,500K,1M] [--sizes [tiny,...]]``.

Prints the training FLOPs per step of each stage the recipe runs (fvcore's count, and
beside it the architecture's analytic count per step and per token and the ratio of the
two), the per-module breakdown, the ratio to the baseline (span corruption on the same
architecture; MLM for encoder-only models) and the cumulative FLOPs normalised to that
baseline at chosen steps (the SpacTor paper's Table 2 column). Ops fvcore has no handle
for count 0 and are named in a note. The paper's vocabulary is T5's 32k
SentencePiece model: add ``data.tokenizer_vocab_size=32000`` (or ``data.tokenizer=...``)
to count with it; recipes default to the 8k built-in tokenizer. ``--sizes`` counts the
recipe at each ``model.size`` instead and prints one row per size: the discriminator, the
generator and RTD head the recipe builds beside it, and stage 1's FLOPs over the baseline's.

This module stays import-light (argparse only): ``spactor --help`` builds every parser.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

_SUFFIXES = {"K": 1_000, "M": 1_000_000}
DEFAULT_SIZES = ("tiny", "small", "base", "large")  # the t5 and encoder presets


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
        "--sizes",
        nargs="?",
        const=",".join(DEFAULT_SIZES),
        default=None,
        metavar="SIZE,...",
        help="count the recipe at each model.size (default: " + ",".join(DEFAULT_SIZES) + ") and print "
        "the generator, RTD head and stage-1 ratio per size (counted on the meta device unless --device "
        "says)",
    )
    p.add_argument(
        "--device",
        default=None,
        help="where the dry run executes (cpu | cuda | meta; default cpu, meta with --sizes); FLOPs do not "
        "depend on it",
    )
    p.set_defaults(func=cmd_flops)
    return p


def cmd_flops(ns: argparse.Namespace) -> int:
    from spactor.config import QUICKSTART, load_config, split_recipe
    from spactor.train.flops.counting import flops_report

    recipe, overrides = split_recipe(ns.args)
    # --sizes counts Large at its real batch: on meta that is seconds, on CPU hours
    ns.device = ns.device or ("meta" if ns.sizes is not None else "cpu")
    if ns.sizes is not None:
        sizes = [s.strip() for s in ns.sizes.split(",") if s.strip()]
        rows = [size_row(recipe or QUICKSTART, overrides, size, ns) for size in sizes]
        data = {"recipe": recipe or QUICKSTART, "sizes": rows}
        print(json.dumps(data, indent=2) if ns.json else format_sizes(rows))
        return 0
    resolved = load_config(recipe or QUICKSTART, overrides)
    report = flops_report(resolved, elementwise=ns.elementwise, tau=ns.tau, device=ns.device)
    data = report.to_json(ns.steps)
    if ns.json:
        print(json.dumps(data, indent=2))
    else:
        print(format_report(data))
    return 0


def size_row(recipe: str, overrides: list[str], size: str, ns: argparse.Namespace) -> dict[str, Any]:
    """The recipe at ``model.size=size``: its discriminator, what its objectives build
    beside it (``sizes()``: the RTD generator and head), and stage 1 against the baseline."""
    from spactor.config import load_config
    from spactor.train.flops.counting import flops_report
    from spactor.validation import check_model, model_shape

    resolved = load_config(recipe, [*overrides, f"model.size={size}"])
    hidden = check_model(resolved.model, resolved.cfg.data.input_length)
    shape = model_shape(resolved.model)
    built: dict[str, Any] = {}
    for name, plugin in resolved.objectives.items():
        sizes = getattr(plugin.config, "sizes", None)
        if callable(sizes) and hidden is not None:
            built.update(sizes(hidden, shape, f"objectives.{name}"))
    data = flops_report(resolved, elementwise=ns.elementwise, tau=ns.tau, device=ns.device).to_json()
    stage = data["stages"][0]
    return {
        "size": size,
        "model": None if shape is None else {
            "layers": shape.num_layers, "d_model": shape.d_model, "heads": shape.num_heads, "d_ff": shape.d_ff
        },
        "generator": built.get("generator"),
        "head_hidden": built.get("head_hidden"),
        "batch_size": data["batch_size"],
        "input_length": data["input_length"],
        "vocab_size": data["vocab_size"],
        "stage1_flops_per_step": stage["flops_per_step"],
        "baseline_flops_per_step": data["baseline_flops_per_step"],
        "ratio_to_baseline": stage["ratio_to_baseline"],
        "stage1_analytic_flops_per_step": stage["analytic_flops_per_step"],
        "stage1_measured_over_analytic": stage["measured_over_analytic"],
    }


def _dims(d: dict[str, int] | None, keys: tuple[str, ...]) -> str:
    return "-" if d is None else "/".join(str(d[k]) for k in keys)


def format_sizes(rows: list[dict[str, Any]]) -> str:
    """One line per size (``--sizes``)."""
    header = ("size", "D layers/d/heads/d_ff", "G layers/d/heads/d_ff", "RTD head", "batch x length",
              "stage 1", "baseline", "ratio", "stage 1 / analytic")  # fmt: skip
    table = [header]
    for r in rows:
        scale, unit = _unit(r["baseline_flops_per_step"])
        table.append((
            r["size"],
            _dims(r["model"], ("layers", "d_model", "heads", "d_ff")),
            _dims(r["generator"], ("layers", "d_model", "heads", "d_ff")),
            "-" if r["head_hidden"] is None else str(r["head_hidden"]),
            f"{r['batch_size']:,} x {r['input_length']}",
            f"{r['stage1_flops_per_step'] / scale:,.2f} {unit}",
            f"{r['baseline_flops_per_step'] / scale:,.2f} {unit}",
            f"{r['ratio_to_baseline']:.3f}",
            "-" if r["stage1_measured_over_analytic"] is None else f"{r['stage1_measured_over_analytic']:.3f}",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 2 + 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in table]  # fmt: skip
    return "\n".join(
        ["stage-1 FLOPs per step and their ratio to the baseline's at each model.size "
         f"(vocabulary {rows[0]['vocab_size']:,})" if rows else "no sizes", *lines]
    )


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
    scale, unit = _unit(data["baseline_flops_per_step"])
    # The architecture's analytic count (ArchitectureSpec.analytic_flops) beside fvcore's:
    # per step in the table's unit, per token (of the raw chunk, as tokens_seen counts) in its own.
    analytic = [s["analytic_flops_per_step"] for s in stages] + [data["baseline_analytic_flops_per_step"]]
    per_token = [s["analytic_flops_per_token"] for s in stages] + [data["baseline_analytic_flops_per_token"]]
    over = [s["measured_over_analytic"] for s in stages] + [data["baseline_measured_over_analytic"]]
    token_scale, token_unit = _unit(max([t for t in per_token if t is not None] + [1.0]))
    analytic_labels = (f"analytic {unit}/step", f"analytic {token_unit}/token", "measured / analytic")
    width = max(len(label) for label in [*labels.values(), *analytic_labels, "ratio to baseline"]) + 2

    def fmt(flops: float, in_scale: float = scale) -> str:
        return f"{flops / in_scale:,.2f}"

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
    lines.append(row(analytic_labels[0], ["-" if a is None else fmt(a) for a in analytic]))
    lines.append(row(analytic_labels[1], ["-" if t is None else fmt(t, token_scale) for t in per_token]))
    lines.append(row(analytic_labels[2], ["-" if r is None else f"{r:.3f}" for r in over]))
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
