"""Zero-shot evaluation: score a checkpoint (or a random init, the control) on minimal
pairs without fine-tuning, and score a user's own lines (``spactor score``)."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from spactor.evaluation.runs import (
    EvalResult,
    EvaluationError,
    LoadedRun,
    build_model,
    checkpoint_flops,
    load_model_weights,
    open_run,
    result_path,
    select_checkpoints,
)
from spactor.checkpoint_layout import OBJECTIVES_KEY
from spactor.registry import TASKS, factory_class
from spactor.train.device import resolve_device
from spactor.tasks import build_task
from spactor.evaluation.likelihood import (
    DISCRIMINATOR,
    MLM_PLL,
    TokenScorer,
    likelihood_family,
    text_log_likelihoods,
    word_spans,
)
from spactor.tasks.minimal_pairs import MinimalPairsTask, score_pairs


def whole_words(tokenizer: Any, texts: list[list[int]]) -> list[list[tuple[int, int]]]:
    """Each text's whole-word spans (a piece starting with SentencePiece's ``▁`` opens a
    word): what the pseudo-log-likelihood families hide one at a time."""
    pieces: dict[int, bool] = {}

    def starts_word(token: int) -> bool:
        if token not in pieces:
            pieces[token] = tokenizer.id_to_token(token).startswith("\u2581")
        return pieces[token]

    return [word_spans(t, starts_word) for t in texts]


def discriminator_scorer(model: Any, run: LoadedRun, checkpoint: Path | None,
                         device: torch.device) -> TokenScorer | None:
    """For an encoder whose language-model head the run never trained (an ELECTRA
    discriminator): the run's objective that reads log P(original) from its states
    (``original_log_probs``, RTD's head), with the checkpoint's weights (random with
    the model's when ``checkpoint`` is None). None for every other model."""
    if likelihood_family(model) != MLM_PLL:
        return None
    from spactor.train.builders import build_objectives

    objectives = build_objectives(run.resolved, run.tokenizer.vocab(), model)
    for name, objective in objectives.items():
        if callable(getattr(objective, "original_log_probs", None)):
            if checkpoint is not None:
                load_model_weights(objective, checkpoint, prefix=f"{OBJECTIVES_KEY}{name}.")
            objective.to(device).eval()
            return objective.original_log_probs
    return None


def score_minimal_pairs(model: Any, run: LoadedRun, task: MinimalPairsTask, device: torch.device,
                        batch_rows: int = 64, token_scorer: TokenScorer | None = None,
                        ) -> tuple[float, dict[str, float]]:
    """(accuracy, accuracy per UID) of ``model`` on ``task``."""
    vocab = run.tokenizer.vocab()
    good = [run.tokenizer.encode(p.good) for p in task.pairs]
    bad = [run.tokenizer.encode(p.bad) for p in task.pairs]
    scores = text_log_likelihoods(model.to(device), vocab, good + bad, batch_rows=batch_rows, device=device,
                                  spans=whole_words(run.tokenizer, good + bad), token_scorer=token_scorer)
    return score_pairs(task.pairs, scores[: len(good)], scores[len(good):])


def zero_shot_result(run: LoadedRun, task: MinimalPairsTask, step: int | None, checkpoint: Path | None,
                     seeds: int, device: str = "auto") -> tuple[EvalResult, dict[str, Any]]:
    """The result of one checkpoint (``checkpoint``; None: ``seeds`` random inits) and the
    fields zero-shot adds to it (per-UID accuracy, the likelihood family, the files)."""
    dev = resolve_device(device, "finetune.device", EvaluationError)
    accuracies, per_uid_runs = [], []
    for seed in range(1 if checkpoint is not None else seeds):
        torch.manual_seed(seed)
        model = build_model(run)
        if checkpoint is not None:
            load_model_weights(model, checkpoint)
        token_scorer = discriminator_scorer(model, run, checkpoint, dev)
        accuracy, per_uid = score_minimal_pairs(model, run, task, dev, token_scorer=token_scorer)
        accuracies.append(accuracy)
        per_uid_runs.append(per_uid)
        family = DISCRIMINATOR if token_scorer is not None else likelihood_family(model)
        del model
    mean = statistics.fmean(accuracies)
    std = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    per_uid = {uid: statistics.fmean(r[uid] for r in per_uid_runs) for uid in per_uid_runs[0]}
    flops = 0.0 if checkpoint is None else checkpoint_flops(run, step, checkpoint)  # type: ignore[arg-type]
    result = EvalResult(score=mean, std=std, metric=task.metric, seeds=len(accuracies), step=step,
                        flops_cum=flops, finetune={}, scores=accuracies, task=task.name,
                        init="random" if checkpoint is None else "checkpoint", files=task.files)
    extra = {"per_uid": per_uid, "pairs": len(task.pairs), "likelihood": family}
    return result, extra


def is_zero_shot(task_name: str) -> bool:
    """Whether the registered task ``task_name`` is scored zero-shot (no fine-tuning)."""
    cls = factory_class(TASKS.get(task_name))
    return isinstance(cls, type) and issubclass(cls, MinimalPairsTask)


def evaluate_zero_shot_run(run_dir: str | Path, task_name: str, step: int | None = None, every: bool = False,
                           seeds: int = 1, init: str = "checkpoint", task_options: dict[str, Any] | None = None,
                           device: str = "auto") -> list[tuple[Path, EvalResult]]:
    """``spactor evaluate`` for a zero-shot task: each selected checkpoint (or, with
    ``init="random"``, ``seeds`` random inits: the control) scored as it is; each result
    written to ``RUN/eval/<task>/step_N.json`` (``random.json``) and returned."""
    if seeds < 1:
        raise EvaluationError(f"--seeds must be >= 1, got {seeds}")
    run = open_run(run_dir)
    task = build_task(task_name, task_options)
    targets: list[tuple[int | None, Path | None]] = (
        [(None, None)] if init == "random" else list(select_checkpoints(run, step, every)))  # type: ignore[arg-type]
    written = []
    for ckpt_step, checkpoint in targets:
        result, extra = zero_shot_result(run, task, ckpt_step, checkpoint, seeds, device)  # type: ignore[arg-type]
        path = result_path(run.run_dir, task.results, ckpt_step)
        write_json(path, {**result.to_json(), **extra})
        written.append((path, result))
    return written


def score_lines(model: Any, run: LoadedRun, lines: Iterable[str], device: str = "auto",
                batch_lines: int = 64) -> Iterator[dict[str, Any]]:
    """``{"text", "log_likelihood", "tokens"}`` for each non-empty line, in order."""
    dev = resolve_device(device, "finetune.device", EvaluationError)
    model = model.to(dev)
    vocab = run.tokenizer.vocab()
    batch: list[str] = []

    def flush() -> Iterator[dict[str, Any]]:
        ids = [run.tokenizer.encode(t) for t in batch]
        scores = text_log_likelihoods(model, vocab, ids, device=dev, spans=whole_words(run.tokenizer, ids))
        for text, i, s in zip(batch, ids, scores):
            yield {"text": text, "log_likelihood": s, "tokens": len(i)}
        batch.clear()

    for line in lines:
        text = line.rstrip("\n")
        if text.strip():
            batch.append(text)
            if len(batch) == batch_lines:
                yield from flush()
    if batch:
        yield from flush()


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
