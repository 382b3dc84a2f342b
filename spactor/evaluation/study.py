"""``spactor study STUDY.yaml``: pre-train named arms of one recipe, evaluate their
checkpoints downstream, and write the comparison (the SpacTor paper's Table 2 and
Figures 2 and 4 at whatever scale the study file says).

A study file::

    name: spactor_tiny          # default: the file's stem
    recipe: spactor             # a recipe name or a YAML path
    overrides: [model.size=tiny, data.input_length=128]    # every arm (list or mapping)
    steps: 600                  # trainer.max_steps of every arm
    checkpoints: [200, 400, 600]  # steps evaluated downstream (all kept)
    baseline: baseline          # the arm FLOPs are normalised by (default: the first)
    tasks: [pydoc_module]
    seeds: 3
    finetune: {steps: 300}      # the fine-tuning budget (spactor.evaluation.finetune.FinetuneConfig)
    random_control: true        # also fine-tune the architecture from random init
    arms:
      baseline: {schedules.two_stage.tau: 0}
      spactor_inf: {schedules.two_stage.tau: null}

Everything goes under the study directory (``--out``, default ``studies/<name>``):
``<arm>/`` run directories, ``study.md`` and ``study.png``, ``timings.json`` (wall
seconds per part) and ``cpu_seconds.json`` (CPU seconds per part). The arms run one after
another, in this process. A study resumes where it stopped: an arm whose final
checkpoint exists is not trained again, one that was interrupted resumes from its
newest checkpoint (the trainer's own resume), and an evaluation whose
``eval/<task>/step_<N>.json`` exists with the same seeds and budget is not redone.
``--print-commands`` prints the torchrun/evaluate commands for a cluster instead.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STUDY_KEYS = ("name", "recipe", "overrides", "steps", "checkpoints", "baseline", "tasks", "seeds", "finetune",
              "random_control", "arms")


class StudyError(ValueError):
    """A bad study file: one line naming the key, exit 2."""


@dataclass
class Study:
    name: str
    recipe: str
    steps: int
    checkpoints: list[int]
    arms: dict[str, list[str]]  # arm -> its key=value overrides
    overrides: list[str] = field(default_factory=list)
    baseline: str = ""
    tasks: list[str] = field(default_factory=lambda: ["pydoc_module"])
    seeds: int = 3
    finetune: dict[str, Any] = field(default_factory=dict)
    random_control: bool = True
    path: Path | None = None

    def arm_overrides(self, arm: str, run_dir: Path) -> list[str]:
        every = _gcd(self.checkpoints)
        return [
            *self.overrides,
            *self.arms[arm],
            f"trainer.max_steps={self.steps}",
            f"trainer.checkpoint_every={every}",
            f"trainer.keep_checkpoints={self.steps // every + 1}",  # every evaluated step stays
            f"run.dir={run_dir}",
            "run.plot=false",
        ]

    @property
    def middle_checkpoint(self) -> int:
        return self.checkpoints[(len(self.checkpoints) - 1) // 2]


def _gcd(values: list[int]) -> int:
    import math

    out = 0
    for v in values:
        out = math.gcd(out, v)
    return out


def _as_dotlist(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        if not all(isinstance(v, str) and "=" in v for v in value):
            raise StudyError(f"{key}: a list of key=value strings, got {value!r}")
        return list(value)
    if isinstance(value, dict):
        return [f"{k}={_yaml_value(v)}" for k, v in value.items()]
    raise StudyError(f"{key}: a list of key=value or a mapping, got {value!r}")


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def shipped_study(name: str) -> Path | None:
    """A study shipped with spactor (``spactor_tiny``, ``spactor_base``)."""
    candidates = []
    try:
        candidates.append(Path(str(importlib.resources.files("spactor.studies") / f"{name}.yaml")))
    except ModuleNotFoundError:
        pass
    candidates.append(Path(__file__).resolve().parents[2] / "studies" / f"{name}.yaml")  # a source checkout
    return next((c for c in candidates if c.is_file()), None)


def load_study(path: Path) -> Study:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    file = path
    if not file.is_file():
        found = shipped_study(path.name) if path.suffix == "" and len(path.parts) == 1 else None
        if found is None:
            raise StudyError(f"{path}: no such study file")
        file = found
    try:
        raw = OmegaConf.to_container(OmegaConf.load(file), resolve=True)
    except OmegaConfBaseException as e:
        raise StudyError(f"{file}: cannot parse: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise StudyError(f"{file}: a study is a mapping (recipe, steps, arms, ...)")
    unknown = sorted(set(raw) - set(STUDY_KEYS))
    if unknown:
        raise StudyError(f"{file}: unknown key '{unknown[0]}'; valid keys: {', '.join(STUDY_KEYS)}")
    for key in ("recipe", "steps", "checkpoints", "arms"):
        if key not in raw:
            raise StudyError(f"{file}: '{key}' is required")
    steps = raw["steps"]
    if not isinstance(steps, int) or steps < 1:
        raise StudyError(f"{file}: steps must be a positive integer, got {steps!r}")
    checkpoints = raw["checkpoints"]
    if (not isinstance(checkpoints, list) or not checkpoints
            or not all(isinstance(c, int) and 0 < c <= steps for c in checkpoints)):
        raise StudyError(f"{file}: checkpoints must be a list of steps in 1..{steps}, got {checkpoints!r}")
    arms_raw = raw["arms"]
    if not isinstance(arms_raw, dict) or not arms_raw:
        raise StudyError(f"{file}: arms must map arm names to their overrides")
    arms = {str(name): _as_dotlist(value, f"arms.{name}") for name, value in arms_raw.items()}
    for name in arms:
        if not name.replace("_", "").replace("-", "").isalnum():
            raise StudyError(f"{file}: arm name '{name}' must be letters, digits, - and _ (a directory name)")
    baseline = str(raw.get("baseline") or next(iter(arms)))
    if baseline not in arms:
        raise StudyError(f"{file}: baseline '{baseline}' is not an arm; arms: {', '.join(arms)}")
    tasks = raw.get("tasks", ["pydoc_module"])
    if not isinstance(tasks, list) or not tasks:
        raise StudyError(f"{file}: tasks must be a non-empty list of task names")
    seeds = raw.get("seeds", 3)
    if not isinstance(seeds, int) or seeds < 1:
        raise StudyError(f"{file}: seeds must be a positive integer, got {seeds!r}")
    finetune = raw.get("finetune") or {}
    if not isinstance(finetune, dict):
        raise StudyError(f"{file}: finetune must be a mapping of FinetuneConfig fields")
    return Study(
        name=str(raw.get("name") or file.stem), recipe=str(raw["recipe"]), steps=steps,
        checkpoints=sorted(set(checkpoints)), arms=arms, overrides=_as_dotlist(raw.get("overrides"), "overrides"),
        baseline=baseline, tasks=[str(t) for t in tasks], seeds=seeds, finetune=finetune,
        random_control=bool(raw.get("random_control", True)), path=file,
    )


def validate_study(study: Study, out: Path) -> None:
    """Every arm's config and the tasks and budget, before anything runs."""
    from spactor.config import ConfigError, load_config
    from spactor.plugins import load_plugins
    from spactor.registry import TASKS
    from spactor.evaluation.finetune import EvaluationError

    load_plugins()
    for task in study.tasks:
        if task not in TASKS:
            raise StudyError(f"{study.path}: unknown task '{task}'; valid: {', '.join(TASKS.names())}")
    try:
        _finetune_config(study)
    except (ConfigError, EvaluationError) as e:
        raise StudyError(f"{study.path}: {e}") from None
    for arm in study.arms:
        try:
            load_config(study.recipe, study.arm_overrides(arm, out / arm))
        except ConfigError as e:
            raise StudyError(f"{study.path}: arm '{arm}': {e}") from None


