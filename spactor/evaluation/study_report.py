"""The report of a study (``spactor study``): ``study.md`` — the SpacTor paper's Table 2
at the study's scale (score ± std per arm and checkpoint, FLOPs normalised by the
baseline's at the middle checkpoint, each arm against its random-init control in
standard deviations, which arm reaches the baseline's final score at what compute, the
clean validation SC loss against FLOPs, the wall and CPU time per part) — and
``study.png``."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spactor.evaluation.study_file import Study

@dataclass
class Cell:
    """One arm's score at one checkpoint (or a random-init control): the mean ± sample
    std over its pre-training runs (with one run: over its fine-tuning seeds or random
    inits), ``n`` of them, and the pre-training FLOPs spent."""

    mean: float
    std: float
    n: int
    flops: float | None
    metric: str


def _load(run_dir: Path, task: str, step: int | None) -> dict[str, Any] | None:
    from spactor.evaluation.finetune import result_path

    path = result_path(run_dir, task, step)
    return json.loads(path.read_text()) if path.is_file() else None


def _mean_std(values: list[float]) -> tuple[float, float]:
    import statistics

    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def arm_cell(study: Study, out: Path, arm: str, task: str, step: int) -> Cell | None:
    results = [_load(run_dir, task, step) for _, run_dir in study.runs(arm, out)]
    found = [r for r in results if r is not None]
    if not found:
        return None
    if len(found) == 1:
        r = found[0]
        return Cell(r["score"], r["std"], r["seeds"], r.get("flops_cum"), r["metric"])
    mean, std = _mean_std([r["score"] for r in found])
    flops = [r["flops_cum"] for r in found if r.get("flops_cum") is not None]
    return Cell(mean, std, len(found), (sum(flops) / len(flops)) if flops else None, found[0]["metric"])


def random_cell(study: Study, out: Path, arm: str, task: str) -> Cell | None:
    """The random-init control that ``arm`` compares with: its own (an arm of another
    recipe) or the baseline's."""
    controls = study.random_control_arms()
    owner = arm if arm in controls else (study.baseline if study.baseline in controls else None)
    if owner is None:
        return None
    r = _load(study.runs(owner, out)[0][1], task, None)
    return None if r is None else Cell(r["score"], r["std"], r["seeds"], 0.0, r["metric"])


def _reference_flops(study: Study, out: Path, task: str) -> float | None:
    ref = arm_cell(study, out, study.baseline, task, study.middle_checkpoint)
    return ref.flops if ref else None


def study_table(study: Study, out: Path, task: str) -> tuple[list[str], dict[str, Any]]:
    """Markdown rows: arm × checkpoint, ``score ± std (FLOPs / baseline@middle)``."""
    ref_flops = _reference_flops(study, out, task)
    header = "| arm | " + " | ".join(f"step {s}" for s in study.checkpoints) + " |"
    rows = [header, "|" + "---|" * (len(study.checkpoints) + 1)]
    summary: dict[str, Any] = {}
    metric = None
    for arm in study.arms:
        cells = []
        for step in study.checkpoints:
            c = arm_cell(study, out, arm, task, step)
            if c is None:
                cells.append("—")
                continue
            metric = c.metric
            norm = (c.flops / ref_flops) if (ref_flops and c.flops is not None) else None
            cells.append(f"{c.mean:.3f} ± {c.std:.3f} ({'n/a' if norm is None else f'{norm:.3f}'})")
            summary.setdefault(arm, []).append((step, c.mean, c.std, norm))
        rows.append(f"| {arm} | " + " | ".join(cells) + " |")
    for arm in study.random_control_arms():
        r = random_cell(study, out, arm, task)
        if r is not None:
            label = "random init" if arm == study.baseline else f"random init ({arm}'s architecture)"
            rows.append(f"| {label} | {r.mean:.3f} ± {r.std:.3f} (0) |" + " |" * (len(study.checkpoints) - 1))
    summary["metric"] = metric
    return rows, summary


