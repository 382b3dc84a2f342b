"""Semantic checks of a resolved config, before any work starts.

``spactor.config`` already rejects unknown keys and values of the wrong type (OmegaConf's
structured configs). :func:`validate` then checks what the types cannot say: ranges
(ratios in [0, 1), densities in (0, 1), τ ≥ 0, positive sizes), choices (device,
precision, model presets) and rules that involve several keys:

* span corruption at ``data.input_length`` needing more than the vocabulary's 100
  sentinels (T5: inputs beyond ~1809 tokens at density 0.15, μ 3);
* an RTD generator wider than its discriminator, or a ``generator_d_model`` that
  ``generator_d_kv`` does not divide;
* objectives in an order that cannot work (``mlm_mask`` before ``span_corruption``, an
  ``rtd``/``mlm`` objective without ``mlm_mask``), or none with a loss;
* schedules driving knobs that do not exist (or one knob twice): the schedules are
  built here against the objectives' ``KNOBS`` — cheap, no model needed;
* learned position tables shorter than the input; a batch that does not split over the
  ranks (``WORLD_SIZE``) and accumulation steps; FSDP asked for on one CPU process.

Every problem is one :class:`~spactor.config.ConfigError` line,
``<key>: <value> — <rule>``; the CLI prints it and exits with code 2. The first problem
found is reported.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from typing import Any

from spactor.config import ConfigError, Plugin, Resolved
from spactor.contract import check_contract, objective_class

DEVICES = ("cpu", "cuda", "auto")
PRECISIONS = ("fp32", "bf16", "auto")
NUM_SENTINELS = 100  # T5's <extra_id_0..99>; every spactor tokenizer has exactly these


def fail(key: str, value: Any, rule: str) -> typing.NoReturn:
    raise ConfigError(f"{key}: {value!r} — {rule}")


def validate(resolved: Resolved) -> None:
    """Raise a one-line ``ConfigError`` for the first problem in ``resolved``."""
    cfg = resolved.cfg
    check_trainer(cfg.trainer)
    check_data(cfg.data)
    check_runtime(cfg.runtime)
    width = check_model(resolved.model, cfg.data.input_length)
    for name, plugin in resolved.objectives.items():
        check_fields(f"objectives.{name}", plugin.config, OBJECTIVE_RULES)
    for name, plugin in resolved.schedules.items():
        check_fields(f"schedules.{name}", plugin.config, SCHEDULE_RULES)
    check_fields("optimizer", resolved.optimizer.config, OPTIM_RULES)
    check_fields("lr_schedule", resolved.lr_schedule.config, OPTIM_RULES)
    check_choices(resolved.objectives)
    check_objective_order(resolved.objectives)
    check_span_corruption(resolved)
    check_rtd(resolved, width)
    check_knobs_and_schedules(resolved)


# --------------------------------------------------------------------------- helpers


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive(key: str, value: Any) -> None:
    if not (_is_number(value) and value > 0 and math.isfinite(value)):
        fail(key, value, "must be > 0")


def positive_int(key: str, value: Any) -> None:
    if not (_is_int(value) and value > 0):
        fail(key, value, "must be a positive integer")


def at_least(key: str, value: Any, low: int) -> None:
    if not (_is_number(value) and value >= low):
        fail(key, value, f"must be >= {low}")


def non_negative(key: str, value: Any) -> None:
    if not (_is_number(value) and value >= 0 and math.isfinite(value)):
        fail(key, value, "must be >= 0 (and finite)")


def unit_interval(key: str, value: Any, *, open_low: bool = False) -> None:
    """[0, 1) or, with ``open_low``, (0, 1). NaN fails both."""
    ok = _is_number(value) and (value > 0 if open_low else value >= 0) and value < 1
    if not ok:
        fail(key, value, "must be in (0, 1)" if open_low else "must be in [0, 1)")


def one_of(key: str, value: Any, choices: tuple[str, ...] | list[str]) -> None:
    if str(value) not in choices:
        fail(key, value, f"must be one of {', '.join(choices)}")


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
    at_least("trainer.downstream_every", t.downstream_every, 0)
    if t.downstream_every:
        from spactor.registry import TASKS  # filled by spactor.plugins.load_plugins, as validation requires

        if not t.downstream_tasks:
            fail("trainer.downstream_tasks", t.downstream_tasks, "must name at least one task")
        for name in t.downstream_tasks:
            one_of("trainer.downstream_tasks", name, TASKS.names())
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
    import spactor.data.sources  # noqa: F401 — registers the built-in sources
    from spactor.registry import SOURCES, RegistryError

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


def check_runtime(r: Any) -> None:
    one_of("runtime.device", r.device, DEVICES)
    one_of("runtime.precision", r.precision, PRECISIONS)  # bf16 on CPU is fine: CPU autocast
    one_of("runtime.activation_checkpointing", r.activation_checkpointing, ("none", "full", "selective"))
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

T5_DIMS = ("d_model", "d_ff", "num_heads", "num_layers", "num_decoder_layers", "d_kv")


def check_init_from(value: str | None) -> None:
    """The directory must be there before any work; its dimensions are compared with the
    model's when the model is built (the vocabulary comes from the tokenizer)."""
    if not value:
        return
    if not value.startswith("hf:"):
        fail("model.init_from", value, "must be hf:PATH (a directory written by `spactor export` or save_pretrained)")
    path = os.path.expanduser(value[3:])
    if not os.path.isfile(os.path.join(path, "config.json")):
        fail("model.init_from", value, f"no config.json in {path!r}: not a Hugging Face T5 directory")