def _finetune_config(study: Study) -> Any:
    from spactor.config import check_keys, typed
    from spactor.evaluation.finetune import FinetuneConfig

    check_keys(study.finetune, FinetuneConfig, "finetune")
    return typed(FinetuneConfig, study.finetune, "finetune")


# --------------------------------------------------------------------------- running


def arm_finished(run_dir: Path, steps: int) -> bool:
    from spactor.checkpoint_layout import checkpoints_dir, step_dir
    from spactor.train.checkpoint import Checkpointer

    final = step_dir(checkpoints_dir(run_dir), steps)
    return final.is_dir() and Checkpointer(final.parent).verify(final) is None


def eval_done(run_dir: Path, task: str, step: int | None, seeds: int, finetune: dict[str, Any]) -> bool:
    from spactor.evaluation.finetune import result_path

    path = result_path(run_dir, task, step)
    if not path.is_file():
        return False
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return result.get("seeds") == seeds and result.get("finetune") == finetune


def train_arm(study: Study, arm: str, run_dir: Path) -> float:
    from spactor.config import load_config
    from spactor.evaluation.finetune import downstream_scores
    from spactor.train.parallel import shutdown_distributed
    from spactor.train.loop import train

    resolved = load_config(study.recipe, study.arm_overrides(arm, run_dir))
    resolved.recipe = study.recipe
    start = time.monotonic()
    try:
        # Resumes from the arm's newest valid checkpoint, if any.
        result = train(resolved, downstream=downstream_scores)
    finally:
        shutdown_distributed()
    if result.preempted:  # SIGTERM/SIGINT: the trainer checkpointed; the study stops here too
        raise KeyboardInterrupt(f"arm {arm} stopped by {result.preempted} at step {result.steps}")
    return time.monotonic() - start


