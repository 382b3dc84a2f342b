"""The training loop: one runner for every objective/schedule/architecture combination.

A step, in order: pull a global batch, run every objective's ``transform``
(corruption) on it, split it into micro-batches, count the items every loss covers
(so losses are normalised by the global count), then for each micro-batch run the
input modifiers (generator), encode once, run every loss objective, and backprop
``Σ weight · total / global_count``; clip, update, log.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from spactor.config import Resolved, as_dict
from spactor.objectives.base import Batch, LossTerm, Objective, ObjectiveContext, Vocab
from spactor.registry import ARCHITECTURES, LR_SCHEDULES, OBJECTIVES, OPTIMIZERS
from spactor.runners.checkpoint import Checkpointer
from spactor.runners.data import DataPipeline, build_data
from spactor.runners.metrics import MetricsWriter, Progress
from spactor.runners.optim import set_lr
from spactor.schedules.base import build as build_schedules


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    start_step: int
    losses: list[float] = field(default_factory=list)
    val: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0
    tokens_seen: int = 0


class TrainModules(nn.Module):
    """Everything trained, in one tree: the discriminator and the objectives' modules
    (generator, RTD head). One optimizer and one checkpoint cover it all."""

    def __init__(self, model: nn.Module, objectives: dict[str, Objective]) -> None:
        super().__init__()
        self.model = model
        self.objectives = nn.ModuleDict(objectives)


# --------------------------------------------------------------------------- set-up


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device=cuda but no CUDA device is available")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32":
        return None
    raise ValueError(f"runtime.precision must be fp32, bf16 or auto, got {precision!r}")


def default_run_dir(recipe: str | None) -> Path:
    name = Path(recipe).stem if recipe else "quickstart"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / f"{name}-{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = Path("runs") / f"{name}-{stamp}-{suffix}"
    return path


def build_model(resolved: Resolved, vocab: Vocab) -> nn.Module:
    entry = ARCHITECTURES.get(resolved.model.type)
    return entry.factory(resolved.model.config, vocab.size)


def build_objectives(resolved: Resolved, vocab: Vocab, model: nn.Module) -> dict[str, Objective]:
    objectives: dict[str, Objective] = {}
    for name, plugin in resolved.objectives.items():
        ctx = ObjectiveContext(name=name, vocab=vocab, input_length=resolved.cfg.data.input_length, model=model)
        objectives[name] = OBJECTIVES.get(plugin.type).factory(plugin.config, ctx)
    if not any(_has_loss(o) for o in objectives.values()):
        raise ValueError("no objective with a loss is configured (e.g. objectives.span_corruption)")
    return objectives


def raw_length_for(objectives: dict[str, Objective], input_length: int) -> int:
    """Fold the objectives' length needs, last transform first: each maps the length it
    must output to the length it needs as input (span corruption: 512 → 568)."""
    length = input_length
    for obj in reversed(list(objectives.values())):
        length = obj.raw_length(length)
    return length


def _has_loss(obj: Objective) -> bool:
    return type(obj).loss is not Objective.loss or type(obj).modify is not Objective.modify


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


# --------------------------------------------------------------------------- one step


def apply_transforms(objectives: dict[str, Objective], batch: Batch, rng: torch.Generator) -> Batch:
    # Until an objective rewrites it (span corruption), the encoder reads the raw chunk.
    batch = {"encoder_input": batch["original"], **batch}
    for obj in objectives.values():
        batch = obj.transform(batch, rng)
    return batch


def loss_counts(objectives: dict[str, Objective], batch: Batch) -> dict[str, torch.Tensor]:
    counts: dict[str, torch.Tensor] = {}
    for name, obj in objectives.items():
        count = obj.count(batch)
        if count is not None:
            counts[name] = count
        counts.update(obj.aux_counts(batch))
    return counts


def forward_losses(
    modules: TrainModules, batch: Batch, rng: torch.Generator
) -> tuple[dict[str, tuple[LossTerm, float]], dict[str, torch.Tensor]]:
    """Modifiers, one encode, every loss. Returns {loss name: (term, weight)} and metrics."""
    objectives: dict[str, Objective] = dict(modules.objectives.items())  # type: ignore[arg-type]
    model = modules.model
    losses: dict[str, tuple[LossTerm, float]] = {}
    metrics: dict[str, torch.Tensor] = {}

    def collect(name: str, obj: Objective, out: Any) -> None:
        if out.loss is not None:
            losses[name] = (out.loss, obj.weight if out.loss.weight is None else out.loss.weight)
        for key, term in out.aux_losses.items():
            losses[key] = (term, 1.0 if term.weight is None else term.weight)
        metrics.update(out.metrics)

    for name, obj in objectives.items():
        batch, out = obj.modify(batch, model, rng)
        collect(name, obj, out)
    pad = objectives[next(iter(objectives))].vocab.pad_id
    mask = batch["encoder_input"] != pad
    embeds = batch.get("encoder_embeds")
    ids = batch["encoder_input"] if embeds is None else None
    hidden = model.encode(ids, attention_mask=mask, inputs_embeds=embeds)
    for name, obj in objectives.items():
        collect(name, obj, obj.loss(batch, hidden, model))
    return losses, metrics


@dataclass
class StepOutput:
    loss: float
    losses: dict[str, float]
    metrics: dict[str, float]
    grad_norm: float


def train_step(
    modules: TrainModules,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    rng: torch.Generator,
    grad_accum_steps: int,
    clip_grad_norm: float | None,
    amp_dtype: torch.dtype | None,
) -> StepOutput:
    objectives: dict[str, Objective] = dict(modules.objectives.items())  # type: ignore[arg-type]
    # Corrupt the whole batch at once so that the inputs do not depend on how it is
    # split for gradient accumulation.
    prepared = split_batch(apply_transforms(objectives, batch, rng), grad_accum_steps)
    counts = sum_counts([loss_counts(objectives, mb) for mb in prepared])
    device = next(iter(counts.values())).device if counts else None

    total = torch.zeros((), device=device)
    per_loss: dict[str, torch.Tensor] = {}
    metric_sums: dict[str, torch.Tensor] = {}
    for mb in prepared:
        with _autocast(amp_dtype, mb["encoder_input"].device):
            losses, metrics = forward_losses(modules, mb, rng)
        loss = torch.zeros((), device=mb["encoder_input"].device)
        for name, (term, weight) in losses.items():
            normalised = term.total.float() / counts[name].clamp(min=1)
            per_loss[name] = per_loss.get(name, 0) + normalised.detach()
            if weight != 0:
                loss = loss + weight * normalised
        if loss.requires_grad:
            loss.backward()
        total += loss.detach()
        for key, value in metrics.items():
            metric_sums[key] = metric_sums.get(key, 0) + value.detach().float() / len(prepared)

    params = [p for p in modules.parameters() if p.grad is not None]
    if clip_grad_norm is not None and clip_grad_norm > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.zeros(())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepOutput(
        loss=float(total),
        losses={k: float(v) for k, v in per_loss.items()},
        metrics={k: float(v) for k, v in metric_sums.items()},
        grad_norm=float(grad_norm),
    )


def split_batch(batch: Batch, parts: int) -> list[Batch]:
    size = next(iter(batch.values())).shape[0]
    if size % parts:
        raise ValueError(f"batch of {size} does not split into {parts} gradient-accumulation steps")
    chunks = {k: v.chunk(parts) for k, v in batch.items()}
    return [{k: chunks[k][i] for k in batch} for i in range(parts)]


def sum_counts(per_micro: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for counts in per_micro:
        for k, v in counts.items():
            out[k] = out.get(k, 0) + v.float()
    return out


def _autocast(dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(
    modules: TrainModules, data: DataPipeline, num_batches: int, seed: int, amp_dtype: torch.dtype | None
) -> dict[str, float]:
    """Mean of every loss on the first ``num_batches`` validation batches, corrupted with
    a fixed seed so that successive evaluations see the same inputs."""
    objectives: dict[str, Objective] = dict(modules.objectives.items())  # type: ignore[arg-type]
    was_training = modules.training
    modules.eval()
    rng = seeded_generator(seed, data.device)
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for i, batch in enumerate(data.validation_batches()):
        if i >= num_batches:
            break
        batch = apply_transforms(objectives, batch, rng)
        with _autocast(amp_dtype, data.device):
            losses, _ = forward_losses(modules, batch, rng)
        for name, (term, _) in losses.items():
            sums[name] = sums.get(name, 0.0) + float(term.total)
            counts[name] = counts.get(name, 0.0) + float(term.count)
    modules.train(was_training)
    return {f"val/loss/{k}": sums[k] / max(counts[k], 1.0) for k in sums}


# --------------------------------------------------------------------------- stages


def knob_values(objectives: dict[str, Objective]) -> dict[str, float]:
    return {f"objectives.{name}.{k}": v for name, obj in objectives.items() for k, v in obj.knobs().items()}


def apply_knobs(objectives: dict[str, Objective], values: dict[str, float]) -> None:
    for path, value in values.items():
        _, name, knob = path.split(".", 2)
        if name in objectives:  # released stage-1 objectives no longer take values
            objectives[name].set_knob(knob, value)


def stage1_finished(objectives: dict[str, Objective]) -> bool:
    """Every stage-1 objective has been turned off by its knobs (e.g. λ1 and the MLM
    ratio annealed to 0): the hybrid stage is over even without a two_stage schedule."""
    stage1 = [o for o in objectives.values() if o.STAGE1_ONLY]
    return bool(stage1) and all(o.is_off() for o in stage1)


def release_stage1(
    modules: TrainModules, objectives: dict[str, Objective], optimizer: torch.optim.Optimizer | None
) -> list[str]:
    """Switch to stage 2: drop the stage-1 objectives (generator, RTD head, MLM masking),
    their parameters from the optimizer and their optimizer state, and free the memory."""
    released = [name for name, obj in objectives.items() if obj.STAGE1_ONLY]
    for name in released:
        objectives[name].release()
        del modules.objectives[name]
        del objectives[name]
    if optimizer is not None:
        keep = {id(p) for p in modules.parameters()}
        for group in optimizer.param_groups:
            dropped = [p for p in group["params"] if id(p) not in keep]
            group["params"] = [p for p in group["params"] if id(p) in keep]
            for p in dropped:
                optimizer.state.pop(p, None)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return released


def trainable_parameters(modules: nn.Module) -> list[nn.Parameter]:
    return [p for p in modules.parameters() if p.requires_grad]


# --------------------------------------------------------------------------- the loop


def train(resolved: Resolved, resume_dir: str | os.PathLike[str] | None = None) -> TrainResult:
    cfg = resolved.cfg
    tcfg = cfg.trainer
    device = resolve_device(cfg.runtime.device)
    amp_dtype = autocast_dtype(cfg.runtime.precision, device)

    run_dir = Path(resume_dir) if resume_dir is not None else Path(cfg.run.dir or default_run_dir(resolved.recipe))
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpointer = Checkpointer(run_dir / "checkpoints", keep=tcfg.keep_checkpoints)
    resume_from = None
    if resume_dir is not None or not cfg.run.fresh:
        resume_from, skipped = checkpointer.latest_valid()
        for problem in skipped:
            print(f"skipping checkpoint {problem}", flush=True)
    elif checkpointer.list():
        for old in checkpointer.list():
            shutil.rmtree(old)
    (run_dir / "config.yaml").write_text(resolved.to_yaml())

    torch.manual_seed(tcfg.seed)
    data = build_data(resolved, device=device, run_dir=run_dir)
    model = build_model(resolved, data.vocab)
    objectives = build_objectives(resolved, data.vocab, model)
    data.start(raw_length_for(objectives, cfg.data.input_length), batch_size=tcfg.batch_size)
    schedules = build_schedules(resolved.schedules, knob_values(objectives), tcfg.max_steps)
    modules = TrainModules(model, objectives)

    step, tokens_seen, stage = 0, 0, 1
    shared: dict[str, Any] = {}
    if resume_from is not None:
        shared = checkpoint_shared(resume_from)
        stage = int(shared.get("stage", 1))
        schedules.load_state_dict(shared.get("schedules", {}))
    if stage == 1 and schedules.stage(int(shared.get("step", 0))) == 2:
        stage = 2  # tau = 0: the SC baseline from the first step
    if stage == 2:
        release_stage1(modules, objectives, optimizer=None)  # before the optimizer exists

    modules.to(device).train()
    optimizer = OPTIMIZERS.get(resolved.optimizer.type).factory(resolved.optimizer.config, trainable_parameters(modules))
    lr_at = LR_SCHEDULES.get(resolved.lr_schedule.type).factory(resolved.lr_schedule.config)
    rng = seeded_generator(tcfg.seed + 1, device)

    resumed = checkpointer.load(modules, optimizer, resume_from) if resume_from is not None else None
    if resumed is not None:
        step = resumed.step
        tokens_seen = int(resumed.shared.get("tokens_seen", 0))
        if resumed.local is not None:
            data.load_state_dict(resumed.local["data"])
            rng.set_state(resumed.local["rng"])
            torch.set_rng_state(resumed.local["torch_rng"])
            if device.type == "cuda" and "cuda_rng" in resumed.local:
                torch.cuda.set_rng_state(resumed.local["cuda_rng"], device)
        print(f"resumed from {resumed.path} at step {step} (stage {stage})", flush=True)
    start_step = step

    metrics = MetricsWriter(run_dir / "metrics.jsonl")
    metrics.open(resume_step=step if resumed is not None else None)
    if resumed is None:
        metrics.path.write_text("")
    progress = Progress(tcfg.max_steps, enabled=cfg.runtime.progress)
    result = TrainResult(run_dir=run_dir, steps=step, start_step=start_step)

    def save() -> None:
        local = {"data": data.state_dict(), "rng": rng.get_state(), "torch_rng": torch.get_rng_state()}
        if device.type == "cuda":
            local["cuda_rng"] = torch.cuda.get_rng_state(device)
        state = {"step": step, "stage": stage, "tokens_seen": tokens_seen, "schedules": schedules.state_dict()}
        checkpointer.save(step, modules, optimizer, shared=state, local=local)

    train_iter: Iterator[Batch] = iter(data.train_batches())
    t_start = time.monotonic()
    t_window, tokens_window = time.perf_counter(), 0
    try:
        while step < tcfg.max_steps:
            apply_knobs(objectives, schedules.values(step))
            switched = None
            if stage == 1 and (schedules.stage(step) == 2 or stage1_finished(objectives)):
                switched = release_stage1(modules, objectives, optimizer)
                stage = 2
            set_lr(optimizer, lr_at(step))
            batch = next(train_iter)
            out = train_step(modules, optimizer, batch, rng, tcfg.grad_accum_steps, tcfg.clip_grad_norm, amp_dtype)
            step += 1
            batch_tokens = batch["original"].numel()
            tokens_seen += batch_tokens
            tokens_window += batch_tokens
            result.losses.append(out.loss)
            if not math.isfinite(out.loss):
                raise FloatingPointError(f"non-finite loss {out.loss} at step {step}")

            record: dict[str, Any] = {"step": step, "stage": stage, "loss": out.loss}
            if switched is not None:
                record["stage_switch_step"] = step - 1  # 0-based count of updates before stage 2
                record["released"] = switched
            record.update({f"loss/{k}": v for k, v in out.losses.items()})
            record.update(out.metrics)
            record["lr"] = optimizer.param_groups[0]["lr"]
            record["grad_norm"] = out.grad_norm
            record.update({f"knob/{k}": v for k, v in knob_values(objectives).items()})
            schedules.observe(step, record)
            if step % tcfg.log_every == 0 or step == tcfg.max_steps:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                now = time.perf_counter()
                record["tokens_seen"] = tokens_seen
                record["tokens_per_s"] = tokens_window / max(now - t_window, 1e-9)
                t_window, tokens_window = now, 0
                if tcfg.eval_every and step % tcfg.eval_every == 0 and step != tcfg.max_steps:
                    record.update(evaluate(modules, data, tcfg.eval_batches, tcfg.seed + 2, amp_dtype))
                    t_window = time.perf_counter()
                if step == tcfg.max_steps:
                    result.val = evaluate(modules, data, tcfg.eval_batches, tcfg.seed + 2, amp_dtype)
                    record.update(result.val)
                metrics.write(record)
                progress.update(step, {"loss": out.loss, "stage": stage, "tok/s": record["tokens_per_s"]})
            if tcfg.checkpoint_every and step % tcfg.checkpoint_every == 0 and step != tcfg.max_steps:
                save()
                t_window = time.perf_counter()
        if step > start_step or resumed is None:
            save()
    finally:
        metrics.close()
    result.steps = step
    result.elapsed_s = time.monotonic() - t_start
    result.tokens_seen = tokens_seen
    return result


def checkpoint_shared(path: Path) -> dict[str, Any]:
    """The state every rank shares (stage, schedules, counters), read before the modules
    move to the device: a run resumed after the switch drops its stage-1 modules before
    they take device memory or optimizer state, and never loads weights into them."""
    manifest = json.loads((path / "manifest.json").read_text())
    return {"step": manifest["step"], **manifest.get("shared", {})}