def check_model(model: Plugin, input_length: int) -> int | None:
    """Validate the architecture's config; return the discriminator's hidden size (None
    for an architecture this module does not know)."""
    cfg = model.config
    check_fields("model", cfg, MODEL_RULES)
    if model.type == "t5":
        from spactor.architectures.t5 import T5_SIZES, resolve_t5_dims

        one_of("model.version", str(cfg.version), list(T5_SIZES))
        one_of("model.size", cfg.size, list(T5_SIZES[str(cfg.version)]))
        for name in T5_DIMS:
            if getattr(cfg, name) is not None:
                positive_int(f"model.{name}", getattr(cfg, name))
        try:
            dims = resolve_t5_dims(cfg)
        except ValueError as e:
            raise ConfigError(f"model: {e}") from None
        check_init_from(getattr(cfg, "init_from", None))
        return int(dims["d_model"])
    if model.type == "encoder":
        from spactor.architectures import encoder

        for key, choices in (("size", "ENCODER_SIZES"), ("positions", "POSITIONS"), ("norm", "NORMS")):
            if hasattr(encoder, choices) and hasattr(cfg, key):
                one_of(f"model.{key}", getattr(cfg, key), list(getattr(encoder, choices)))
        for name in ("d_model", "num_heads", "num_layers", "d_ff", "d_kv"):
            if getattr(cfg, name, None) is not None:
                positive_int(f"model.{name}", getattr(cfg, name))
        try:
            spec = encoder.resolve_encoder_spec(cfg)
        except ValueError as e:
            raise ConfigError(f"model: {e}") from None
        if spec.positions == "learned" and spec.max_positions < input_length:
            fail(
                "model.max_positions",
                spec.max_positions,
                "the learned position table needs a row per position: at least data.input_length "
                f"({input_length})",
            )
        return int(spec.d_model)
    return None


# --------------------------------------------------------------------------- field rules

Rule = typing.Callable[[str, str, Any], None]


def _rule_objective(key: str, name: str, value: Any) -> None:
    if value is None or isinstance(value, bool):
        return
    if "density" in name:
        unit_interval(key, value, open_low=True)
    elif name.endswith("ratio"):
        unit_interval(key, value)
    elif name == "mean_noise_span_length":
        positive(key, value)
    elif name == "z_loss" or name.endswith("_z_loss"):
        non_negative(key, value)
    elif name == "weight" or name.endswith("_weight"):
        non_negative(key, value)
    elif name.endswith("temperature"):
        positive(key, value)
    elif name.endswith("dropout"):
        unit_interval(key, value)
    elif _is_int(value) and _is_size_name(name):
        positive_int(key, value)


