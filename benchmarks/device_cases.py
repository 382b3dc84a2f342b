"""The cases the device check measures: spactor's and Hugging Face's T5 training steps,
built at the check's shapes on synthetic batches (see ``benchmarks.device_check``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from spactor.train.step import autocast


@dataclass(frozen=True)
class Settings:
    device: torch.device
    dry_run: bool
    input_length: int
    vocab_pieces: int
    sizes: dict[str, str]  # "base"/"large" → the model.size used
    batch: dict[str, int]  # size → timed batch
    small_batch: int  # host syncs, bf16 vs fp32, FSDP
    warmup_steps: int
    min_timed_steps: int
    timed_s: float  # per throughput case, after warm-up
    agreement_steps: int
    fsdp_steps: int
    budget_s: float
    peak_tflops: float | None
    overrides: tuple[str, ...] = ()  # --set: applied to every spactor case (an unknown key: unsupported)


class Unsupported(RuntimeError):
    """The build refuses an option (e.g. ``model.attention=flex`` before it exists)."""


# --------------------------------------------------------------------------- building a step


@dataclass
class Built:
    step: Callable[[], Any]  # one optimizer step; returns the loss (a float, or a tensor left on the device)
    flops_per_step: float | None
    sequences: int
    tokens: int  # raw tokens per step (the runner's tokens_per_s)
    extra: dict[str, Any] = field(default_factory=dict)


def _overrides(s: Settings, size: str, batch: int, precision: str, compile_: bool | str, extra: list[str]) -> list[str]:
    return [
        f"model.size={s.sizes[size]}",
        f"data.input_length={s.input_length}",
        f"data.tokenizer_vocab_size={s.vocab_pieces}",
        f"trainer.batch_size={batch}",
        f"runtime.device={s.device.type}",
        f"runtime.precision={precision}",
        f"runtime.compile={compile_ if isinstance(compile_, str) else ('true' if compile_ else 'false')}",
        "runtime.count_flops=false",
        "model.dropout=0.0",
        *extra,
    ]


def _load(recipe: str, overrides: list[str], extra: list[str] | None = None) -> Any:
    from spactor.config import load_config

    try:
        return load_config(recipe, [*overrides, *(extra or [])])
    except Exception as e:  # a key or value this build does not know
        raise Unsupported(f"{recipe} {' '.join(extra or overrides)}: {e}") from e


def _synthetic(vocab: Any, batch: int, length: int, seed: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab.last_sentinel_id, (batch, length), generator=gen).to(device)


def _forward_flops(run_forward: Callable[[], Any]) -> float:
    """Matmul-class FLOPs of one forward (FlopCounterMode), × 3 for forward + backward."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_sdpa(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
        return sdpa_flop_count(query, key, value)

    # torch's table has the CUDA attention kernels, not the CPU one: the same formula
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa}
    from spactor.architectures.flex_dense import DenseFlex

    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    # flex as SDPA on its dense mask (a dispatch mode has no rule for flex's operator):
    # the same matmuls, counted by the SDPA formula
    with torch.no_grad(), DenseFlex(), counter:
        run_forward()
    return 3.0 * counter.get_total_flops()


