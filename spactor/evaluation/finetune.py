"""Downstream evaluation of a run's checkpoints: ``spactor evaluate``.

For one checkpoint (``--step N``, the newest by default, or ``--all`` kept ones) and one
task (``spactor.tasks``): build the run's discriminator from its ``config.yaml``, load
*only the model's weights* from the checkpoint (``torch.distributed.checkpoint``; the
generator, heads and optimizer state are not read), fine-tune a copy on the task's
train split with a fixed budget (:class:`FinetuneConfig`), score the test split, and
repeat for ``seeds`` seeds (seed k changes the batch order, any new head's init and
dropout). The result goes to ``RUN_DIR/eval/<task>/step_<N>.json`` (a task read from
the user's files: ``eval/<name>-<digest>/``, :mod:`spactor.tasks.jsonl`)::

    {"score": mean over seeds, "std": sample std over seeds (0 for one seed),
     "metric": ..., "seeds": K, "step": N, "flops_cum": pre-training FLOPs up to N
     (null when the run did not count FLOPs), "finetune": {the budget}, "scores": [...],
     "task": ..., "init": "checkpoint" | "random",
     "files": [{"split", "path", "sha256"} of each data file; [] for a built-in task]}

``--init random`` fine-tunes the same architecture from random initialisation (seed k
also seeds the init) with the same budget, written to ``eval/<task>/random.json``
(``step`` null, ``flops_cum`` 0): the control every comparison needs.

How a model is fine-tuned: by the first of its architecture's fine-tuning adapters
(``ArchitectureSpec.finetune``) that can do the task's kind. ``text_to_text`` (T5) does
every task: the target (a classification task's label, as text) is decoded with teacher
forcing and the test split is predicted by greedy decoding for a static
``max_target_length`` tokens (cut at the first EOS). ``classification`` (the encoder)
puts a linear head on the mean-pooled encoder output; it cannot do generation tasks.
``causal_text`` (decoder-only models) trains on the input followed by the target as one
sequence through ``causal`` (bidirectional over the input when the model offers
``prefix_lm``), the loss on the target tokens only, and predicts by greedy continuation.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spactor.architectures.base import (
    CAUSAL_TEXT,
    CLASSIFICATION,
    PREFIX_LM,
    TEXT_TO_TEXT,
    ArchitectureSpec,
    capabilities_of,
    spec_of,
)
from spactor.data.tokenizer import Tokenizer
from spactor.train.device import autocast, autocast_dtype, resolve_device
from spactor.train.metrics import Progress
from spactor.tasks import Task, build_task
from spactor.evaluation.runs import (  # noqa: F401  (EVAL_DIR, read_results: part of this module's API)
    EVAL_DIR,
    EvalResult,
    EvaluationError,
    LoadedRun,
    build_model,
    checkpoint_flops,
    load_model_weights,
    open_run,
    read_results,
    result_path,
    select_checkpoints,
)

@dataclass
class FinetuneConfig:
    """The fixed fine-tuning budget: the same for every checkpoint and arm of a study."""

    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3  # AdamW, constant after a linear warm-up
    warmup_steps: int = 20
    weight_decay: float = 0.0
    clip_grad_norm: float = 1.0
    max_input_length: int = 128  # tokens, EOS included; longer inputs are truncated
    max_target_length: int = 16  # tokens of a target, EOS included; also the decoding length
    eval_batch_size: int = 64
    dropout: float | None = None  # None: the run's own; else every dropout layer's rate while fine-tuning
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # fp32 | bf16 | auto (bf16 on CUDA)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "max_input_length", "max_target_length", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise EvaluationError(f"finetune.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise EvaluationError(f"finetune.lr must be > 0, got {self.lr}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise EvaluationError(f"finetune.dropout must be in [0, 1), got {self.dropout}")


# --------------------------------------------------------------------------- fine-tuning


class Encoded:
    """A split's token ids, truncated (EOS kept), as Python lists until batched."""

    def __init__(self, task: Task, split: str, tokenizer: Tokenizer, cfg: FinetuneConfig) -> None:
        examples = getattr(task, split)
        eos = tokenizer.eos_id
        self.inputs = [tokenizer.encode(e.input)[: cfg.max_input_length - 1] + [eos] for e in examples]
        self.targets = [tokenizer.encode(e.target)[: cfg.max_target_length - 1] + [eos] for e in examples]
        self.labels = [e.target for e in examples]