def _is_size_name(name: str) -> bool:
    sizes = ("layers", "d_model", "d_ff", "heads", "d_kv", "hidden", "max_positions")
    return name in sizes or any(name.endswith("_" + s) for s in sizes)


def _rule_schedule(key: str, name: str, value: Any) -> None:
    if value is None or isinstance(value, bool):
        return
    if (name == "tau" or name.endswith("_tau")) and not (_is_int(value) and value >= 0):
        fail(key, value, "must be >= 0 (a step), or null for never")


def _rule_model(key: str, name: str, value: Any) -> None:
    if value is None or isinstance(value, bool):
        return
    if name.endswith("dropout"):
        unit_interval(key, value)
    elif name in (
        "vocab_size",
        "relative_attention_num_buckets",
        "relative_attention_max_distance",
        "max_positions",
    ):
        positive_int(key, value)
    elif name == "init_std":
        positive(key, value)
    elif name == "attention":
        from spactor.architectures.layers import ATTENTION_BACKENDS

        one_of(key, value, ATTENTION_BACKENDS)


def _rule_optim(key: str, name: str, value: Any) -> None:
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
    elif name.startswith("eps") and _is_number(value):
        positive(key, value)
    elif name == "betas":
        for i, beta in enumerate(value):
            unit_interval(f"{key}[{i}]", beta)


OBJECTIVE_RULES: Rule = _rule_objective
SCHEDULE_RULES: Rule = _rule_schedule
MODEL_RULES: Rule = _rule_model
OPTIM_RULES: Rule = _rule_optim


def check_fields(path: str, cfg: Any, rule: Rule) -> None:
    if not dataclasses.is_dataclass(cfg):
        return
    for f in dataclasses.fields(cfg):
        rule(f"{path}.{f.name}", f.name, getattr(cfg, f.name))


# --------------------------------------------------------------------------- objectives


# objective type -> field -> (module, name of the tuple of valid values in it)
CHOICES: dict[str, dict[str, tuple[str, str]]] = {
    "mlm_mask": {"mode": ("spactor.objectives.mlm_mask", "MODES")},
    "rtd": {
        "generator_logits": ("spactor.objectives.rtd", "LOGIT_MODES"),
        "embedding_sharing": ("spactor.architectures.generator", "SHARING_MODES"),
        "generator_head": ("spactor.architectures.generator", "HEADS"),
    },
}


def check_choices(objectives: dict[str, Plugin]) -> None:
    import importlib

    for name, plugin in objectives.items():
        for key, (module, constant) in CHOICES.get(plugin.type, {}).items():
            try:
                valid = getattr(importlib.import_module(module), constant)
            except (ImportError, AttributeError):
                continue
            if hasattr(plugin.config, key):
                one_of(f"objectives.{name}.{key}", getattr(plugin.config, key), list(valid))


def check_objective_order(objectives: dict[str, Plugin]) -> None:
    """The batch fields each objective requires are provided before it, from the classes'
    declarations (``spactor.contract``); skipped when a class cannot be found unbuilt."""
    classes = [(name, objective_class(p.type)) for name, p in objectives.items()]
    if all(cls is not None for _, cls in classes):
        check_contract(classes)  # type: ignore[arg-type]


def check_span_corruption(resolved: Resolved) -> None:
    """Refuse inputs that need more noise spans than there are sentinels (and inputs too
    short to corrupt), with the numbers and the longest input_length that would fit."""
    for name, plugin in resolved.objectives.items():
        if plugin.type == "span_corruption":
            _check_sentinels(
                f"objectives.{name}",
                resolved.cfg.data.input_length,
                plugin.config.noise_density,
                plugin.config.mean_noise_span_length,
            )