def _cpu_seconds() -> float:
    return time.process_time()  # every thread of this process: the wall time on idle cores, one thread each


def cluster_commands(study: Study, out: Path, nproc_per_node: int) -> None:
    finetune = [f"finetune.{k}={_yaml_value(v)}" for k, v in study.finetune.items()]
    for arm in study.arms:
        run_dir = out / arm
        args = [study.recipe, *study.arm_overrides(arm, run_dir)]
        print(shlex.join(["torchrun", "--nproc_per_node", str(nproc_per_node), "-m", "spactor", "train", *args]))
    for arm in study.arms:
        for task in study.tasks:
            for step in study.checkpoints:
                print(shlex.join(["spactor", "evaluate", str(out / arm), "--task", task, "--step", str(step),
                                  "--seeds", str(study.seeds), *finetune]))
    if study.random_control:
        for task in study.tasks:
            print(shlex.join(["spactor", "evaluate", str(out / study.baseline), "--task", task, "--init", "random",
                              "--seeds", str(study.seeds), *finetune]))
    source = str(study.path) if study.path is not None else study.name
    print(shlex.join(["spactor", "study", source, "--out", str(out)]) + "   # then: the report (skips finished work)")


def run_study(path: Path, out_dir: str | None = None, print_commands: bool = False, nproc_per_node: int = 8) -> int:
    study = load_study(path)
    out = Path(out_dir) if out_dir else Path("studies") / study.name
    validate_study(study, out)
    if print_commands:
        cluster_commands(study, out, nproc_per_node)
        return 0
    from spactor.evaluation.finetune import evaluate_run

    out.mkdir(parents=True, exist_ok=True)
    timings_file = out / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    cpu_file = out / "cpu_seconds.json"  # CPU time of the same parts (machine-load independent)
    cpu_times = json.loads(cpu_file.read_text()) if cpu_file.is_file() else {}
    finetune = _finetune_config(study)
    budget = dataclasses.asdict(finetune)
    for arm in study.arms:
        run_dir = out / arm
        if arm_finished(run_dir, study.steps):
            print(f"[study {study.name}] arm {arm}: finished, not trained again", file=sys.stderr, flush=True)
            continue
        print(f"[study {study.name}] arm {arm}: pre-training {study.steps} steps -> {run_dir}",
              file=sys.stderr, flush=True)
        cpu = _cpu_seconds()
        timings[f"train/{arm}"] = timings.get(f"train/{arm}", 0.0) + train_arm(study, arm, run_dir)
        cpu_times[f"train/{arm}"] = cpu_times.get(f"train/{arm}", 0.0) + _cpu_seconds() - cpu
        (out / "cpu_seconds.json").write_text(json.dumps(cpu_times, indent=1))
        timings_file.write_text(json.dumps(timings, indent=1))
    for arm in study.arms:
        run_dir = out / arm
        for task in study.tasks:
            todo = [s for s in study.checkpoints if not eval_done(run_dir, task, s, study.seeds, budget)]
            if study.random_control and arm == study.baseline and not eval_done(
                    run_dir, task, None, study.seeds, budget):
                todo.append(None)  # type: ignore[arg-type]
            for step in todo:
                start, cpu = time.monotonic(), _cpu_seconds()
                init = "random" if step is None else "checkpoint"
                evaluate_run(run_dir, task, step=step, seeds=study.seeds, init=init, finetune=finetune)
                key = f"eval/{arm}/{task}/{'random' if step is None else step}"
                timings[key] = time.monotonic() - start
                cpu_times[key] = _cpu_seconds() - cpu
                (out / "cpu_seconds.json").write_text(json.dumps(cpu_times, indent=1))
                timings_file.write_text(json.dumps(timings, indent=1))
    report = write_report(study, out, timings)
    print(f"wrote {report} and {out / 'study.png'}")
    return 0


# --------------------------------------------------------------------------- the report


