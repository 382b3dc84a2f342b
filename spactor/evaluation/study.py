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
    random_control: true        # also score the architecture from random init
    pretrain_seeds: 1           # pre-training runs per arm (trainer.seed 0..N-1)
    arms:
      baseline: {schedules.two_stage.tau: 0}
      spactor_inf: {schedules.two_stage.tau: null}
      electra: {recipe: electra, overrides: {model.size: tiny}}   # an arm of another recipe

A task may be fine-tuned (``pydoc_module``) or scored zero-shot (``pydoc_pairs``: no
fine-tuning; the random-init control is ``max(seeds, pretrain_seeds)`` random inits). With ``pretrain_seeds``
above 1 every cell is the mean ± sample std over the arm's pre-training runs (each
fine-tuned with ``seeds`` seeds and averaged); with 1 it is over the fine-tuning seeds.

Everything goes under the study directory (``--out``, default ``studies/<name>``):
``<arm>/`` run directories (``<arm>/seed<k>/`` with several pre-training seeds), ``study.md`` and ``study.png``, ``timings.json`` (wall
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
              "random_control", "pretrain_seeds", "hardware", "arms")
HARDWARE_KEYS = ("gpu", "gpus", "mfu")  # hardware: {gpu: H100-SXM, gpus: 1, mfu: 0.25}
ARM_KEYS = ("recipe", "overrides")  # an arm given as {recipe: ..., overrides: ...}


class StudyError(ValueError):
    """A bad study file: one line naming the key, exit 2."""


@dataclass
class Hardware:
    """The machine a study is sized for: ``gpus`` of ``gpu`` (a name in
    ``spactor.train.flops.mfu.PEAK_TFLOPS``) at a stated model-FLOPs utilisation."""

    gpu: str
    gpus: int = 1
    mfu: float = 0.3

    @property
    def peak_flops(self) -> float:
        from spactor.train.flops.mfu import PEAK_TFLOPS

        return PEAK_TFLOPS[self.gpu] * 1e12 * self.gpus

    def seconds(self, flops: float) -> float:
        return flops / (self.peak_flops * self.mfu)


