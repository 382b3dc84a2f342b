"""One training step and one evaluation, independent of the loop around them.

A step, in order:

1. gather the global batch from every rank and run every objective's ``transform``
   (corruption) on it with a generator that is the same on every rank, so the inputs
   depend on neither the number of ranks nor gradient accumulation;
2. count the items every loss covers in the global batch (losses are normalised by
   these global counts);
3. keep this rank's slice, split it into micro-batches, and for each run
   :class:`TrainModules` — input modifiers (the generator), one encode, every loss —
   and backprop ``Σ weight · total / global_count`` (times the world size, because FSDP
   averages gradients over ranks);
4. clip, update, and sum the logged values over ranks.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from spactor.objectives.base import Batch, Objective
from spactor.runners.parallel import DistInfo, all_gather_batch, all_reduce_sum, local_slice

Losses = dict[str, tuple[torch.Tensor, torch.Tensor, float]]  # name -> (total, count, weight)


class TrainModules(nn.Module):
    """Everything trained, in one tree: the discriminator and the objectives' modules
    (generator, RTD head). One optimizer and one checkpoint cover it all, and
    ``forward`` runs a whole micro-batch so that FSDP's root gathers the shared
    parameters once for every use."""

    def __init__(self, model: nn.Module, objectives: dict[str, Objective]) -> None:
        super().__init__()
        self.model = model
        self.objectives = nn.ModuleDict(objectives)

    def forward(
        self, batch: Batch, rng: torch.Generator, stage1: bool = True
    ) -> tuple[Losses, dict[str, torch.Tensor]]:
        objectives: dict[str, Objective] = dict(self.objectives.items())  # type: ignore[arg-type]
        if not stage1:  # the clean validation pass: no generator, no RTD (see evaluate)
            objectives = {n: o for n, o in objectives.items() if not o.STAGE1_ONLY}
        losses: Losses = {}
        metrics: dict[str, torch.Tensor] = {}

        def collect(obj: Objective, out: Any) -> None:
            if out.loss is not None:
                weight = obj.weight if out.loss.weight is None else out.loss.weight
                losses[obj.name] = (out.loss.total, out.loss.count, weight)
            for key, term in out.aux_losses.items():
                losses[key] = (term.total, term.count, 1.0 if term.weight is None else term.weight)
            metrics.update(out.metrics)

        for obj in objectives.values():
            batch, out = obj.modify(batch, self.model, rng)
            collect(obj, out)
        pad = next(iter(objectives.values())).vocab.pad_id
        embeds = batch.get("encoder_embeds")
        hidden = self.model.encode(
            batch["encoder_input"] if embeds is None else None,
            attention_mask=batch["encoder_input"] != pad,
            inputs_embeds=embeds,
        )
        for obj in objectives.values():
            collect(obj, obj.loss(batch, hidden, self.model))
        return losses, metrics


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
            counts[name] = count.float()
        counts.update({k: v.float() for k, v in obj.aux_counts(batch).items()})
    return counts


def split_batch(batch: Batch, parts: int) -> list[Batch]:
    size = next(iter(batch.values())).shape[0]
    if size % parts:
        raise ValueError(f"a batch of {size} does not split into {parts} gradient-accumulation steps")
    chunks = {k: v.chunk(parts) for k, v in batch.items()}
    return [{k: chunks[k][i] for k in batch} for i in range(parts)]


def autocast(dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class StepOutput:
    loss: float
    losses: dict[str, float]
    metrics: dict[str, float]
    grad_norm: float
    applied: bool = True  # False: the loss or the gradients were not finite, no update

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)


@dataclass
class StepContext:
    """What a step needs besides the modules and the batch."""

    dist: DistInfo
    transform_rng: torch.Generator  # the same on every rank
    modify_rng: torch.Generator  # this rank's own (generator sampling)
    grad_accum_steps: int = 1
    clip_grad_norm: float | None = None
    amp_dtype: torch.dtype | None = None


def train_step(
    modules: TrainModules, optimizer: torch.optim.Optimizer, batch: Batch, ctx: StepContext
) -> StepOutput:
    objectives: dict[str, Objective] = dict(modules.objectives.items())  # type: ignore[arg-type]
    global_batch = apply_transforms(objectives, all_gather_batch(batch), ctx.transform_rng)
    counts = {k: v.clamp(min=1) for k, v in loss_counts(objectives, global_batch).items()}
    micro = split_batch(local_slice(global_batch, ctx.dist), ctx.grad_accum_steps)

    logged: dict[str, torch.Tensor] = {}
    for mb in micro:
        device = mb["encoder_input"].device
        with autocast(ctx.amp_dtype, device):
            losses, metrics = modules(mb, ctx.modify_rng)
        loss = torch.zeros((), device=device)
        for name, (total, _, weight) in losses.items():
            normalised = total.float() / counts[name]
            logged[f"loss/{name}"] = logged.get(f"loss/{name}", 0) + normalised.detach()
            if weight != 0:
                loss = loss + weight * normalised
        logged["loss"] = logged.get("loss", 0) + loss.detach()
        if loss.requires_grad:
            (loss * ctx.dist.world_size).backward()
        for key, value in metrics.items():
            share = value.detach().float() / (len(micro) * ctx.dist.world_size)
            logged[key] = logged.get(key, 0) + share

    grad_norm = clip_gradients(modules, ctx.clip_grad_norm)  # the global norm: the same on every rank
    device = next(iter(counts.values())).device if counts else torch.device("cpu")
    values = all_reduce_sum({k: float(v) for k, v in logged.items()}, device)
    out = StepOutput(
        loss=values.pop("loss"),
        losses={k: v for k, v in values.items() if k.startswith("loss/")},
        metrics={k: v for k, v in values.items() if not k.startswith("loss/")},
        grad_norm=grad_norm,
    )
    out.applied = out.finite  # a non-finite step never reaches the weights or the optimizer state
    if out.applied:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out


def clip_gradients(modules: nn.Module, max_norm: float | None) -> float:
    params = [p for p in modules.parameters() if p.grad is not None]
    if not params:
        return 0.0
    if max_norm is not None and max_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP
        norm = norm.full_tensor()
    return float(norm)


@torch.no_grad()
def evaluate(
    modules: TrainModules,
    batches: Iterator[Batch],
    num_batches: int,
    rng: torch.Generator,
    dist_info: DistInfo,
    amp_dtype: torch.dtype | None,
    device: torch.device,
) -> dict[str, float]:
    """Mean of every loss over this rank's first ``num_batches`` validation batches, summed
    over ranks. Ranks may hold different numbers of validation batches; all run the
    smallest number so that sharded forwards stay in step."""
    objectives: dict[str, Objective] = dict(modules.objectives.items())  # type: ignore[arg-type]
    local = [b for _, b in zip(range(num_batches), batches)]
    usable = len(local) if dist_info.world_size == 1 else _min_over_ranks(len(local), device)
    was_training = modules.training
    modules.eval()
    sums: dict[str, float] = {}
    rng_states = []  # the clean pass replays each batch's corruption draws
    for batch in local[:usable]:
        rng_states.append(rng.get_state())
        batch = apply_transforms(objectives, batch, rng)
        with autocast(amp_dtype, device):
            losses, _ = modules(batch, rng)
        for name, (total, count, _) in losses.items():
            sums[f"{name}/total"] = sums.get(f"{name}/total", 0.0) + float(total)
            sums[f"{name}/count"] = sums.get(f"{name}/count", 0.0) + float(count)
    clean = _clean_losses(modules, objectives, local[:usable], rng_states, rng.device, amp_dtype, device)
    modules.train(was_training)
    sums = all_reduce_sum(sums, device)
    names = sorted({k.rsplit("/", 1)[0] for k in sums})
    out = {f"val/loss/{n}": sums[f"{n}/total"] / max(sums[f"{n}/count"], 1.0) for n in names}
    out.update(clean)
    return out


def _clean_losses(
    modules: TrainModules,
    objectives: dict[str, Objective],
    batches: list[Batch],
    rng_states: list[torch.Tensor],
    rng_device: torch.device,
    amp_dtype: torch.dtype | None,
    device: torch.device,
) -> dict[str, float]:
    """In stage 1, ``val/clean/loss/<name>`` of the objectives that outlive it (span
    corruption) on the same raw batches with only their own transforms: the encoder
    reads X_c, not the generator-replaced X̂_c (the paper's Figure 4). Each batch's
    transforms start from the random state the noisy pass started from, so with span
    corruption first in ``objectives`` the spans are the same ones. Nothing once the
    stage-1 objectives are gone (stage 2, runs without them): the losses would equal
    ``val/loss``."""
    kept = {n: o for n, o in objectives.items() if not o.STAGE1_ONLY}
    # Only runs whose encoder input a stage-1 objective rewrites (SpacTor's generator)
    # have a noisy input; the objectives kept must run alone, as they do in stage 2.
    rewrites = any(o.STAGE1_ONLY and type(o).modify is not Objective.modify for o in objectives.values())
    if not kept or not rewrites:
        return {}
    clean_rng = torch.Generator(device=rng_device)
    sums: dict[str, float] = {}
    for batch, state in zip(batches, rng_states):
        clean_rng.set_state(state)
        batch = apply_transforms(kept, batch, clean_rng)
        with autocast(amp_dtype, device):
            losses, _ = modules(batch, clean_rng, stage1=False)
        for name, (total, count, _) in losses.items():
            sums[f"{name}/total"] = sums.get(f"{name}/total", 0.0) + float(total)
            sums[f"{name}/count"] = sums.get(f"{name}/count", 0.0) + float(count)
    sums = all_reduce_sum(sums, device)
    names = sorted({k.rsplit("/", 1)[0] for k in sums})
    return {f"val/clean/loss/{n}": sums[f"{n}/total"] / max(sums[f"{n}/count"], 1.0) for n in names}


def _min_over_ranks(value: int, device: torch.device) -> int:
    import torch.distributed as dist

    tensor = torch.tensor([value], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())