def pad_rows(rows: list[list[int]], pad: int, device: torch.device, length: int | None = None) -> torch.Tensor:
    width = length or max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r[:width], dtype=torch.long)
    return out.to(device)


# The task kinds each fine-tuning adapter can do (None: every kind).
ADAPTER_KINDS: dict[str, tuple[str, ...] | None] = {
    TEXT_TO_TEXT: None, CLASSIFICATION: ("classification",), CAUSAL_TEXT: None}


def choose_adapter(adapters: tuple[str, ...], task: Task) -> str:
    """The first of ``adapters`` (an architecture's, in its order of preference) that can
    do ``task``'s kind; one line naming what the adapters can do when none can."""
    for adapter in adapters:
        if adapter in ADAPTER_KINDS and (ADAPTER_KINDS[adapter] is None or task.kind in ADAPTER_KINDS[adapter]):
            return adapter
    kinds = sorted({k for a in adapters for k in (ADAPTER_KINDS.get(a) or ())})
    can = f"can only be fine-tuned on {' or '.join(kinds)} tasks" if kinds else "cannot be fine-tuned here"
    what = "text-to-text" if task.kind != "classification" else "classification"
    raise EvaluationError(f"task '{task.name}' is {what} ({task.kind}); a model whose fine-tuning adapters are "
                          f"{', '.join(adapters) or 'none'} {can}")