def _hardware(raw: Any, file: Path) -> Hardware | None:
    from spactor.train.flops.mfu import PEAK_TFLOPS

    if raw is None:
        return None
    if not isinstance(raw, dict) or "gpu" not in raw:
        raise StudyError(f"{file}: hardware must be a mapping with gpu (and gpus, mfu), got {raw!r}")
    unknown = sorted(set(raw) - set(HARDWARE_KEYS))
    if unknown:
        raise StudyError(f"{file}: hardware: unknown key '{unknown[0]}'; valid keys: {', '.join(HARDWARE_KEYS)}")
    if raw["gpu"] not in PEAK_TFLOPS:
        raise StudyError(f"{file}: hardware.gpu '{raw['gpu']}' is not in the peak table; valid: "
                         f"{', '.join(PEAK_TFLOPS)}")
    gpus, mfu = raw.get("gpus", 1), raw.get("mfu", 0.3)
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1:
        raise StudyError(f"{file}: hardware.gpus must be a positive integer, got {gpus!r}")
    if not isinstance(mfu, (int, float)) or isinstance(mfu, bool) or not 0 < mfu <= 1:
        raise StudyError(f"{file}: hardware.mfu must be in (0, 1], got {mfu!r}")
    return Hardware(str(raw["gpu"]), gpus, float(mfu))


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
    arm_recipes: dict[str, str] = field(default_factory=dict)  # arms that train another recipe
    pretrain_seeds: int = 1
    hardware: Hardware | None = None  # what --print-commands estimates each arm's wall time for

    def recipe_of(self, arm: str) -> str:
        return self.arm_recipes.get(arm, self.recipe)

    def runs(self, arm: str, out: Path) -> list[tuple[int | None, Path]]:
        """``(pre-training seed, run directory)`` of each of ``arm``'s runs: the arm's
        directory itself with one seed (the recipe's), ``<arm>/seed<k>`` with several."""
        if self.pretrain_seeds == 1:
            return [(None, out / arm)]
        return [(k, out / arm / f"seed{k}") for k in range(self.pretrain_seeds)]

    def random_control_arms(self) -> list[str]:
        """The arms whose first run also scores its architecture from random init: the
        baseline, and each arm of another recipe (another model, another control)."""
        if not self.random_control:
            return []
        return [a for a in self.arms if a == self.baseline or self.recipe_of(a) != self.recipe_of(self.baseline)]

    def arm_overrides(self, arm: str, run_dir: Path, seed: int | None = None) -> list[str]:
        every = _gcd(self.checkpoints)
        shared = [] if arm in self.arm_recipes else self.overrides  # another recipe brings its own
        return [
            *shared,
            *self.arms[arm],
            *([] if seed is None else [f"trainer.seed={seed}"]),
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
    arms, arm_recipes = {}, {}
    for name, value in arms_raw.items():
        if isinstance(value, dict) and "recipe" in value:  # an arm of another recipe
            unknown_arm = sorted(set(value) - set(ARM_KEYS))
            if unknown_arm:
                raise StudyError(f"{file}: arms.{name}: unknown key '{unknown_arm[0]}'; an arm of its own "
                                 f"recipe takes {', '.join(ARM_KEYS)}")
            arm_recipes[str(name)] = str(value["recipe"])
            value = value.get("overrides")
        arms[str(name)] = _as_dotlist(value, f"arms.{name}")
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
    pretrain_seeds = raw.get("pretrain_seeds", 1)
    if not isinstance(pretrain_seeds, int) or isinstance(pretrain_seeds, bool) or pretrain_seeds < 1:
        raise StudyError(f"{file}: pretrain_seeds must be a positive integer, got {pretrain_seeds!r}")
    finetune = raw.get("finetune") or {}
    if not isinstance(finetune, dict):
        raise StudyError(f"{file}: finetune must be a mapping of FinetuneConfig fields")
    return Study(
        name=str(raw.get("name") or file.stem), recipe=str(raw["recipe"]), steps=steps,
        checkpoints=sorted(set(checkpoints)), arms=arms, overrides=_as_dotlist(raw.get("overrides"), "overrides"),
        baseline=baseline, tasks=[str(t) for t in tasks], seeds=seeds, finetune=finetune,
        random_control=bool(raw.get("random_control", True)), path=file, arm_recipes=arm_recipes,
        pretrain_seeds=pretrain_seeds, hardware=_hardware(raw.get("hardware"), file),
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
            seed, run_dir = study.runs(arm, out)[0]
            load_config(study.recipe_of(arm), study.arm_overrides(arm, run_dir, seed))
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


def train_arm(study: Study, arm: str, run_dir: Path, seed: int | None = None) -> float:
    from spactor.config import load_config
    from spactor.evaluation.downstream import downstream_scores
    from spactor.train.parallel import shutdown_distributed
    from spactor.train.loop import train

    recipe = study.recipe_of(arm)
    resolved = load_config(recipe, study.arm_overrides(arm, run_dir, seed))
    resolved.recipe = recipe
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


@dataclass
class Evaluation:
    """One evaluation a study runs: a task on a run's checkpoint (``step``) or, step
    None, on random inits (the control)."""

    arm: str
    run_dir: Path
    task: str
    step: int | None
    zero_shot: bool

    def seeds(self, study: Study) -> int:
        # A checkpoint scored zero-shot is deterministic: one score. The random-init
        # control draws as many inits as the arms have runs (pre-training seeds), at least
        # ``seeds``, so both sides of the comparison have a standard deviation of as many.
        if self.step is None:
            return max(study.seeds, study.pretrain_seeds)
        return 1 if self.zero_shot else study.seeds

    def budget(self, finetune: dict[str, Any]) -> dict[str, Any]:
        return {} if self.zero_shot else finetune

    def key(self, run_label: str) -> str:
        return f"eval/{run_label}/{self.task}/{'random' if self.step is None else self.step}"

    def command(self, study: Study) -> list[str]:
        args = ["spactor", "evaluate", str(self.run_dir), "--task", self.task]
        args += ["--init", "random"] if self.step is None else ["--step", str(self.step)]
        args += ["--seeds", str(self.seeds(study))]
        if not self.zero_shot:
            args += [f"finetune.{k}={_yaml_value(v)}" for k, v in study.finetune.items()]
        return args

    def run(self, study: Study, finetune: Any) -> None:
        from spactor.evaluation.finetune import evaluate_run
        from spactor.evaluation.zero_shot import evaluate_zero_shot_run

        init = "random" if self.step is None else "checkpoint"
        if self.zero_shot:
            evaluate_zero_shot_run(self.run_dir, self.task, step=self.step, seeds=self.seeds(study), init=init)
        else:
            evaluate_run(self.run_dir, self.task, step=self.step, seeds=self.seeds(study), init=init,
                         finetune=finetune)


def evaluations(study: Study, out: Path) -> list[Evaluation]:
    """Every evaluation of the study, in the order it runs them."""
    from spactor.evaluation.zero_shot import is_zero_shot

    todo = []
    for arm in study.arms:
        runs = study.runs(arm, out)
        for _, run_dir in runs:
            for task in study.tasks:
                todo += [Evaluation(arm, run_dir, task, step, is_zero_shot(task)) for step in study.checkpoints]
        if arm in study.random_control_arms():
            todo += [Evaluation(arm, runs[0][1], task, None, is_zero_shot(task)) for task in study.tasks]
    return todo


def _run_label(study: Study, out: Path, run_dir: Path) -> str:
    return str(run_dir.relative_to(out)) if run_dir.is_relative_to(out) else run_dir.name


def expected_seconds(study: Study, arm: str, out: Path) -> tuple[float, float]:
    """(pre-training FLOPs of one of ``arm``'s runs, its expected wall seconds on the
    study's hardware): the FLOPs counter's count of every stage (on the meta device, no
    data read beyond the tokenizer) at the stated MFU."""
    from spactor.config import load_config
    from spactor.data.tokenizer import t5_vocab
    from spactor.train.flops.counting import count_vocab, flops_report

    assert study.hardware is not None
    seed, run_dir = study.runs(arm, out)[0]
    resolved = load_config(study.recipe_of(arm), study.arm_overrides(arm, run_dir, seed))
    tokenizer = resolved.cfg.data.tokenizer
    # The cluster's tokenizer need not exist where the commands are printed: T5's 32,128 rows.
    vocab = count_vocab(resolved.cfg.data) if not tokenizer or Path(tokenizer).expanduser().is_file() \
        else t5_vocab(32000)
    flops = flops_report(resolved, vocab=vocab, device="meta").cumulative(study.steps)
    return flops, study.hardware.seconds(flops)


def cluster_commands(study: Study, out: Path, nproc_per_node: int) -> None:
    if study.hardware is not None:
        hw = study.hardware
        total = 0.0
        print(f"# expected pre-training wall time on {hw.gpus} x {hw.gpu} at {hw.mfu:.0%} MFU "
              f"(peak {hw.peak_flops / 1e12:.0f} TFLOP/s bf16; FLOPs from `spactor flops`):")
        for arm in study.arms:
            flops, seconds = expected_seconds(study, arm, out)
            runs = len(study.runs(arm, out))
            total += seconds * runs
            print(f"#   {arm}: {flops:.3g} FLOPs a run, {seconds / 60:.1f} min a run x {runs}")
        print(f"#   all arms: {total / 60:.1f} min (evaluations not included)")
    for arm in study.arms:
        for seed, run_dir in study.runs(arm, out):
            args = [study.recipe_of(arm), *study.arm_overrides(arm, run_dir, seed)]
            print(shlex.join(["torchrun", "--nproc_per_node", str(nproc_per_node), "-m", "spactor", "train", *args]))
    for evaluation in evaluations(study, out):
        print(shlex.join(evaluation.command(study)))
    source = str(study.path) if study.path is not None else study.name
    print(shlex.join(["spactor", "study", source, "--out", str(out)]) + "   # then: the report (skips finished work)")


def run_study(path: Path, out_dir: str | None = None, print_commands: bool = False, nproc_per_node: int = 8) -> int:
    study = load_study(path)
    out = Path(out_dir) if out_dir else Path("studies") / study.name
    validate_study(study, out)
    if print_commands:
        cluster_commands(study, out, nproc_per_node)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    timings_file = out / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    cpu_file = out / "cpu_seconds.json"  # CPU time of the same parts (machine-load independent)
    cpu_times = json.loads(cpu_file.read_text()) if cpu_file.is_file() else {}

    def record(key: str, seconds: float, cpu: float) -> None:
        timings[key] = timings.get(key, 0.0) + seconds
        cpu_times[key] = cpu_times.get(key, 0.0) + cpu
        cpu_file.write_text(json.dumps(cpu_times, indent=1))
        timings_file.write_text(json.dumps(timings, indent=1))

    finetune = _finetune_config(study)
    budget = dataclasses.asdict(finetune)
    for arm in study.arms:
        for seed, run_dir in study.runs(arm, out):
            label = _run_label(study, out, run_dir)
            if arm_finished(run_dir, study.steps):
                print(f"[study {study.name}] {label}: finished, not trained again", file=sys.stderr, flush=True)
                continue
            print(f"[study {study.name}] {label}: pre-training {study.steps} steps -> {run_dir}",
                  file=sys.stderr, flush=True)
            cpu = _cpu_seconds()
            seconds = train_arm(study, arm, run_dir) if seed is None else train_arm(study, arm, run_dir, seed)
            record(f"train/{label}", seconds, _cpu_seconds() - cpu)
    for evaluation in evaluations(study, out):
        if eval_done(evaluation.run_dir, evaluation.task, evaluation.step, evaluation.seeds(study),
                     evaluation.budget(budget)):
            continue
        start, cpu = time.monotonic(), _cpu_seconds()
        evaluation.run(study, finetune)
        record(evaluation.key(_run_label(study, out, evaluation.run_dir)), time.monotonic() - start,
               _cpu_seconds() - cpu)
    report = write_report(study, out, timings, cpu_times)
    print(f"wrote {report} and {out / 'study.png'}")
    return 0


# --------------------------------------------------------------------------- the report


def _fmt_flops(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


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