def _check_sentinels(where: str, input_length: int, density: float, mu: float) -> None:
    from spactor.objectives.span_corruption import max_raw_length, span_counts

    settings = f"{where}: noise_density {density}, mean_noise_span_length {mu}"

    def spans(length: int) -> int | None:
        """Noise spans of the raw chunk an input of ``length`` tokens is cut from."""
        try:
            return span_counts(max_raw_length(length, density, mu), density, mu).num_spans
        except ValueError:
            return None  # too short to corrupt at all

    def raw_spans(length: int) -> int:
        return span_counts(length, density, mu).num_spans

    # Spans only grow with the chunk, which is (about) as long as the input or longer:
    # for an absurd length, answer without walking up to the raw chunk length.
    if input_length > HUGE_INPUT and raw_spans(input_length) > NUM_SENTINELS:
        needed = raw_spans(input_length)
    else:
        needed = spans(input_length)
        if needed is None:
            fail(
                "data.input_length",
                input_length,
                f"too short for span corruption ({settings}): the shortest corrupted input is 3 tokens",
            )
        if needed <= NUM_SENTINELS:
            return
    longest = _longest_fitting(input_length, spans, raw_spans)
    fail(
        "data.input_length",
        input_length,
        f"span corruption ({settings}) would need at least {needed} noise spans per chunk, but there are "
        f"only {NUM_SENTINELS} sentinels; use data.input_length <= {longest}, a lower noise_density or a "
        f"longer mean_noise_span_length",
    )


HUGE_INPUT = 1 << 16


def _bisect_last(lo: int, hi: int, fits: typing.Callable[[int], bool]) -> int:
    """Largest n in [lo, hi) with ``fits(n)``, for a monotone ``fits`` true at ``lo`` and
    false at ``hi``."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _longest_fitting(
    upper: int, spans: typing.Callable[[int], int | None], raw_spans: typing.Callable[[int], int]
) -> int:
    """Largest input length < ``upper`` whose chunk needs <= NUM_SENTINELS spans (the
    count never decreases with the length). ``raw_spans`` (cheap: spans of a chunk of
    exactly n tokens) first bounds the search, so it stays fast for huge ``upper``."""
    if (spans(2) or 0) > NUM_SENTINELS:
        return 0
    bound = upper
    if raw_spans(upper) > NUM_SENTINELS:
        bound = _bisect_last(2, upper, lambda n: raw_spans(n) <= NUM_SENTINELS) + 1
    if (spans(bound) or 0) <= NUM_SENTINELS:
        return bound  # degenerate settings (raw chunk shorter than the input): a safe answer
    return _bisect_last(2, bound, lambda n: (spans(n) or 0) <= NUM_SENTINELS)


def check_rtd(resolved: Resolved, hidden_size: int | None) -> None:
    for name, plugin in resolved.objectives.items():
        if plugin.type != "rtd":
            continue
        cfg = plugin.config
        where = f"objectives.{name}"
        if getattr(cfg, "frozen", False) and getattr(cfg, "embedding_sharing", None) == "shared":
            fail(
                f"{where}.embedding_sharing",
                "shared",
                "a frozen generator cannot share the discriminator's token embedding (D keeps training it); "
                "use none or gdes",
            )
        for key, valid in (
            ("generator_norm", ("rmsnorm", "layernorm")),
            ("generator_positions", ("relative", "learned")),
        ):
            if hasattr(cfg, key):
                one_of(f"{where}.{key}", getattr(cfg, key), list(valid))
        if hidden_size is None:
            continue
        g_width = getattr(cfg, "generator_d_model", None)
        if g_width is not None and g_width > hidden_size:
            fail(
                f"{where}.generator_d_model",
                g_width,
                f"wider than the discriminator (hidden size {hidden_size}): a generator as strong as D "
                "collapses the detection task; use about 1/4-1/3 of D",
            )
        width = g_width or hidden_size
        d_kv = getattr(cfg, "generator_d_kv", None)
        if getattr(cfg, "generator_heads", 1) is None and d_kv and width % d_kv:
            fail(
                f"{where}.generator_d_model" if g_width else f"{where}.generator_d_kv",
                g_width if g_width else d_kv,
                f"the generator width {width} is not a multiple of generator_d_kv {d_kv}; "
                "set generator_heads",
            )


# --------------------------------------------------------------------------- knobs


def knob_values(objectives: dict[str, Plugin]) -> dict[str, float] | None:
    """Every knob path -> its configured value, as the runner will see it; None when an
    objective's class (and so its KNOBS) cannot be found without building it."""
    knobs: dict[str, float] = {}
    for name, plugin in objectives.items():
        cls = objective_class(plugin.type)
        if cls is None:
            return None
        for knob in cls.KNOBS:
            value = getattr(plugin.config, knob, None)
            if _is_number(value) or isinstance(value, bool):
                knobs[f"objectives.{name}.{knob}"] = float(value)
    return knobs


