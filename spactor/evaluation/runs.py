"""A run as evaluation reads it: its config, tokenizer and checkpoints, the
discriminator built from its config with a checkpoint's weights, and where results go
(``RUN/eval/<task>/step_<N>.json``, ``random.json`` for the random-init control). The
fine-tuned tasks (:mod:`spactor.evaluation.finetune`) and the zero-shot ones
(:mod:`spactor.evaluation.zero_shot`) share it."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from spactor.architectures.dcp_read import read_dcp_locally
from spactor.checkpoint_layout import DISCRIMINATOR_KEY, MODEL_STATE, checkpoints_dir, dcp_dir, manifest_shared, step_of
from spactor.config import load_config
from spactor.data.tokenizer import Tokenizer
from spactor.registry import ARCHITECTURES
from spactor.train.checkpoint import Checkpointer
from spactor.train.metrics import read_metrics
from spactor.train.run_dir import RunDirError, load_run_tokenizer

EVAL_DIR = "eval"
RANDOM_RESULT = "random.json"


class EvaluationError(ValueError):
    """Bad input to ``spactor evaluate`` (no run, no such checkpoint, a task the model
    cannot do): one line, exit 2."""


@dataclass
class EvalResult:
    score: float
    std: float
    metric: str
    seeds: int
    step: int | None
    flops_cum: float | None
    finetune: dict[str, Any]
    scores: list[float]
    task: str
    init: str
    files: list[dict[str, str]]  # the task's data files: split, path, sha256 ([] for built-in tasks)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- the run


@dataclass
class LoadedRun:
    run_dir: Path
    resolved: Any
    tokenizer: Tokenizer
    checkpointer: Checkpointer


def open_run(run_dir: str | Path) -> LoadedRun:
    run = Path(run_dir)
    if not run.is_dir():
        raise EvaluationError(f"{run}: no such run directory")
    config = run / "config.yaml"
    if not config.is_file():
        raise EvaluationError(f"{run}: no config.yaml there (is it a spactor run directory?)")
    tokenizer_file = run / "spiece.model"
    if not tokenizer_file.is_file():
        raise EvaluationError(f"{run}: no spiece.model there (the run's tokenizer)")
    resolved = load_config(str(config), saved_run=True)
    try:
        tokenizer = load_run_tokenizer(run)
    except RunDirError as e:
        raise EvaluationError(str(e)) from None
    return LoadedRun(run, resolved, tokenizer, Checkpointer(checkpoints_dir(run)))


def checkpoint_steps(run: LoadedRun) -> dict[int, Path]:
    return {step_of(p): p for p in run.checkpointer.list()}  # type: ignore[misc]


def select_checkpoints(run: LoadedRun, step: int | None, every: bool) -> list[tuple[int, Path]]:
    available = checkpoint_steps(run)
    if not available:
        raise EvaluationError(f"{run.run_dir}: no checkpoints in {run.checkpointer.root}")
    if every:
        return sorted(available.items())
    if step is None:
        newest = max(available)
        return [(newest, available[newest])]
    if step not in available:
        raise EvaluationError(f"{run.run_dir}: no checkpoint at step {step}; available steps: "
                              f"{', '.join(map(str, sorted(available)))}")
    return [(step, available[step])]


def build_model(run: LoadedRun) -> nn.Module:
    """The run's discriminator from its config, randomly initialised (never from
    ``init_from``: the weights come from a checkpoint or stay random)."""
    plugin = run.resolved.model
    cfg = plugin.config
    if any(f.name == "init_from" for f in dataclasses.fields(cfg)):
        cfg = dataclasses.replace(cfg, init_from=None)
    return ARCHITECTURES.get(plugin.type).factory(cfg, run.tokenizer.vocab_size)


def load_model_weights(model: nn.Module, checkpoint: Path, prefix: str = DISCRIMINATOR_KEY) -> None:
    """Read only ``model``'s tensors (``prefix`` in the training state: ``model.`` the
    discriminator, ``objectives.<name>.`` an objective's modules) from a checkpoint
    into it; the checkpoint is verified first."""
    problem = Checkpointer(checkpoint.parent).verify(checkpoint)
    if problem is not None:
        raise EvaluationError(f"checkpoint {checkpoint} is unusable: {problem}")
    own = model.state_dict()
    state = {f"{MODEL_STATE}.{prefix}{k}": v.clone() for k, v in own.items()}
    read_dcp_locally(state, dcp_dir(checkpoint))  # rank 0 alone, in downstream evaluation
    model.load_state_dict({k: state[f"{MODEL_STATE}.{prefix}{k}"] for k in own}, strict=True)


def checkpoint_flops(run: LoadedRun, step: int, checkpoint: Path | None) -> float | None:
    """Cumulative pre-training FLOPs at ``step``: the checkpoint's manifest, else the
    metrics line of that step; None when the run did not count FLOPs."""
    if checkpoint is not None:
        try:
            shared = manifest_shared(checkpoint)
            value = shared.get("flops", {}).get("flops_cum")
            if value is not None:
                return float(value)
        except (OSError, ValueError, AttributeError):
            pass
    metrics = run.run_dir / "metrics.jsonl"
    if metrics.is_file():
        for record in read_metrics(metrics):
            if record.get("step") == step and record.get("flops_cum") is not None:
                return float(record["flops_cum"])
    return None


def result_path(run_dir: Path, task: str, step: int | None) -> Path:
    name = RANDOM_RESULT if step is None else f"step_{step}.json"
    return run_dir / EVAL_DIR / task / name


def read_results(run_dir: Path, task: str) -> list[dict[str, Any]]:
    """Every ``eval/<task>/step_<N>.json`` of a run, by step (the random-init control not included)."""
    folder = Path(run_dir) / EVAL_DIR / task
    results = []
    for path in sorted(folder.glob("step_*.json")) if folder.is_dir() else []:
        if re.fullmatch(r"step_\d+\.json", path.name):
            results.append(json.loads(path.read_text()))
    return sorted(results, key=lambda r: r["step"])
