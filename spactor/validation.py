"""Semantic checks of a resolved config, before any work starts.

``spactor.config`` already rejects unknown keys and values of the wrong type (OmegaConf's
structured configs). :func:`validate` then checks what the types cannot say: ranges
(ratios in [0, 1), densities in (0, 1), τ ≥ 0, positive sizes), choices (device,
precision, model presets) and rules that involve several keys.

The core's own sections (``trainer``, ``data``, ``runtime``) are checked here. Every
plugin section is checked by its config dataclass (``check(where, ctx)``, see
:mod:`spactor.checks`): span corruption's sentinel budget at ``data.input_length``, an
RTD generator's width against the discriminator's, a learned position table shorter than
the input, a schedule's τ. Rules about a plugin kind's whole section come from that kind's
package through ``Registry.add_section_check``: schedules driving knobs that do not exist
(or one knob twice), each stage's objectives against their declared batch fields
(:mod:`spactor.contract`), no objective with a loss. This module imports no plugin package: it
reaches the plugins only through the registries.

Every problem is one :class:`~spactor.config.ConfigError` line,
``<key>: <value> — <rule>``; the CLI prints it and exits with code 2. The first problem
found is reported.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from spactor.checks import (  # noqa: F401 — NUM_SENTINELS, non_negative re-exported for older imports
    NUM_SENTINELS,
    CheckContext,
    FileCheckContext,
    ModelShape,
    at_least,
    check_config,
    check_fields,
    fail,
    is_number,
    non_negative,
    one_of,
    positive,
    positive_int,
    unit_interval,
)
from spactor.capabilities import capabilities_of, capability_problem
from spactor.config import COMPILE_MODES, EVAL_PASSES, ConfigError, Plugin, Resolved, compile_mode
from spactor.registry import ARCHITECTURES, OBJECTIVES, SCHEDULES, factory_class

DEVICES = ("cpu", "cuda", "auto")
PRECISIONS = ("fp32", "bf16", "auto")


def validate(resolved: Resolved) -> None:
    """Raise a one-line ``ConfigError`` for the first problem in ``resolved``."""
    cfg = resolved.cfg
    check_trainer(cfg.trainer)
    check_data(cfg.data)
    check_runtime(cfg.runtime)
    check_run(cfg.run)
    width = check_model(resolved.model, cfg.data.input_length)
    ctx = CheckContext(
        input_length=cfg.data.input_length,
        hidden_size=width,
        model_shape=model_shape(resolved.model),
        world_size=_world_size(),
        max_steps=cfg.trainer.max_steps,
        knobs=knob_values(resolved.objectives),
        objectives=tuple(resolved.objectives),
        objective_types={name: p.type for name, p in resolved.objectives.items()},
    )
    check_capabilities(resolved.model, resolved.objectives)
    for name, plugin in resolved.objectives.items():
        check_config(f"objectives.{name}", plugin.config, ctx)
    for name, plugin in resolved.schedules.items():
        check_config(f"schedules.{name}", plugin.config, ctx)
    for path in ("optimizer", "lr_schedule"):
        plugin = getattr(resolved, path)
        check_config(path, plugin.config, ctx)
        check_fields(path, plugin.config, OPTIM_RULES)
    if not resolved.objectives:
        fail(
            "objectives",
            {},
            "no objective is configured; add one with a loss (e.g. objectives.span_corruption)",
        )
    for registry, plugins in ((OBJECTIVES, resolved.objectives), (SCHEDULES, resolved.schedules)):
        for check in registry.section_checks():
            check(plugins, ctx)


# --------------------------------------------------------------------------- sections


def check_trainer(t: Any) -> None:
    positive_int("trainer.max_steps", t.max_steps)
    positive_int("trainer.batch_size", t.batch_size)
    positive_int("trainer.grad_accum_steps", t.grad_accum_steps)
    at_least("trainer.keep_checkpoints", t.keep_checkpoints, 1)
    at_least("trainer.log_every", t.log_every, 1)
    one_of("trainer.nonfinite", t.nonfinite, ("skip", "stop"))
    positive_int("trainer.max_consecutive_skips", t.max_consecutive_skips)
    at_least("trainer.eval_every", t.eval_every, 0)
    at_least("trainer.checkpoint_every", t.checkpoint_every, 0)
    at_least("trainer.eval_batches", t.eval_batches, 0)
    for name in t.eval_passes:
        one_of("trainer.eval_passes", name, EVAL_PASSES)
    if len(set(t.eval_passes)) < len(t.eval_passes):
        fail("trainer.eval_passes", list(t.eval_passes), "names a pass twice")
    at_least("trainer.downstream_every", t.downstream_every, 0)
    if t.downstream_every:
        from spactor.registry import TASKS  # filled by spactor.plugins.load_plugins, as validation requires

        if not t.downstream_tasks:
            fail("trainer.downstream_tasks", t.downstream_tasks, "must name at least one task")
        for name in t.downstream_tasks:
            one_of("trainer.downstream_tasks", name, TASKS.names())  # fine-tuned or zero-shot, as evaluate does
    # numpy's SeedSequence (the loader's shuffle) refuses negative seeds.
    at_least("trainer.seed", t.seed, 0)
    if t.clip_grad_norm is not None:
        positive("trainer.clip_grad_norm", t.clip_grad_norm)
    world = _world_size()
    if t.batch_size % world:
        fail(
            "trainer.batch_size",
            t.batch_size,
            f"must be divisible by the number of ranks (WORLD_SIZE={world})",
        )
    per_rank = t.batch_size // world
    if per_rank % t.grad_accum_steps:
        where = (
            f"the per-rank batch {per_rank} (trainer.batch_size {t.batch_size} / {world} ranks)"
            if world > 1
            else (f"trainer.batch_size {t.batch_size}")
        )
        fail("trainer.grad_accum_steps", t.grad_accum_steps, f"must divide {where}")


def _world_size() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def check_data(d: Any) -> None:
    at_least("data.input_length", d.input_length, 2)
    unit_interval("data.validation_fraction", d.validation_fraction)
    if d.num_workers is not None:
        at_least("data.num_workers", d.num_workers, 0)
    positive_int("data.tokenizer_vocab_size", d.tokenizer_vocab_size)
    one_of("data.backend", getattr(d, "backend", "default"), ("default", "fairseq2"))
    one_of("data.document_separator", getattr(d, "document_separator", "eos"), ("eos", "none"))
    from spactor.registry import SOURCES, RegistryError  # filled by load_plugins, as validation requires

    try:
        entry = SOURCES.get(d.source)
    except RegistryError as e:
        fail("data.source", d.source, str(e))
    fields = {f.name for f in dataclasses.fields(entry.config_cls)}
    for key, value in d.source_options.items():
        if key not in fields:
            fail(
                f"data.source_options.{key}",
                value,
                f"source '{d.source}' has no such option; valid: {', '.join(sorted(fields))}",
            )
    if d.source_options.get("max_document_chars") is not None:
        positive_int("data.source_options.max_document_chars", d.source_options["max_document_chars"])
    if "paths" in fields and not d.paths and not d.source_options.get("paths"):
        fail("data.paths", list(d.paths), f"source '{d.source}' needs at least one file or glob")


def check_run(r: Any) -> None:
    # A line break (or other control character) in a path is almost always a quoting
    # slip, and YAML folds a newline into a space: the run would land elsewhere unseen.
    if r.dir is not None and any(ord(c) < 32 or ord(c) == 127 for c in str(r.dir)):
        fail("run.dir", r.dir, "a directory name must be one line, without control characters")


def check_runtime(r: Any) -> None:
    one_of("runtime.device", r.device, DEVICES)
    one_of("runtime.precision", r.precision, PRECISIONS)  # bf16 on CPU is fine: CPU autocast
    one_of("runtime.activation_checkpointing", r.activation_checkpointing, ("none", "full", "selective"))
    compiled = compile_mode(r.compile)
    one_of("runtime.compile", compiled, COMPILE_MODES)
    if compiled == "model" and (r.fsdp if r.fsdp is not None else _world_size() > 1):
        fail("runtime.compile", r.compile, "compiles the whole forward on one device, outside FSDP's hooks; "
                                          "under FSDP use runtime.compile=blocks")
    # FSDP shards parameters over processes; one CPU process has nothing to shard with.
    for key in ("fsdp", "distributed", "parallelism"):
        value = getattr(r, key, None)
        if not _enabled(value):
            continue
        if _world_size() <= 1 and (r.device == "cpu" or (r.device == "auto" and not _cuda_available())):
            fail(
                f"runtime.{key}",
                value,
                "FSDP needs several processes (launch with torchrun) and is meant for GPUs; "
                "one CPU process has nothing to shard with: turn it off",
            )


def _enabled(value: Any) -> bool:
    if value is None or value is False:
        return False
    if isinstance(value, str):
        return value.lower() not in ("", "none", "off", "false", "no", "ddp", "single")
    if dataclasses.is_dataclass(value):
        return bool(getattr(value, "enabled", True))
    if isinstance(value, dict):
        return bool(value.get("enabled", True)) and bool(value)
    return bool(value)


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


# --------------------------------------------------------------------------- model


def check_model(model: Plugin, input_length: int) -> int | None:
    """Run the architecture config's own check; return the discriminator's hidden size
    (None for an architecture whose config has no ``hidden_size()``)."""
    cfg = model.config
    check_config("model", cfg, CheckContext(input_length=input_length, world_size=_world_size()))
    hidden_size = getattr(cfg, "hidden_size", None)
    return int(hidden_size()) if callable(hidden_size) else None


def model_shape(model: Plugin) -> ModelShape | None:
    """The discriminator's dimensions from its (checked) config; None for an architecture
    whose config has no ``shape()``."""
    shape = getattr(model.config, "shape", None)
    return shape() if callable(shape) else None


def check_capabilities(model: Plugin, objectives: dict[str, Plugin]) -> None:
    """Refuse an objective whose ``NEEDS`` the architecture's ``CAPABILITIES`` cannot meet,
    naming both, from the classes the factories are annotated to return (a factory
    without the annotation is checked when it is built, ``spactor.train.builders``)."""
    arch_cls = factory_class(ARCHITECTURES.get(model.type))
    if arch_cls is None:
        return
    capabilities = capabilities_of(arch_cls)
    for name, plugin in objectives.items():
        cls = factory_class(OBJECTIVES.get(plugin.type))
        problem = capability_problem(f"objectives.{name}", getattr(cls, "NEEDS", ()), model.type, capabilities)
        if problem is not None:
            raise ConfigError(problem)


# --------------------------------------------------------------------------- optimizer


def _rule_optim(key: str, name: str, value: Any) -> None:
    """The optimizers and LR schedules (``spactor.train.optim.optimizers``), by field name."""
    if value is None or isinstance(value, bool):
        return
    if name in ("lr", "scale"):
        positive(key, value)
    elif name in ("min_lr", "weight_decay"):
        non_negative(key, value)
    elif name in ("decay_steps", "min_dim_size_to_factor"):
        positive_int(key, value)
    elif name == "clipping_threshold":
        positive(key, value)
    elif name.endswith("_steps"):
        at_least(key, value, 0)
    elif name.startswith("eps") and is_number(value):
        positive(key, value)
    elif name == "betas":
        for i, beta in enumerate(value):
            unit_interval(f"{key}[{i}]", beta)


OPTIM_RULES = _rule_optim


# --------------------------------------------------------------------------- objectives


def knob_values(objectives: dict[str, Plugin]) -> dict[str, float] | None:
    """Every knob path -> its configured value, as the runner will see it; None when an
    objective's class (and so its ``KNOBS``) cannot be told from its factory's return
    annotation without building it (the runner then checks the schedules)."""
    knobs: dict[str, float] = {}
    for name, plugin in objectives.items():
        cls = factory_class(OBJECTIVES.get(plugin.type))
        names = getattr(cls, "KNOBS", None)
        if names is None:
            return None
        for knob in names:
            value = getattr(plugin.config, knob, None)
            if is_number(value) or isinstance(value, bool):
                knobs[f"objectives.{name}.{knob}"] = float(value)
    return knobs


# --------------------------------------------------------------------------- before training


def check_files(resolved: Resolved, tokenizer: str | None = None) -> list[str]:
    """What ``spactor train`` checks before it builds data or a model: each plugin config's
    ``check_files(where, ctx)`` (e.g. a frozen RTD generator's checkpoint), which returns
    lines saying where loaded weights come from. ``tokenizer``: the SentencePiece model the
    run will use (default ``data.tokenizer``). Not part of :func:`validate`: ``flops`` and
    ``preview`` of a frozen recipe need no trained generator."""
    lines: list[str] = []
    hidden: int | None = None
    for name, plugin in resolved.objectives.items():
        check = getattr(plugin.config, "check_files", None)
        if not callable(check):
            continue
        if hidden is None:
            hidden = check_model(resolved.model, resolved.cfg.data.input_length)
        lines += check(
            f"objectives.{name}", FileCheckContext(resolved, hidden, tokenizer, model_shape(resolved.model))
        )
    return lines