def check_knobs_and_schedules(resolved: Resolved) -> None:
    classes = {name: objective_class(p.type) for name, p in resolved.objectives.items()}
    if classes and all(c is not None for c in classes.values()):
        from spactor.objectives.base import Objective

        def has_loss(cls: type) -> bool:
            overrides = cls.loss is not Objective.loss  # type: ignore[attr-defined]
            return overrides or cls.modify is not Objective.modify  # type: ignore[attr-defined]

        if not any(has_loss(c) for c in classes.values() if c is not None):
            fail(
                "objectives",
                list(classes),
                "no objective has a loss; add one (e.g. objectives.span_corruption)",
            )
    elif not resolved.objectives:
        fail(
            "objectives",
            {},
            "no objective is configured; add one with a loss (e.g. objectives.span_corruption)",
        )
    knobs = knob_values(resolved.objectives)
    if knobs is None or not resolved.schedules:
        return  # an objective's knobs are unknown until it is built: the runner checks
    from spactor.schedules.base import build

    try:
        build(resolved.schedules, knobs, resolved.cfg.trainer.max_steps)
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"schedules: {e}") from None


# --------------------------------------------------------------------------- before training


def check_generator_checkpoints(resolved: Resolved, tokenizer: str | None = None) -> list[str]:
    """What ``spactor train`` checks before it builds data or a model: a frozen RTD
    generator (Fast-ELECTRA) has a ``generator_checkpoint``, and every configured one
    exists and holds a generator of this recipe's dimensions and vocabulary (read from
    its metadata; no weights are loaded). Returns one line per generator saying where
    it comes from. ``tokenizer``: the SentencePiece model the run will use (default
    ``data.tokenizer``). Not part of :func:`validate`: ``flops`` and ``preview`` of a
    frozen recipe need no trained generator."""
    import torch

    lines: list[str] = []
    for name, plugin in resolved.objectives.items():
        if plugin.type != "rtd":
            continue
        cfg, key = plugin.config, f"objectives.{name}.generator_checkpoint"
        path = getattr(cfg, "generator_checkpoint", None)
        if not path:
            if getattr(cfg, "frozen", False):
                fail(key, path, "a frozen generator must be loaded from a trained run: set it to a run "
                                "directory, a checkpoint directory or a .pt state dict")
            continue
        if not os.path.exists(os.path.expanduser(path)):
            fail(key, path, "no such file or directory")
        rows = _vocab_rows(resolved, tokenizer)
        if rows is None:
            continue  # no readable tokenizer: the data set-up reports it
        from spactor.architectures.generator import Generator, check_generator_checkpoint
        from spactor.objectives.rtd import generator_config

        hidden = check_model(resolved.model, resolved.cfg.data.input_length)
        if hidden is None:
            continue
        with torch.device("meta"):
            embedding = torch.nn.Embedding(rows, hidden)
            generator = Generator(generator_config(cfg, hidden, resolved.cfg.data.input_length), embedding)
        try:
            source, step = check_generator_checkpoint(generator, os.path.expanduser(path), name)
        except (OSError, KeyError, ValueError, RuntimeError) as e:
            message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            fail(key, path, f"not usable: {message}")
        lines.append(f"objectives.{name}: generator loaded from {source}"
                     + (f" (step {step})" if step is not None else ""))
    return lines


def _vocab_rows(resolved: Resolved, tokenizer: str | None) -> int | None:
    from spactor.data.tokenizer import Tokenizer, t5_vocab

    path = tokenizer or resolved.cfg.data.tokenizer
    if not path:
        return t5_vocab(resolved.cfg.data.tokenizer_vocab_size).size
    try:
        return Tokenizer.load(os.path.expanduser(path)).vocab().size
    except Exception:  # noqa: BLE001 — a missing or broken model is the data set-up's error to report
        return None
