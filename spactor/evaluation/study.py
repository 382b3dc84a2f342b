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
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spactor.evaluation.study_file import (  # noqa: F401  (load_study, StudyError: this module's API too)
    Study,
    StudyError,
    _finetune_config,
    _yaml_value,
    load_study,
    validate_study,
)


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
    from spactor.evaluation.study_report import write_report

    report = write_report(study, out, timings, cpu_times)
    print(f"wrote {report} and {out / 'study.png'}")
    return 0