def _fmt_flops(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def study_table(study: Study, out: Path, task: str) -> tuple[list[str], dict[str, Any]]:
    """Markdown rows: arm × checkpoint, ``score ± std (FLOPs / baseline@middle)``."""
    from spactor.evaluation.finetune import result_path

    def load(arm: str, step: int | None) -> dict[str, Any] | None:
        path = result_path(out / arm, task, step)
        return json.loads(path.read_text()) if path.is_file() else None

    ref = load(study.baseline, study.middle_checkpoint)
    ref_flops = ref.get("flops_cum") if ref else None
    header = "| arm | " + " | ".join(f"step {s}" for s in study.checkpoints) + " |"
    rows = [header, "|" + "---|" * (len(study.checkpoints) + 1)]
    summary: dict[str, Any] = {}
    metric = None
    for arm in study.arms:
        cells = []
        for step in study.checkpoints:
            r = load(arm, step)
            if r is None:
                cells.append("—")
                continue
            metric = r["metric"]
            norm = (r["flops_cum"] / ref_flops) if (ref_flops and r.get("flops_cum") is not None) else None
            cells.append(f"{r['score']:.3f} ± {r['std']:.3f} ({'n/a' if norm is None else f'{norm:.3f}'})")
            summary.setdefault(arm, []).append((step, r["score"], r["std"], norm))
        rows.append(f"| {arm} | " + " | ".join(cells) + " |")
    random = load(study.baseline, None)
    if random is not None:
        rows.append(f"| random init | {random['score']:.3f} ± {random['std']:.3f} (0) |"
                    + " |" * (len(study.checkpoints) - 1))
    summary["metric"] = metric
    return rows, summary


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


def write_report(study: Study, out: Path, timings: dict[str, float]) -> Path:
    lines = [f"# Study {study.name}", "",
             f"Recipe `{study.recipe}` with `{' '.join(study.overrides)}`; {study.steps} steps per arm; "
             f"{study.seeds} fine-tuning seeds (mean ± sample std); budget `{json.dumps(study.finetune)}`.", "",
             "Arms: " + "; ".join(f"**{a}** `{' '.join(o) or '(recipe as is)'}`" for a, o in study.arms.items()),
             ""]
    for task in study.tasks:
        rows, summary = study_table(study, out, task)
        lines += [f"## {task} ({summary.get('metric') or 'score'})", "",
                  f"Cells: score ± std (pre-training FLOPs / {study.baseline}'s at step {study.middle_checkpoint}).",
                  "", *rows, "", *reached_baseline(study, summary), ""]
    lines += ["## Validation span-corruption loss at the last step", "", "| arm | val/loss | val/clean/loss |",
              "|---|---|---|"]
    for arm in study.arms:
        noisy, clean = _last_val(out / arm)
        lines.append(f"| {arm} | {_fmt_loss(noisy)} | {_fmt_loss(clean)} |")
    lines += ["", "(val/clean/loss is logged only while stage 1 runs; after the switch the two are the same.)", ""]
    if timings:
        total = sum(timings.values())
        lines += ["## Wall time", "", f"{total / 60:.1f} min in all (this process's timings, resumed parts added).",
                  "", "| part | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.0f} |" for k, v in sorted(timings.items())]
    report = out / "study.md"
    report.write_text("\n".join(lines) + "\n")
    try:
        draw_study(study, out)
    except ImportError as e:
        print(f"no study.png: {e}", file=sys.stderr)
    return report


def _fmt_loss(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _val_series(run_dir: Path) -> dict[str, tuple[list[float], list[float]]]:
    from spactor.tools.plot import read_run, series

    try:
        records = read_run(run_dir).records
    except ValueError:
        return {}
    return {k: series(records, "step", k) for k in ("val/loss/span_corruption", "val/clean/loss/span_corruption")}


def _last_val(run_dir: Path) -> tuple[float | None, float | None]:
    found = _val_series(run_dir)
    noisy = found.get("val/loss/span_corruption", ([], []))[1]
    clean = found.get("val/clean/loss/span_corruption", ([], []))[1]
    return (noisy[-1] if noisy else None), (clean[-1] if clean else None)


def draw_study(study: Study, out: Path) -> Path:
    """study.png: score vs pre-training FLOPs per arm (one panel per task), and the
    noisy (solid) / clean (dashed) validation SC loss against steps."""
    from spactor.tools.plot import _matplotlib, draw_eval

    Figure, FigureCanvasAgg, Line2D, EngFormatter = _matplotlib()
    panels = len(study.tasks) + 1
    fig = Figure(figsize=(6 * panels, 4.8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    arms = list(study.arms)
    for ax, task in zip(axes, study.tasks):
        try:
            draw_eval(ax, [out / a for a in arms], arms, task, "flops")
            ax.xaxis.set_major_formatter(EngFormatter(unit="FLOP"))
        except ValueError:
            draw_eval(ax, [out / a for a in arms], arms, task, "steps")
        ax.set_title(f"{task}: score vs pre-training compute")
        ax.legend(fontsize="small")
    ax = axes[-1]
    for i, arm in enumerate(arms):
        found = _val_series(out / arm)
        for key, style in (("val/loss/span_corruption", "-"), ("val/clean/loss/span_corruption", "--")):
            xs, ys = found.get(key, ([], []))
            if xs:
                ax.plot(xs, ys, style, color=f"C{i % 10}", marker=".", label=f"{arm} {'clean' if 'clean' in key else 'noisy'}")
    ax.set_xlabel("step")
    ax.set_ylabel("validation SC loss")
    ax.set_title("validation SC loss: noisy X̂_c (solid) vs clean X_c (dashed)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="x-small")
    path = out / "study.png"
    fig.savefig(path, format="png")
    return path