def build_spactor(s: Settings, recipe: str, size: str, batch: int, *, precision: str = "bf16",
                  compile_: bool | str = True, extra: list[str] | None = None, fsdp: bool = False,
                  seed: int = 0, count_flops: bool = True) -> Built:
    from spactor.registry import OPTIMIZERS
    from spactor.train.flops.counting import count_vocab
    from spactor.train.parallel import DistInfo
    from spactor.train.stages import trainable_parameters
    from spactor.train.step import StepContext, TrainModules, apply_transforms, train_step
    from spactor.train.builders import build_on_meta, raw_length_for, seeded_generator
    from spactor.train.loop import autocast_dtype, parallelize

    resolved = _load(recipe, _overrides(s, size, batch, precision, compile_, []), [*s.overrides, *(extra or [])])
    if fsdp:  # set past validation, which refuses FSDP in one process: this one sets up its world of one
        resolved.cfg.runtime.fsdp = True
    vocab = count_vocab(resolved.cfg.data)
    device = s.device
    torch.manual_seed(seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, objectives, program = build_on_meta(resolved, vocab)
    except ValueError as e:  # e.g. "unknown attention 'flex'"
        raise Unsupported(str(e)) from e
    modules = TrainModules(model, objectives, vocab.pad_id)
    if program is not None:
        program.bind(modules)
    info = DistInfo()
    amp_dtype = autocast_dtype(precision, device)
    raw_length = raw_length_for(objectives, s.input_length)
    original = _synthetic(vocab, batch, raw_length, seed + 3, device)
    flops = None
    if fsdp:  # shard on meta, then materialise: the runner's order
        parallelize(modules, objectives, resolved, device, info)
        if program is not None:
            program.materialize(modules, device)
        else:
            modules.to(device)
    else:
        if program is not None:
            program.materialize(modules, device)
        else:
            modules.to(device)
        if count_flops:  # eagerly, before compile: a dispatch mode and compiled graphs do not mix
            prepared = apply_transforms(objectives, {"original": original}, seeded_generator(seed + 1, device))
            rng = seeded_generator(seed + 2, device)
            with autocast(amp_dtype, device):
                mb_ctx = modules.context(prepared, with_metrics=True)
                flops = _forward_flops(lambda: modules(prepared, rng, mb_ctx))
        parallelize(modules, objectives, resolved, device, info)
    modules.train()
    optimizer = OPTIMIZERS.get(resolved.optimizer.type).factory(resolved.optimizer.config, trainable_parameters(modules))
    ctx = StepContext(
        dist=info,
        transform_rng=seeded_generator(seed + 1, device),
        modify_rng=seeded_generator(seed + 1000, device),
        clip_grad_norm=resolved.cfg.trainer.clip_grad_norm,
        amp_dtype=amp_dtype,
        forward=modules.compiled_forward() if compile_ == "model" else None,
    )
    batch_data = {"original": original}

    def step() -> Any:  # a steady-state step: the logging step's metrics are not computed
        return train_step(modules, optimizer, batch_data, ctx, with_metrics=False).loss

    extra_info = {"recipe": recipe, "size": s.sizes[size], "compile": compile_, "precision": precision,
                  "attention": getattr(resolved.model.config, "attention", None)}
    return Built(step, flops, batch, batch * raw_length, extra_info)


def build_hf(s: Settings, size: str, batch: int, *, compile_: bool = True, seed: int = 0) -> Built:
    try:
        import transformers  # noqa: F401
    except ImportError as e:
        raise Unsupported("transformers is not installed") from e
    from benchmarks.hf_peer import hf_inputs, hf_t5_for, hf_train_step
    from spactor.train.flops.counting import count_vocab
    from spactor.train.step import apply_transforms
    from spactor.train.builders import build_model, build_objectives, raw_length_for, seeded_generator

    resolved = _load("sc", _overrides(s, size, batch, "bf16", compile_, []))
    vocab = count_vocab(resolved.cfg.data)
    device = s.device
    torch.manual_seed(seed)
    with torch.device("meta"):  # the corruption only: no weights
        objectives = build_objectives(resolved, vocab, build_model(resolved, vocab))
    raw_length = raw_length_for(objectives, s.input_length)
    original = _synthetic(vocab, batch, raw_length, seed + 3, torch.device("cpu"))
    prepared = apply_transforms(objectives, {"original": original}, seeded_generator(seed + 1, torch.device("cpu")))
    inputs = {k: v.to(device) for k, v in hf_inputs(prepared, vocab).items()}
    model = hf_t5_for(resolved, vocab).to(device).train()
    amp_dtype = torch.bfloat16
    with autocast(amp_dtype, device):
        flops = _forward_flops(lambda: model(**inputs))
    if compile_:
        for stack in (model.encoder, model.decoder):
            for block in stack.block:
                block.compile()
    train = hf_train_step(model, resolved, inputs, amp_dtype)
    return Built(train, flops, batch, batch * raw_length,
                 {"recipe": "hf_t5", "size": s.sizes[size], "compile": compile_, "precision": "bf16",
                  "attention": f"hf-{getattr(model.config, '_attn_implementation', None) or 'eager'}"})


def build_hf_llama(s: Settings, size: str, batch: int, *, compile_: bool = True, seed: int = 0) -> Built:
    """Hugging Face's ``LlamaForCausalLM`` with the ``causal_lm`` recipe's llama
    dimensions, on that recipe's batch (the same next-token targets, ``shift_labels``)."""
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as e:
        raise Unsupported("transformers is not installed") from e
    from benchmarks.hf_peer import hf_train_step
    from spactor.architectures.llama_hf import hf_llama_config
    from spactor.train.flops.counting import count_vocab
    from spactor.train.step import apply_transforms
    from spactor.train.builders import build_model, build_objectives, raw_length_for, seeded_generator

    resolved = _load("causal_lm", _overrides(s, size, batch, "bf16", compile_, []))
    vocab = count_vocab(resolved.cfg.data)
    device = s.device
    torch.manual_seed(seed)
    with torch.device("meta"):  # the batch layout only: no weights
        objectives = build_objectives(resolved, vocab, build_model(resolved, vocab))
    raw_length = raw_length_for(objectives, s.input_length)
    original = _synthetic(vocab, batch, raw_length, seed + 3, torch.device("cpu"))
    prepared = apply_transforms(objectives, {"original": original}, seeded_generator(seed + 1, torch.device("cpu")))
    labels = prepared["lm_target"].masked_fill(prepared["lm_target"] == vocab.pad_id, -100).to(device)
    inputs = {"input_ids": prepared["lm_input"].to(device), "labels": labels, "shift_labels": labels}
    config = hf_llama_config(resolved.model.config, vocab.size, vocab.pad_id, vocab.eos_id)
    model = LlamaForCausalLM(LlamaConfig.from_dict({**config, "use_cache": False})).to(device).train()
    amp_dtype = torch.bfloat16
    with autocast(amp_dtype, device):
        flops = _forward_flops(lambda: model(**inputs))
    if compile_:
        for layer in model.model.layers:
            layer.compile()
    train = hf_train_step(model, resolved, inputs, amp_dtype)
    return Built(train, flops, batch, batch * raw_length,
                 {"recipe": "hf_llama", "size": s.sizes[size], "compile": compile_, "precision": "bf16",
                  "attention": f"hf-{getattr(model.config, '_attn_implementation', None) or 'eager'}"})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
