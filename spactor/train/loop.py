"""The training loop: one runner for every objective/schedule/architecture combination.

Set-up, in order: process group → run directory → data and tokenizer → model and
objectives → schedules → the stage recorded in the newest checkpoint (a run resumed
in a later stage first drops the objectives that stage no longer runs) → activation
checkpointing, compile, FSDP → optimizer → callbacks → checkpoint load. Then the loop,
plain steps with the callbacks (``spactor.train.callbacks``) at its named points:
``pre_step`` (knob values, the stage switch) → the batch and one step
(``spactor.train.step``) → ``check_step`` (the non-finite guard) → ``post_step``
(metric window, FLOPs) → on logging steps ``log``/``post_log`` (the record, built by the
callbacks, written, observed by the schedules) → ``end_step`` (validation on its own cadence off the
logging steps, checkpoints, downstream evaluation, preemption).
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from spactor.architectures.base import spec_for
from spactor.checkpoint_layout import checkpoints_dir, read_manifest
from spactor.config import ConfigError, Resolved, compile_mode, load_config
from spactor.objectives.base import Batch, Objective
from spactor.registry import LR_SCHEDULES, OPTIMIZERS
from spactor.train import parallel
from spactor.train.builders import build_on_meta, seeded_generator
from spactor.train.checkpoint import Checkpointer
from spactor.train.eval_passes import build_eval_passes
from spactor.train.device import autocast_dtype, resolve_device  # noqa: F401 — also imported from here
from spactor.train.batches import build_data, local_state_of_rank0
from spactor.train.memory import check_memory
from spactor.train.callbacks import (
    Callback,
    CallbackList,
    Checkpointing,
    DataSkipped,
    DownstreamEval,
    FlopsCounter,
    KnobSchedules,
    LoopState,
    MetricsLog,
    NonFiniteGuard,
    NonFiniteStop,
    Preemption,
    StageSwitch,
    StepMetrics,
    Throughput,
    Validation,
)
from spactor.train.callbacks.downstream import DownstreamScorer
from spactor.train.metrics import MetricsWriter, Progress
from spactor.train.optim.optimizers import set_lr
from spactor.train.resume_changes import changed_instances, schedules_without_effect
from spactor.train.run_dir import (
    CreatedPaths, RunDirLock, open_run_dir, start_run_dir, with_tokenizer, write_config,
)
from spactor.train.stages import (
    configured_types,
    knob_values,
    release_objectives,
    run_raw_length,
    trainable_parameters,
)
from spactor.train.step import StepContext, TrainModules, train_step
from spactor.schedules.base import build as build_schedules
from spactor.validation import check_files


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    start_step: int
    losses: list[float] = field(default_factory=list)  # the logged loss of every logging step
    val: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0
    tokens_seen: int = 0
    preempted: str | None = None  # the signal that stopped the run early
    skipped: dict[str, int] = field(default_factory=dict)  # bad records the data sources skipped


# --------------------------------------------------------------------------- set-up


def default_run_dir(recipe: str | None) -> Path:
    name = Path(recipe).stem if recipe else "quickstart"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / f"{name}-{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = Path("runs") / f"{name}-{stamp}-{suffix}"
    return path


# --------------------------------------------------------------------------- parallelism


def parallelize(modules: TrainModules, objectives: dict[str, Objective], resolved: Resolved,
                device: torch.device, info: parallel.DistInfo) -> bool:
    """Activation checkpointing, then compile, then FSDP (torchtitan's order). Returns
    whether FSDP is on."""
    rt = resolved.cfg.runtime
    model = modules.model
    spec = spec_for(resolved.model.type)  # the architecture's blocks and FSDP units
    blocks = spec.wrapped_blocks(model) + [b for o in objectives.values() for b in o.repeated_blocks()]
    parallel.apply_activation_checkpointing(blocks, rt.activation_checkpointing)
    mode = compile_mode(rt.compile)
    if mode == "blocks":
        parallel.apply_compile(blocks)
    use_fsdp = rt.fsdp if rt.fsdp is not None else info.world_size > 1
    if info.world_size > 1 and not use_fsdp:
        raise ValueError("runtime.fsdp=false with more than one rank: multi-rank training runs on FSDP")
    if use_fsdp:
        units = spec.units(model) + [u for o in objectives.values() for u in o.parallel_units()]
        methods: dict[nn.Module, tuple[str, ...]] = {}
        for o in objectives.values():
            methods.update(o.fsdp_forward_methods())
        param_dtype = torch.bfloat16 if _wants_bf16(rt.precision, device) else None
        parallel.apply_fsdp(modules, units, methods, param_dtype, device, blocks=blocks)
    return use_fsdp


def _wants_bf16(precision: str, device: torch.device) -> bool:
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def shared_run_dir(resolved: Resolved, resume_dir: str | os.PathLike[str] | None, info: parallel.DistInfo) -> Path:
    """Rank 0 names the run directory (a default one carries a timestamp) for everyone."""
    if resume_dir is not None:
        return Path(resume_dir)
    chosen = [str(resolved.cfg.run.dir or default_run_dir(resolved.recipe)) if info.is_main else None]
    if info.world_size > 1:
        dist.broadcast_object_list(chosen, src=0)
    return Path(str(chosen[0]))


def count_flops(resolved: Resolved, device: torch.device, info: parallel.DistInfo) -> Any:
    """The FLOPs tracker (``spactor.train.flops.counting``), or None if counting is off or fails:
    a metric must never stop a run, so a model fvcore cannot trace only loses the FLOPs
    fields (with a warning). Rank 0 counts and tells the others, never on the training
    device: on ``meta`` (no storage at all) where the step traces there, else on CPU
    (one temporary unsharded copy in rank 0's host memory, freed before training; the
    meta trace fails on data-dependent shapes such as boolean-mask indexing)."""
    if not resolved.cfg.runtime.count_flops:
        return None
    from spactor.train.flops.counting import flops_report
    from spactor.train.flops.mfu import tracker_from_report

    report = None
    if info.is_main:
        try:
            try:
                report = flops_report(resolved, device="meta", every_stage=True)
            except Exception:  # noqa: BLE001
                report = flops_report(resolved, device="cpu", every_stage=True)
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"FLOPs counting failed ({type(e).__name__}: {e}); runtime.count_flops=false silences this")
    if info.world_size > 1:
        shared = [report]
        dist.broadcast_object_list(shared, src=0)
        report = shared[0]
    return None if report is None else tracker_from_report(resolved, device, report, info.world_size)


def checkpoint_shared(path: Path) -> dict[str, Any]:
    """The state every rank shares (stage, schedules, counters), read before the modules
    move to the device: a run resumed in a later stage drops the objectives it no longer
    runs before they take device memory or optimizer state, and never loads weights into them."""
    manifest = read_manifest(path)
    return {"step": manifest["step"], **manifest.get("shared", {})}


# --------------------------------------------------------------------------- the loop


def train(resolved: Resolved, resume_dir: str | os.PathLike[str] | None = None,
          callbacks: Sequence[Callback] = (), downstream: DownstreamScorer | None = None) -> TrainResult:
    """Train (or resume, from ``resume_dir``) the run ``resolved`` describes. ``callbacks``:
    the run's own, called after the built-in ones at every point of the loop (their
    state is checkpointed under their names). ``downstream``: how a checkpoint is scored
    under ``trainer.downstream_every`` (required when it is set; the evaluation layer's
    ``downstream_scores``)."""
    lock = RunDirLock()  # one writer per run directory (rank 0 holds it)
    created = CreatedPaths()
    try:
        return _train(resolved, resume_dir, lock, created, list(callbacks), downstream)
    except BaseException:
        created.undo(lock)  # refused before the run started: leave nothing it created
        raise
    finally:
        lock.release()


def _train(resolved: Resolved, resume_dir: str | os.PathLike[str] | None, lock: RunDirLock,
           created: CreatedPaths, extra_callbacks: list[Callback],
           downstream: DownstreamScorer | None = None) -> TrainResult:
    cfg = resolved.cfg
    tcfg = cfg.trainer
    info = parallel.init_distributed(resolve_device(cfg.runtime.device))
    device = parallel.rank_device(resolve_device(cfg.runtime.device), info)
    if device.type == "cuda":
        torch.cuda.set_device(device)

    run_dir = shared_run_dir(resolved, resume_dir, info)
    if info.is_main:
        print(f"run directory: {run_dir}", flush=True)
    checkpointer = Checkpointer(checkpoints_dir(run_dir), keep=tcfg.keep_checkpoints)
    if info.is_main:
        created.note(run_dir)
    # Lock, find the checkpoint, check the config against the run's: nothing is written yet.
    opened = open_run_dir(run_dir, resolved, checkpointer, explicit=resume_dir is not None,
                          lock=lock, is_main=info.is_main)
    resume_from = opened.resume_from
    if opened.finished is not None:
        if info.is_main:
            print(opened.finished, flush=True)
        return TrainResult(run_dir=run_dir, steps=opened.step, start_step=opened.step)
    for line in check_files(resolved, opened.tokenizer):
        if info.is_main:
            print(line, flush=True)

    torch.manual_seed(tcfg.seed)  # the same initial weights on every rank
    # bad data fails before the run dir exists; a resumed run reads its own tokenizer
    data = build_data(with_tokenizer(resolved, opened.tokenizer), device=device, run_dir=None)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not lock.held:
            lock.acquire(run_dir)
    model, objectives, init_program = build_on_meta(resolved, data.vocab)
    # before any is released
    all_knobs, all_objectives = knob_values(objectives), configured_types(resolved, objectives)
    schedules = build_schedules(resolved.schedules, all_knobs, tcfg.max_steps, all_objectives)
    raw_length = run_raw_length(objectives, schedules.stages, cfg.data.input_length)  # every stage's
    eval_passes = build_eval_passes(tcfg.eval_passes, schedules.stages, objectives)  # before any release
    data.start(raw_length, batch_size=tcfg.batch_size)
    modules = TrainModules(model, objectives, data.vocab.pad_id)
    if init_program is not None:
        init_program.bind(modules)
    check_memory(resolved, modules, objectives, raw_length,
                 data.vocab.size, device, info.world_size,
                 fsdp=cfg.runtime.fsdp if cfg.runtime.fsdp is not None else info.world_size > 1)
    if info.is_main and resume_from is None:  # the run fits: only now is anything written
        if cfg.run.fresh:
            for old in checkpointer.list():
                shutil.rmtree(old)
        start_run_dir(run_dir, resolved, data.tokenizer)  # config, spiece.model, identity
    created.keep()  # the run has started: its directory stays, whatever happens next
    flops = count_flops(resolved, device, info)

    # The stage is an int 1..N (two-stage checkpoints wrote 1 or 2: the implicit curriculum's).
    shared: dict[str, Any] = {}
    if resume_from is not None:
        shared = checkpoint_shared(resume_from)
        stage = int(shared.get("stage", 1))
        if not 1 <= stage <= schedules.stages.num_stages:
            raise ConfigError(f"{resume_from}: the checkpoint is in stage {stage}, but the configured "
                              f"curriculum has {schedules.stages.num_stages} stages")
    else:
        stage = schedules.stage(0)  # e.g. tau = 0: the SC baseline from the first step
    schedules.stages.current = stage
    if stage > 1:  # before the optimizer exists
        inactive = schedules.stages.inactive_in(stage, objectives)
        release_objectives(modules, objectives, inactive, optimizer=None)
    modules.active = schedules.stages.active_in(stage, objectives)

    if init_program is None:
        modules.to(device)
    parallelize(modules, objectives, resolved, device, info)
    if init_program is not None:
        init_program.materialize(modules, device)  # after sharding: each rank allocates its shards
    modules.train()
    amp_dtype = autocast_dtype(cfg.runtime.precision, device)
    optimizer = OPTIMIZERS.get(resolved.optimizer.type).factory(resolved.optimizer.config, trainable_parameters(modules))
    lr_at = LR_SCHEDULES.get(resolved.lr_schedule.type).factory(resolved.lr_schedule.config)
    ctx = StepContext(
        dist=info,
        transform_rng=seeded_generator(tcfg.seed + 1, device),
        modify_rng=seeded_generator(tcfg.seed + 1000, device),  # per-row seeds: rank-independent
        grad_accum_steps=tcfg.grad_accum_steps,
        clip_grad_norm=tcfg.clip_grad_norm,
        amp_dtype=amp_dtype,
        forward=modules.compiled_forward() if compile_mode(cfg.runtime.compile) == "model" else None,
    )
    torch.manual_seed(tcfg.seed + info.rank)  # dropout differs between ranks

    state = LoopState(max_steps=tcfg.max_steps, stage=stage, world_size=info.world_size, is_main=info.is_main)
    resumed = checkpointer.load(modules, optimizer, resume_from) if resume_from is not None else None

    # The callbacks, in the order they run at every point: the record's fields come in
    # this order, and the stop a signal asks for comes after its step's checkpoint.
    preemption = Preemption(info.world_size)
    writer = MetricsWriter(run_dir / "metrics.jsonl", enabled=info.is_main, tensorboard=cfg.run.tensorboard)
    progress = Progress(tcfg.max_steps, enabled=cfg.runtime.progress and info.is_main)
    metrics_log = MetricsLog(writer, progress, resumed=resumed is not None)

    def save() -> None:
        callbacks.pre_checkpoint(state)
        local = {**local_state(data, ctx, device), "callbacks": callbacks.local_state()}
        path = checkpointer.save(state.step, modules, optimizer, shared=callbacks.shared_state(state),
                                 local=local)
        state.last_checkpoint_step = state.step
        callbacks.post_checkpoint(state, path)

    callbacks = CallbackList([
        StepMetrics(optimizer, device),
        NonFiniteGuard(tcfg.nonfinite, tcfg.max_consecutive_skips),
        *([FlopsCounter(flops)] if flops is not None else []),
        KnobSchedules(schedules, objectives),
        StageSwitch(schedules, modules, objectives, optimizer),  # after the knobs: a stage can end on one
        Throughput(device, flops),
        DataSkipped(data),
        Validation(modules, data, every=tcfg.eval_every, batches=tcfg.eval_batches, seed=tcfg.seed + 2,
                   info=info, amp_dtype=amp_dtype, device=device, passes=eval_passes,
                   write=metrics_log.write),
        metrics_log,
        Checkpointing(tcfg.checkpoint_every, save),
        DownstreamEval(tcfg.downstream_every, tcfg.downstream_tasks, run_dir, save, metrics_log.write, downstream),
        preemption,
        *extra_callbacks,
    ])
    if resumed is not None:
        state.step = resumed.step
        state.tokens_seen = int(resumed.shared.get("tokens_seen", 0))
        local_callbacks = None if resumed.local is None else resumed.local.get("callbacks", {})
        callbacks.load_state_dict(resumed.shared, local_callbacks)
        if resumed.local is not None:
            restore_local(resumed.local, data, ctx, device)
        else:  # the data position and the corruption RNG are global: rank 0's are every rank's
            rank0 = local_state_of_rank0(resumed.path)
            if "data" in rank0:
                data.load_state_dict(rank0["data"])
            if "transform_rng" in rank0:
                ctx.transform_rng.set_state(rank0["transform_rng"])
            if info.is_main:
                print("the checkpoint was written by a different number of ranks: weights, optimizer, schedules "
                      "and the data stream resume; per-rank random streams and the metric window start afresh",
                      flush=True)
        if info.is_main:
            print(f"resumed from {resumed.path} at step {state.step} (stage {stage})", flush=True)
            quiet = past_schedule_changes(run_dir, resolved, opened.applied, all_knobs, all_objectives,
                                          list(objectives), state.step, stage)
            for change in opened.applied:
                if change in quiet:
                    print(f"resume: {change} has no effect: what it changes lies before step {state.step}, "
                          f"where the run resumes (stage {stage})", flush=True)
                else:
                    print(f"resume applies {change}", flush=True)
            write_config(run_dir, resolved)  # loaded and compatible: now the run's config
    state.start_step = state.step
    result = TrainResult(run_dir=run_dir, steps=state.step, start_step=state.start_step)

    train_iter: Iterator[Batch] = iter(data.train_batches())
    t_start = time.monotonic()
    try:
        callbacks.pre_train(state)
        while state.step < tcfg.max_steps:
            callbacks.pre_step(state)  # knob values, the stage switch
            set_lr(optimizer, lr_at(state.step))
            t_data = time.perf_counter()
            batch = next(train_iter)
            state.data_s = time.perf_counter() - t_data
            state.log_step = (state.step + 1) % tcfg.log_every == 0 or state.step + 1 == tcfg.max_steps
            out = train_step(modules, optimizer, batch, ctx, with_metrics=state.log_step,
                             stop_requested=preemption.requested)
            callbacks.check_step(state, out)  # the guard raises under `stop` or after too many skips in a row
            state.step += 1
            state.tokens_seen += batch["original"].numel() * info.world_size
            callbacks.post_step(state, out)
            if state.log_step:
                record = callbacks.log(state)  # built, written, shown and observed by the callbacks
                result.losses.append(record["loss"])
                result.skipped = data.skipped_counts()
                if state.step == tcfg.max_steps:
                    result.val = {k: v for k, v in record.items() if k.startswith("val/")}
            callbacks.end_step(state)  # checkpoints, downstream evaluation, a signal's stop
            if state.stop:
                break
        # A signal during the last step stops nothing: the run is complete, not preempted.
        result.preempted = preemption.signal_name if state.step < tcfg.max_steps else None
        if state.step > state.start_step or resumed is None or result.preempted:
            save()
        callbacks.post_train(state)
    except NonFiniteStop:
        save()  # the weights and optimizer are those of the last good step
        raise
    finally:
        callbacks.close()
    result.steps = state.step
    result.elapsed_s = time.monotonic() - t_start
    result.tokens_seen = state.tokens_seen
    return result


def past_schedule_changes(run_dir: Path, resolved: Resolved, applied: list[str], knobs: dict[str, float],
                          objectives: dict[str, str], live: list[str], step: int, stage: int) -> set[str]:
    """The applied ``schedules.*`` changes that can no longer take effect at ``step``
    (``spactor.train.resume_changes``), judged against the run's saved config.yaml.
    ``objectives``: name -> type; ``live``: the objectives not released on entering ``stage``."""
    changed = changed_instances(applied)
    if not changed:
        return set()
    try:
        saved = load_config(str(run_dir / "config.yaml"), [], saved_run=True)
        quiet = schedules_without_effect(saved.schedules, resolved.schedules, changed, knobs, objectives,
                                         step, stage, resolved.cfg.trainer.max_steps, live)
    except Exception:  # noqa: BLE001 — a saved config this version cannot rebuild: say "applies"
        return set()
    return {change for name in quiet for change in changed[name]}


def local_state(data: Any, ctx: StepContext, device: torch.device) -> dict[str, Any]:
    """This rank's part of a checkpoint: data position and every random stream."""
    state = {
        "data": data.state_dict(),
        "transform_rng": ctx.transform_rng.get_state(),
        "modify_rng": ctx.modify_rng.get_state(),
        "torch_rng": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def restore_local(state: dict[str, Any], data: Any, ctx: StepContext, device: torch.device) -> None:
    data.load_state_dict(state["data"])
    ctx.transform_rng.set_state(state["transform_rng"])
    ctx.modify_rng.set_state(state["modify_rng"])
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], device)