class ClassificationHead(nn.Module):
    """Linear head on the mean-pooled encoder output (the ``classification`` adapter)."""

    def __init__(self, hidden_size: int, num_labels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.proj(pooled)


class Finetuner:
    """Fine-tunes one copy of a model on a task and predicts its test split."""

    def __init__(self, model: nn.Module, task: Task, tokenizer: Tokenizer, cfg: FinetuneConfig,
                 device: torch.device, seed: int, spec: ArchitectureSpec | None = None) -> None:
        self.task, self.cfg, self.device, self.seed = task, cfg, device, seed
        self.pad, self.eos = tokenizer.pad_id, tokenizer.eos_id
        self.tokenizer = tokenizer
        spec = spec if spec is not None else spec_of(model)  # its fine-tuning adapters
        self.adapter = choose_adapter(spec.finetune, task)
        self.text_to_text = self.adapter == TEXT_TO_TEXT
        self.model = model.to(device)
        if cfg.dropout is not None:
            for module in model.modules():
                if isinstance(module, nn.Dropout):
                    module.p = cfg.dropout
        self.head = None
        self.causal = self.adapter == CAUSAL_TEXT
        self.prefix = PREFIX_LM in capabilities_of(model)  # the input attended bidirectionally
        if self.adapter == CLASSIFICATION:
            torch.manual_seed(seed)
            self.head = ClassificationHead(model.hidden_size, len(task.labels)).to(device)
            self.label_index = {label: i for i, label in enumerate(task.labels)}
        self.train_data = Encoded(task, "train", tokenizer, cfg)
        self.test_data = Encoded(task, "test", tokenizer, cfg)
        self.amp = autocast_dtype(cfg.precision, device, "finetune.precision", EvaluationError)

    def _autocast(self) -> Any:
        return autocast(self.amp, self.device)

    def parameters(self) -> list[nn.Parameter]:
        params = list(self.model.parameters())
        return params + (list(self.head.parameters()) if self.head is not None else [])

    def loss(self, rows: list[int]) -> torch.Tensor:
        data = self.train_data
        if self.causal:
            return self.causal_loss([data.inputs[i] for i in rows], [data.targets[i] for i in rows])
        ids = pad_rows([data.inputs[i] for i in rows], self.pad, self.device)
        mask = ids != self.pad
        hidden = self.model.encode(ids, attention_mask=mask)
        if self.head is not None:
            labels = torch.tensor([self.label_index[data.labels[i]] for i in rows], device=self.device)
            return F.cross_entropy(self.head(hidden, mask).float(), labels)
        target = pad_rows([data.targets[i] for i in rows], self.pad, self.device)
        decoder_input = torch.cat([torch.full_like(target[:, :1], self.pad), target[:, :-1]], dim=1)
        logits = self.model.lm_logits(self.model.decode(decoder_input, hidden, mask))
        return F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=self.pad)

    def train(self, progress: Progress | None = None, done: int = 0) -> list[float]:
        cfg = self.cfg
        gen = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)  # dropout
        optimizer = torch.optim.AdamW(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        n = len(self.train_data.inputs)
        order: list[int] = []
        losses = []
        self.model.train()
        for step in range(cfg.steps):
            while len(order) < cfg.batch_size:  # epochs of a fresh permutation each
                order += torch.randperm(n, generator=gen).tolist()
            rows, order = order[: cfg.batch_size], order[cfg.batch_size:]
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
            with self._autocast():
                loss = self.loss(rows)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.parameters(), cfg.clip_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            if progress is not None:
                progress.update(done + step + 1, {"seed": self.seed, "loss": losses[-1]})
        return losses

    @torch.no_grad()
    def predict(self) -> list[str]:
        self.model.eval()
        data, out = self.test_data, []
        for start in range(0, len(data.inputs), self.cfg.eval_batch_size):
            rows = data.inputs[start: start + self.cfg.eval_batch_size]
            if self.causal:
                with self._autocast():
                    out.extend(self.continue_greedily(rows))
                continue
            ids = pad_rows(rows, self.pad, self.device)
            mask = ids != self.pad
            with self._autocast():
                hidden = self.model.encode(ids, attention_mask=mask)
                if self.head is not None:
                    choice = self.head(hidden, mask).argmax(-1).tolist()
                    out.extend(self.task.labels[c] for c in choice)
                else:
                    out.extend(self.greedy(hidden, mask))
        return out

    def greedy(self, hidden: torch.Tensor, mask: torch.Tensor) -> list[str]:
        """Greedy decoding for a static ``max_target_length`` steps (no early stop: the
        same shapes every call), then each row cut at its first EOS."""
        tokens = torch.full((hidden.shape[0], 1), self.pad, dtype=torch.long, device=hidden.device)
        for _ in range(self.cfg.max_target_length):
            logits = self.model.lm_logits(self.model.decode(tokens, hidden, mask)[:, -1])
            tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
        texts = []
        for row in tokens[:, 1:].tolist():
            if self.eos in row:
                row = row[: row.index(self.eos)]
            texts.append(self.tokenizer.decode(row).strip())
        return texts


    def _causal(self, ids: torch.Tensor, input_lengths: torch.Tensor) -> torch.Tensor:
        # Right padding only follows a row's real tokens, which causal attention never
        # lets them see: no key-padding mask, so SDPA keeps its fused kernels.
        return self.model.causal(ids, None, input_lengths if self.prefix else None)

    def causal_loss(self, inputs: list[list[int]], targets: list[list[int]]) -> torch.Tensor:
        """``causal_text``: next-token cross-entropy over input + target, counted on the
        target tokens (each predicted from the input and the target before it)."""
        seq = pad_rows([a + b for a, b in zip(inputs, targets)], self.pad, self.device)
        start = torch.tensor([len(a) for a in inputs], device=self.device)
        end = start + torch.tensor([len(b) for b in targets], device=self.device)
        positions = torch.arange(1, seq.shape[1], device=self.device)  # of the predicted tokens
        labels = seq[:, 1:].masked_fill((positions < start[:, None]) | (positions >= end[:, None]), -100)
        logits = self.model.lm_logits(self._causal(seq[:, :-1], start))
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)

    def continue_greedily(self, inputs: list[list[int]]) -> list[str]:
        """``causal_text``: ``max_target_length`` greedy tokens after each input, on one
        static buffer (each step writes row i's next token at its own position), then
        each row cut at its first EOS."""
        steps = self.cfg.max_target_length
        start = torch.tensor([len(r) for r in inputs], device=self.device)
        buf = pad_rows(inputs, self.pad, self.device, length=max(len(r) for r in inputs) + steps)
        rows = torch.arange(len(inputs), device=self.device)
        for t in range(steps):
            hidden = self._causal(buf, start)[rows, start + t - 1]  # the last written token's state
            buf[rows, start + t] = self.model.lm_logits(hidden).argmax(-1)
        texts = []
        for i, row in enumerate(buf.tolist()):
            row = row[len(inputs[i]): len(inputs[i]) + steps]
            if self.eos in row:
                row = row[: row.index(self.eos)]
            texts.append(self.tokenizer.decode(row).strip())
        return texts


