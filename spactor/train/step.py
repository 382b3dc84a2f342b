"""One training step and one evaluation, independent of the loop around them.

A step, in order:

1. corrupt this rank's rows (every objective's ``transform``) with the random numbers of
   their rows in the global batch: the transforms run on a batch of the global size in
   which only this rank's rows hold data, with a generator that is the same on every
   rank, and this rank keeps its slice. The noise of the whole global batch is cheap to
   draw; the batch itself is never gathered. Noise drawn inside the forward (the RTD
   generator's sampling) is counter-based on per-row seeds drawn the same way
   (``noise_seed``). The inputs so depend on neither the number of ranks nor gradient
   accumulation;
2. split the rows into micro-batches and count the items every loss covers in each, once
   (``count``/``aux_counts``): each micro-batch's counts go to its objectives in one
   :class:`~spactor.objectives.base.MicroBatchContext` (with the pad id and whether to
   compute metrics), and their sum over micro-batches and ranks (one all-reduce of a
   small stacked tensor) normalises the losses;
3. for each micro-batch run :class:`TrainModules` — input modifiers (the generator),
   then every loss on one shared forward (an encoder pass and a decoder pass at most,
   whatever the number of losses) — and backprop ``Σ weight · total / global_count``
   (times the world size, because FSDP averages gradients over ranks), the weights the
   step's own, by loss name (:meth:`TrainModules.loss_weights`, read once per step);
4. the global gradient norm, the finiteness of the step and the preemption flag in one
   all-reduce; clip; one host sync to read the flag; update unless it was not finite.

Everything logged is recorded where it is computed, with its reduction declared
(``spactor.metric_record``): the losses here (``loss/<name>``, Reduce.SUM: each
micro-batch's part of the global mean), the gradient norm (Reduce.MAX: the same on every
rank), the objectives' metrics in their ``loss``/``modify`` (accuracies, RTD detection:
Reduce.MEAN, computed only when the context says ``with_metrics``, on logging steps).
They stay on the device, combined over micro-batches in ``StepOutput.logged``; the runner
reduces them over ranks once per logging window (``spactor.train.metrics.MetricWindow``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from spactor.contract import implements
from spactor.metric_record import MetricRecord, Recorded, Reduce, as_recorded
from spactor.objectives.noise import rows_of_global_batch
from spactor.objectives.base import Batch, MicroBatchContext, Objective, SharedForward, unpadded_key
from spactor.train.device import autocast  # noqa: F401 — also imported from here (benchmarks)
from spactor.train.parallel import DistInfo, all_reduce_tensor

Terms = dict[str, tuple[torch.Tensor, torch.Tensor]]  # loss name -> (total, count), unweighted
Metrics = dict[str, Recorded]  # the objectives' recorded metrics of one micro-batch


class TrainModules(nn.Module):
    """Everything trained, in one tree: the discriminator and the objectives' modules
    (generator, RTD head). One optimizer and one checkpoint cover it all, and
    ``forward`` runs a whole micro-batch so that FSDP's root gathers the shared
    parameters once for every use. ``pad_id``: the vocabulary's, for the micro-batch
    contexts it builds (:meth:`context`)."""

    def __init__(self, model: nn.Module, objectives: dict[str, Objective], pad_id: int) -> None:
        super().__init__()
        self.model = model
        self.objectives = nn.ModuleDict(objectives)
        self.pad_id = pad_id
        # The objectives the current stage runs, in config order (None: every one held).
        # A curriculum may hold an objective that only a later stage runs.
        self.active: list[str] | None = None

    def active_objectives(self) -> dict[str, Objective]:
        held: dict[str, Objective] = dict(self.objectives.items())  # type: ignore[arg-type]
        if self.active is None:
            return held
        return {n: o for n, o in held.items() if n in self.active}

    def _running(self, only: list[str] | None) -> dict[str, Objective]:
        objectives = self.active_objectives()
        return objectives if only is None else {n: o for n, o in objectives.items() if n in only}

    def context(
        self, batch: Batch, with_metrics: bool = False, only: list[str] | None = None
    ) -> MicroBatchContext:
        """What the runner gives the objectives for the micro-batch ``batch``: every loss's
        item count on it (``count``/``aux_counts``, called here and nowhere else), the pad
        id, whether to compute metrics. ``only``: as in :meth:`forward`."""
        return MicroBatchContext.of(self._running(only).values(), batch, self.pad_id, with_metrics)

    def loss_weights(self, names: Iterable[str]) -> dict[str, float]:
        """The runner's weight of each loss in ``names``, by loss name, from the active
        objectives' :meth:`~spactor.objectives.base.Objective.loss_weights`: read once per
        step (schedules change knobs between steps only) and applied by the step. A loss
        its objective names no weight for (an aux loss) takes 1."""
        declared: dict[str, float] = {}
        for obj in self.active_objectives().values():
            declared.update(obj.loss_weights())
        return {name: declared.get(name, 1.0) for name in names}

    def forward(
        self, batch: Batch, rng: torch.Generator, ctx: MicroBatchContext, only: list[str] | None = None
    ) -> tuple[Terms, Metrics]:
        """Every active objective's modify, then its loss on one :class:`SharedForward`,
        all with the micro-batch context ``ctx`` (:meth:`context`); the losses unweighted.
        ``only``: run just these of the active objectives (evaluate's clean pass)."""
        return self.loss_terms(batch, rng, ctx, only)

    def loss_terms(
        self, batch: Batch, rng: torch.Generator, ctx: MicroBatchContext, only: list[str] | None = None
    ) -> tuple[Terms, Metrics]:
        """:meth:`forward`'s body: what ``runtime.compile=model`` compiles (it bypasses
        the module's hooks)."""
        objectives = self._running(only)
        terms: Terms = {}
        metrics: Metrics = {}

        def collect(obj: Objective, out: Any) -> None:
            if out.loss is not None:
                terms[obj.name] = (out.loss.total, out.loss.count)
            terms.update({key: (term.total, term.count) for key, term in out.aux_losses.items()})
            metrics.update({k: as_recorded(v) for k, v in out.metrics.items()})

        for obj in objectives.values():
            batch, out = obj.modify(batch, self.model, rng, ctx)
            collect(obj, out)
        # After the modifies: the encoder reads their input (or the embeddings they set).
        forward = SharedForward(self.model, batch, ctx.pad_id)
        for obj in objectives.values():
            collect(obj, obj.loss(batch, forward, ctx))
        return terms, metrics

    def compiled_forward(self) -> Callable[..., tuple[Terms, Metrics]]:
        """``runtime.compile=model``: :meth:`loss_terms` — the generator, the encoder, the
        decoder and every loss — as one compiled graph, so the small ops around the blocks
        (sampling, masking, the heads' losses) fuse too; the step weights the losses
        eagerly. One device only: it bypasses the module's hooks, FSDP's among them
        (per-block compile is the FSDP path). A knob a schedule changes inside the graph
        (a temperature) costs one recompile, after which Dynamo treats it as a symbolic
        float; a new stage (other objectives) and the logging steps' metrics
        (``ctx.with_metrics``) are graphs of their own. Evaluation keeps calling the
        modules eagerly, so its modes and shapes add none."""
        return torch.compile(self.loss_terms)


def apply_transforms(objectives: dict[str, Objective], batch: Batch, rng: torch.Generator) -> Batch:
    # Until an objective rewrites it (span corruption), the encoder reads the raw chunk.
    batch = {"encoder_input": batch["original"], **batch}
    for obj in objectives.values():
        before = batch
        batch = obj.transform(batch, rng)
        if not obj.KEEPS_PADDING:
            # A view this transform rewrote without saying it is unpadded may now be padded.
            stale = [unpadded_key(v) for v in obj.PROVIDES
                     if unpadded_key(v) in batch and batch[unpadded_key(v)] is before.get(unpadded_key(v))]
            batch = {k: v for k, v in batch.items() if k not in stale} if stale else batch
    return batch


def corrupt_local_rows(
    objectives: dict[str, Objective], batch: Batch, rng: torch.Generator, info: DistInfo
) -> Batch:
    """Transform this rank's rows exactly as they would be transformed in the global
    batch, with a generator that is the same on every rank. Objectives whose noise is
    drawn row by row (``ROW_LOCAL_NOISE``: every built-in transform) corrupt only this
    rank's rows: each draw is made for the global batch and this rank keeps its slice
    (``spactor.objectives.noise``). Otherwise the transforms run on a global-size batch
    that holds this rank's rows at their global offset, and the slice is kept. Either
    way a row gets the corruption it gets on one rank, and no data crosses ranks."""
    if info.world_size == 1:
        return apply_transforms(objectives, batch, rng)
    rows = next(iter(batch.values())).shape[0]
    start = info.rank * rows
    if all(o.ROW_LOCAL_NOISE or not implements(type(o), "transform") for o in objectives.values()):
        with rows_of_global_batch(start, rows, rows * info.world_size):
            return apply_transforms(objectives, batch, rng)
    padded = {}
    for key, value in batch.items():
        full = value.new_zeros((rows * info.world_size, *value.shape[1:]))
        full[start : start + rows] = value
        padded[key] = full
    out = apply_transforms(objectives, padded, rng)
    return {key: value[start : start + rows] for key, value in out.items()}


def row_noise_seeds(rng: torch.Generator, rows: int, info: DistInfo) -> torch.Tensor:
    """``(rows,)`` int64 seeds for the noise objectives draw inside the forward (the RTD
    generator's Gumbel noise, counter-based on them): one per global row from a
    generator that is the same on every rank, this rank's slice kept, so a row's noise
    depends on neither the number of ranks nor the micro-batch it lands in."""
    seeds = torch.randint(0, 2**31 - 1, (rows * info.world_size,), generator=rng, device=rng.device)
    return seeds[info.rank * rows : (info.rank + 1) * rows]


def global_counts(micro_counts: list[Mapping[str, torch.Tensor]], info: DistInfo) -> dict[str, torch.Tensor]:
    """Every loss's item count over the step's micro-batches and ranks (the normaliser of
    its global mean), from the counts the micro-batches' contexts hold: summed exactly
    (integers) before the conversion to float, one all-reduce of a small stacked tensor
    with several ranks, at least 1."""
    first, rest = micro_counts[0], micro_counts[1:]
    counts = {k: sum((c[k] for c in rest), first[k]).float() for k in first}
    if info.world_size > 1 and counts:
        keys = sorted(counts)
        summed = all_reduce_tensor(torch.stack([counts[k] for k in keys]))
        counts = dict(zip(keys, summed.unbind()))
    return {k: v.clamp(min=1) for k, v in counts.items()}


def split_batch(batch: Batch, parts: int) -> list[Batch]:
    size = next(iter(batch.values())).shape[0]
    if size % parts:
        raise ValueError(f"a batch of {size} does not split into {parts} gradient-accumulation steps")
    chunks = {k: v.chunk(parts) for k, v in batch.items()}
    return [{k: chunks[k][i] for k in batch} for i in range(parts)]


@dataclass
class StepOutput:
    """What a step gives the runner, as device tensors: ``loss`` is this rank's share of
    the step's loss (its sum over ranks is the loss), ``grad_norm`` the global norm (the
    same on every rank), ``logged`` every number the step records for ``metrics.jsonl``
    (``loss``, ``loss/<name>``, ``grad_norm``, the objectives' metrics), each with its
    reduction. Reading a tensor is a host sync: the runner reads ``logged`` once per
    logging window."""

    loss: torch.Tensor
    logged: MetricRecord
    grad_norm: torch.Tensor
    applied: bool = True  # False: the loss or the gradients were not finite, no update
    stop: bool = False  # some rank asked to stop (a signal): every rank stops after this step
    global_loss: torch.Tensor | None = None  # the loss summed over ranks, where it came for free

    def nonfinite_message(self, step: int) -> str:
        """Why step ``step`` was not applied (reads the values: for bad steps only)."""
        loss = float(self.loss if self.global_loss is None else self.global_loss)
        grad_norm = float(self.grad_norm)
        what = "loss" if not math.isfinite(loss) else "gradient norm"
        return f"non-finite {what} at step {step} (loss {loss}, grad norm {grad_norm})"


@dataclass
class StepContext:
    """What a step needs besides the modules and the batch."""

    dist: DistInfo
    transform_rng: torch.Generator  # the same on every rank
    modify_rng: torch.Generator  # the same on every rank: per-row seeds of the noise drawn in the forward
    grad_accum_steps: int = 1
    clip_grad_norm: float | None = None
    amp_dtype: torch.dtype | None = None
    # What runs ``TrainModules.forward`` for training: the modules themselves, or their
    # whole-forward compile (``runtime.compile=model``); evaluation always runs eagerly.
    forward: Callable[..., tuple[Terms, Metrics]] | None = None


def train_step(
    modules: TrainModules,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    ctx: StepContext,
    with_metrics: bool = True,
    stop_requested: bool = False,
) -> StepOutput:
    """One optimizer step on this rank's rows. ``with_metrics``: also compute the
    objectives' metrics (a logging step). ``stop_requested``: this rank got a signal;
    with several ranks the flag rides on the step's one all-reduce and
    ``StepOutput.stop`` says whether any rank set it."""
    objectives = modules.active_objectives()
    local = corrupt_local_rows(objectives, batch, ctx.transform_rng, ctx.dist)
    local["noise_seed"] = row_noise_seeds(ctx.modify_rng, local["encoder_input"].shape[0], ctx.dist)
    micro = split_batch(local, ctx.grad_accum_steps)
    # Each micro-batch's items are counted once, here, before its forward: its objectives
    # read the counts from their context, the normaliser is their sum.
    contexts = [modules.context(mb, with_metrics) for mb in micro]
    counts = global_counts([c.counts for c in contexts], ctx.dist)
    weights = modules.loss_weights(counts)  # the step's, by loss name (knobs change between steps)

    logged = MetricRecord()
    device = local["encoder_input"].device
    total_loss = torch.zeros((), device=device)
    forward = modules if ctx.forward is None else ctx.forward
    for mb, mb_ctx in zip(micro, contexts):
        with autocast(ctx.amp_dtype, device):
            terms, metrics = forward(mb, ctx.modify_rng, mb_ctx)
        loss = torch.zeros((), device=device)
        for name, (total, _) in terms.items():
            normalised = total.float() / counts[name]  # this micro-batch's part of the global mean
            logged.record(f"loss/{name}", normalised, Reduce.SUM)
            if weights[name] != 0:
                loss = loss + weights[name] * normalised
        total_loss = total_loss + loss.detach()
        if loss.requires_grad:
            (loss * ctx.dist.world_size).backward()
        for key, (value, reduce, _) in metrics.items():
            logged.record(key, value.float(), reduce)

    grad_norm, finite, stop, global_loss = finish_gradients(
        modules, ctx.clip_grad_norm, total_loss, stop_requested, ctx.dist
    )
    logged.record("loss", total_loss, Reduce.SUM)  # the weighted sum of the losses, this rank's share
    logged.record("grad_norm", grad_norm, Reduce.MAX)  # the global norm, the same on every rank
    # The step's one host sync: whether to update (and, with several ranks, whether to stop).
    code = int((finite.int() + 2 * stop.int()).item()) if stop is not None else int(finite.item())
    applied = bool(code & 1)
    if applied:  # a non-finite step never reaches the weights or the optimizer state
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepOutput(
        loss=total_loss,
        logged=logged,
        grad_norm=grad_norm,
        applied=applied,
        stop=stop_requested if stop is None else bool(code & 2),
        global_loss=global_loss,
    )


def add_loss_sums(into: dict[str, torch.Tensor], losses: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Add each loss's (total, count) to ``into`` as ``<name>/total`` and ``<name>/count``
    (float64, detached): what an evaluation pass reduces and reads once at its end."""
    for name, (total, count) in losses.items():
        for key, value in ((f"{name}/total", total.detach().double()), (f"{name}/count", count.double())):
            into[key] = into[key] + value if key in into else value


def finish_gradients(
    modules: nn.Module, max_norm: float | None, loss: torch.Tensor, stop_requested: bool, info: DistInfo
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The global gradient norm, clipping, and the step's flags, without a host sync.

    Returns ``(grad_norm, finite, stop, global_loss)`` as device tensors. One rank: the
    norm as ``clip_grad_norm_`` computes it; ``stop`` and ``global_loss`` are None (the
    caller knows its own flag and loss). Several ranks: every rank's squared shard
    norms, its loss share and its stop flag go into one all-reduce, so ``finite`` and
    ``stop`` are the same on every rank."""
    params = [p for p in modules.parameters() if p.grad is not None]
    grads = [p.grad for p in params]
    device = loss.device
    # FSDP on a world of one (runtime.fsdp=true, one process) has sharded DTensor gradients:
    # the sharded path below, whose all-reduce is then a no-op, keeps the norm a plain tensor
    if info.world_size == 1 and not any(hasattr(g, "to_local") for g in grads):
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=device)
        if grads and max_norm is not None and max_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return norm, torch.isfinite(norm) & torch.isfinite(loss), None, None
    shards = [g.to_local() for g in grads if hasattr(g, "to_local")]  # FSDP: this rank's shard
    replicated = [g for g in grads if not hasattr(g, "to_local")]
    squares = torch.zeros((), device=device)
    if shards:
        squares = squares + torch.nn.utils.get_total_norm(shards).float() ** 2
    if replicated:  # the same on every rank: count it once in the sum over ranks
        squares = squares + torch.nn.utils.get_total_norm(replicated).float() ** 2 / info.world_size
    flag = torch.full((), 1.0 if stop_requested else 0.0, device=device)
    packed = all_reduce_tensor(torch.stack([squares, loss.float(), flag]))
    norm, global_loss = packed[0].sqrt(), packed[1]
    finite = torch.isfinite(norm) & torch.isfinite(global_loss)
    if grads and max_norm is not None and max_norm > 0:
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(shards + replicated, coef)
    return norm, finite, packed[2] > 0, global_loss


class EvalPass(Protocol):
    """An evaluation pass beside the validation losses (``spactor.train.eval_passes``,
    declared in ``trainer.eval_passes``): loss sums of its own on the same batches,
    logged as ``val/<name>/loss/<loss>``."""

    name: str

    def loss_sums(self, modules: TrainModules, batches: list[Batch], rng_states: list[torch.Tensor],
                  rng_device: torch.device, amp_dtype: torch.dtype | None, device: torch.device,
                  dist_info: DistInfo) -> dict[str, torch.Tensor]:
        """``<loss>/total`` and ``<loss>/count`` on the device, for ``batches``, each of
        whose corruption began from the matching state of ``rng_states``."""
        ...


@torch.no_grad()
def evaluate(
    modules: TrainModules,
    batches: Iterator[Batch],
    num_batches: int,
    rng: torch.Generator,
    dist_info: DistInfo,
    amp_dtype: torch.dtype | None,
    device: torch.device,
    passes: Sequence[EvalPass] = (),
) -> dict[str, float]:
    """Mean of every loss over this rank's first ``num_batches`` validation batches, summed
    over ranks. Ranks may hold different numbers of validation batches; all run the
    smallest number so that sharded forwards stay in step. ``passes``: the configured
    evaluation passes (``val/<pass>/loss/<name>``), run on the same batches and reduced
    with the losses."""
    objectives = modules.active_objectives()
    local = [b for _, b in zip(range(num_batches), batches)]
    usable = len(local) if dist_info.world_size == 1 else _min_over_ranks(len(local), device)
    was_training = modules.training
    modules.eval()
    sums: dict[str, torch.Tensor] = {}
    rng_states = []  # a pass may replay each batch's corruption draws
    for batch in local[:usable]:
        rng_states.append(rng.get_state())
        batch = corrupt_local_rows(objectives, batch, rng, dist_info)  # as in training: by global row
        with autocast(amp_dtype, device):
            losses, _ = modules(batch, rng, modules.context(batch))
        add_loss_sums(sums, losses)
    for extra in passes:
        found = extra.loss_sums(modules, local[:usable], rng_states, rng.device, amp_dtype, device, dist_info)
        sums.update({f"{extra.name}/{k}": v for k, v in found.items()})
    modules.train(was_training)
    keys = sorted(sums)
    # One read (and, with several ranks, one all-reduce) for the whole evaluation.
    values = all_reduce_tensor(torch.stack([sums[k] for k in keys])).tolist() if keys else []
    totals = dict(zip(keys, values))
    names = sorted({k.rsplit("/", 1)[0] for k in totals})
    prefixes = [extra.name for extra in passes]
    return {f"val/{_loss_key(n, prefixes)}": totals[f"{n}/total"] / max(totals[f"{n}/count"], 1.0)
            for n in names}


def _loss_key(name: str, passes: Sequence[str]) -> str:
    """``span_corruption`` → ``loss/span_corruption``; a pass's ``clean/span_corruption`` →
    ``clean/loss/span_corruption`` (``val/clean/loss/...``)."""
    for prefix in passes:
        if name.startswith(f"{prefix}/"):
            return f"{prefix}/loss/{name[len(prefix) + 1:]}"
    return f"loss/{name}"


def _min_over_ranks(value: int, device: torch.device) -> int:
    import torch.distributed as dist

    tensor = torch.tensor([value], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())