def detection(study: Study, out: Path, task: str) -> list[str]:
    """Whether each arm's last checkpoint scores above its random-init control, in
    standard deviations: (mean − random mean) / the larger of the two stds."""
    lines = []
    last = study.checkpoints[-1]
    for arm in study.arms:
        c, r = arm_cell(study, out, arm, task, last), random_cell(study, out, arm, task)
        if c is None or r is None:
            continue
        sigma = max(c.std, r.std)
        z = (c.mean - r.mean) / sigma if sigma > 0 else float("inf") if c.mean > r.mean else 0.0
        verdict = "detected" if z >= 3 else "NOT detected"
        lines.append(f"- {arm} at step {last}: {c.mean:.3f} ± {c.std:.3f} ({c.n}) against random init "
                     f"{r.mean:.3f} ± {r.std:.3f} ({r.n}): {z:+.1f} σ, pre-training {verdict} (≥ 3 σ)")
    return lines


def reached_baseline(study: Study, summary: dict[str, Any]) -> list[str]:
    """For each arm: the first evaluated checkpoint whose mean score reaches the
    baseline's score at its last checkpoint, with its normalised FLOPs."""
    base = summary.get(study.baseline)
    if not base:
        return []
    target = base[-1][1]
    lines = []
    for arm in study.arms:
        if arm == study.baseline or arm not in summary:
            continue
        hit = next(((s, n) for s, score, _, n in summary[arm] if score >= target), None)
        base_norm = base[-1][3]
        if hit is None:
            lines.append(f"- {arm}: did not reach the baseline's final score {target:.3f} within {study.steps} steps")
        else:
            step, norm = hit
            lines.append(f"- {arm}: reached the baseline's final score {target:.3f} at step {step} "
                         f"(FLOPs {_fmt_norm(norm)} vs the baseline's {_fmt_norm(base_norm)} at step {study.steps})")
    return lines