# --------------------------------------------------------------------------- evaluate


def evaluate_weights(base: nn.Module | None, run: LoadedRun, task: Task, cfg: FinetuneConfig, seeds: int,
                     label: str, show_progress: bool = True) -> list[float]:
    """Scores of ``seeds`` fine-tunings. ``base``: the pre-trained model (copied per
    seed); None: a fresh random init per seed."""
    device = resolve_device(cfg.device, "finetune.device", EvaluationError)
    progress = Progress(seeds * cfg.steps, enabled=show_progress)
    scores = []
    for seed in range(seeds):
        if base is None:
            torch.manual_seed(seed)
            model = build_model(run)
        else:
            model = copy.deepcopy(base)
        tuner = Finetuner(model, task, run.tokenizer, cfg, device, seed)
        if show_progress:
            print(f"{label}: fine-tuning seed {seed + 1}/{seeds}", file=sys.stderr, flush=True)
        tuner.train(progress, done=seed * cfg.steps)
        scores.append(task.score(tuner.predict()))
        del tuner, model
    return scores


def summarise(scores: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(scores)
    std = statistics.stdev(scores) if len(scores) > 1 else 0.0
    return mean, std


def evaluate_run(run_dir: str | Path, task_name: str, step: int | None = None, every: bool = False,
                 seeds: int = 1, init: str = "checkpoint", finetune: FinetuneConfig | None = None,
                 task_options: dict[str, Any] | None = None, show_progress: bool = True) -> list[tuple[Path, EvalResult]]:
    """Evaluate checkpoints of a run on a task; writes and returns each result."""
    if seeds < 1:
        raise EvaluationError(f"--seeds must be >= 1, got {seeds}")
    if init not in ("checkpoint", "random"):
        raise EvaluationError(f"--init must be checkpoint or random, got {init!r}")
    run = open_run(run_dir)
    task = build_task(task_name, task_options)
    if not isinstance(task, Task):  # a zero-shot task (minimal pairs): nothing to fine-tune
        raise EvaluationError(f"task {task_name} is scored zero-shot, not fine-tuned: "
                              f"spactor evaluate RUN --task {task_name}")
    cfg = finetune or FinetuneConfig()
    written = []
    if init == "random":
        targets: list[tuple[int | None, Path | None]] = [(None, None)]
    else:
        targets = list(select_checkpoints(run, step, every))  # type: ignore[arg-type]
    for ckpt_step, checkpoint in targets:
        base = None
        if checkpoint is not None:
            base = build_model(run)
            load_model_weights(base, checkpoint)
        label = f"{task.name} @ {'random init' if ckpt_step is None else f'step {ckpt_step}'}"
        scores = evaluate_weights(base, run, task, cfg, seeds, label, show_progress)
        mean, std = summarise(scores)
        flops = 0.0 if ckpt_step is None else checkpoint_flops(run, ckpt_step, checkpoint)
        result = EvalResult(score=mean, std=std, metric=task.metric, seeds=seeds, step=ckpt_step,
                            flops_cum=flops, finetune=asdict(cfg), scores=scores, task=task.name, init=init,
                            files=task.files)
        path = result_path(run.run_dir, task.results, ckpt_step)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result.to_json(), indent=1) + "\n")
        tmp.replace(path)
        written.append((path, result))
    return written


def parse_finetune_overrides(items: list[str]) -> tuple[FinetuneConfig, dict[str, Any]]:
    """``finetune.steps=100`` sets the budget; any other ``key=value`` is a task option
    (``train=data/train.jsonl``)."""
    from omegaconf import OmegaConf

    from spactor.config import ConfigError, check_keys, typed

    budget: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise EvaluationError(f"expected key=value, got '{item}'")
    parsed = OmegaConf.to_container(OmegaConf.from_dotlist(items)) or {}
    for key, value in parsed.items():  # type: ignore[union-attr]
        if key == "finetune":
            budget = value if isinstance(value, dict) else {}
        else:
            options[key] = value
    try:
        check_keys(budget, FinetuneConfig, "finetune")
        cfg = typed(FinetuneConfig, budget, "finetune")
    except ConfigError as e:
        raise EvaluationError(str(e)) from None
    if not math.isfinite(cfg.lr):
        raise EvaluationError("finetune.lr must be finite")
    return cfg, options