def _fmt_norm(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


VAL_NOISY, VAL_CLEAN = "val/loss/span_corruption", "val/clean/loss/span_corruption"


def val_points(study: Study, out: Path, arm: str) -> list[tuple[int, float, float, float | None]]:
    """``(step, mean, std, flops)`` of the validation SC loss on clean inputs at each
    checkpoint, over the arm's runs: ``val/clean/loss`` while stage 1 runs (the
    discriminator's own input), ``val/loss`` otherwise. Empty for a model without SC."""
    from spactor.tools.plot import read_run

    by_step: dict[int, list[tuple[float, float | None]]] = {}
    for _, run_dir in study.runs(arm, out):
        try:
            records = read_run(run_dir).records
        except ValueError:
            continue
        for step in study.checkpoints:
            at = [r for r in records if r.get("step") == step]
            clean = next((r[VAL_CLEAN] for r in at if VAL_CLEAN in r), None)
            value = clean if clean is not None else next((r[VAL_NOISY] for r in at if VAL_NOISY in r), None)
            flops = next((r["flops_cum"] for r in at if r.get("flops_cum") is not None), None)
            if value is not None:
                by_step.setdefault(step, []).append((float(value), flops))
    points = []
    for step in sorted(by_step):
        mean, std = _mean_std([v for v, _ in by_step[step]])
        flops = [f for _, f in by_step[step] if f is not None]
        points.append((step, mean, std, (sum(flops) / len(flops)) if flops else None))
    return points


def val_table(study: Study, out: Path) -> list[str]:
    ref = next((f for s, _, _, f in val_points(study, out, study.baseline) if s == study.middle_checkpoint), None)
    rows = ["| arm | " + " | ".join(f"step {s}" for s in study.checkpoints) + " |",
            "|" + "---|" * (len(study.checkpoints) + 1)]
    for arm in study.arms:
        found = {s: (m, sd, f) for s, m, sd, f in val_points(study, out, arm)}
        if not found:
            rows.append(f"| {arm} | " + " | ".join("—" for _ in study.checkpoints) + " |")
            continue
        cells = []
        for step in study.checkpoints:
            if step not in found:
                cells.append("—")
                continue
            m, sd, f = found[step]
            norm = f"{f / ref:.3f}" if (ref and f is not None) else "n/a"
            cells.append(f"{m:.4f} ± {sd:.4f} ({norm})")
        rows.append(f"| {arm} | " + " | ".join(cells) + " |")
    return rows


def write_report(study: Study, out: Path, timings: dict[str, float], cpu_times: dict[str, float] | None = None,
                 ) -> Path:
    def describe(arm: str) -> str:
        recipe = f"recipe `{study.arm_recipes[arm]}` " if arm in study.arm_recipes else ""
        return f"**{arm}** {recipe}`{' '.join(study.arms[arm]) or '(recipe as is)'}`"

    over = (f"{study.pretrain_seeds} pre-training seeds per arm (cells: mean ± sample std over them)"
            if study.pretrain_seeds > 1 else f"{study.seeds} fine-tuning seeds (mean ± sample std)")
    lines = [f"# Study {study.name}", "",
             f"Recipe `{study.recipe}` with `{' '.join(study.overrides)}`; {study.steps} steps per arm; "
             f"{over}; fine-tuning budget `{json.dumps(study.finetune)}`.", "",
             "Arms: " + "; ".join(describe(a) for a in study.arms), ""]
    for task in study.tasks:
        rows, summary = study_table(study, out, task)
        lines += [f"## {task} ({summary.get('metric') or 'score'})", "",
                  f"Cells: score ± std (pre-training FLOPs / {study.baseline}'s at step {study.middle_checkpoint}).",
                  "", *rows, "", *detection(study, out, task), "", *reached_baseline(study, summary), ""]
    lines += ["## Validation span-corruption loss (clean inputs) at each checkpoint", "",
              f"Cells: loss ± std (pre-training FLOPs / {study.baseline}'s at step {study.middle_checkpoint}); "
              "stage-1 arms use val/clean/loss (the validation input without the generator's replacements).", "",
              *val_table(study, out), ""]
    if timings:
        total = sum(timings.values())
        cpu = cpu_times or {}
        lines += ["## Wall time", "", f"{total / 60:.1f} min wall in all, {sum(cpu.values()) / 60:.1f} min CPU "
                  "(this process's timings, resumed parts added).", "", "| part | wall s | CPU s |", "|---|---|---|"]
        lines += [f"| {k} | {v:.0f} | {cpu.get(k, float('nan')):.0f} |" for k, v in sorted(timings.items())]
    report = out / "study.md"
    report.write_text("\n".join(lines) + "\n")
    try:
        draw_study(study, out)
    except ImportError as e:
        print(f"no study.png: {e}", file=sys.stderr)
    return report


def draw_study(study: Study, out: Path) -> Path:
    """study.png: each task's score against pre-training FLOPs per arm (mean ± std; the
    random-init controls dotted), and the clean validation SC loss against FLOPs."""
    from spactor.tools.plot import _matplotlib

    Figure, FigureCanvasAgg, Line2D, EngFormatter = _matplotlib()
    panels = len(study.tasks) + 1
    fig = Figure(figsize=(6 * panels, 4.8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    arms = list(study.arms)
    for ax, task in zip(axes, study.tasks):
        metric = None
        for i, arm in enumerate(arms):
            cells = [(arm_cell(study, out, arm, task, s)) for s in study.checkpoints]
            points = [c for c in cells if c is not None and c.flops is not None]
            if points:
                metric = points[0].metric
                ax.errorbar([c.flops for c in points], [c.mean for c in points], yerr=[c.std for c in points],
                            color=f"C{i % 10}", marker="o", capsize=3, label=f"{arm} (n={points[0].n})")
            if arm in study.random_control_arms():
                r = random_cell(study, out, arm, task)
                if r is not None:
                    ax.axhline(r.mean, color=f"C{i % 10}", linestyle=":", label=f"random init ({arm}'s model)")
        ax.xaxis.set_major_formatter(EngFormatter(unit="FLOP"))
        ax.set_xlabel("pre-training FLOPs")
        ax.set_ylabel(f"{task} {metric or 'score'}")
        ax.set_title(f"{task}: score vs pre-training compute")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    ax = axes[-1]
    for i, arm in enumerate(arms):
        points = [p for p in val_points(study, out, arm) if p[3] is not None]
        if points:
            ax.errorbar([p[3] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                        color=f"C{i % 10}", marker=".", capsize=3, label=arm)
    ax.xaxis.set_major_formatter(EngFormatter(unit="FLOP"))
    ax.set_xlabel("pre-training FLOPs")
    ax.set_ylabel("validation SC loss (clean inputs)")
    ax.set_title("validation SC loss vs pre-training compute")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="x-small")
    path = out / "study.png"
    fig.savefig(path, format="png")
    return path
