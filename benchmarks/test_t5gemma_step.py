"""Encoder-decoder train-step throughput on ``t5gemma``: spactor's SC step beside Hugging
Face's ``T5GemmaForConditionalGeneration`` of the same dimensions (the reference
``compare`` divides by, ``kind`` ``t5gemma_span_corruption_step``), and SpacTor stage 1.

Both take one optimizer step on the same span-corrupted batch with the recipe's optimizer
and clipping. HF's model is built from the ``config.json`` ``spactor export`` writes for
the same model (no download); it runs its ``eager`` attention, the one its T5Gemma
supports besides flash-attn-2 (``_supports_sdpa = False``: soft-capping), spactor's runs
SDPA. ``tiny`` and ``small`` run on CPU in fp32 (``-k tiny``), ``base`` on CUDA with
bf16 autocast.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from benchmarks.conftest import device_for, record, synchronize
from benchmarks.hf_peer import hf_inputs, hf_train_step
from benchmarks.test_train_step import BuiltStep
from spactor.config import Resolved, load_config
from spactor.plugins import load_plugins
from spactor.registry import OPTIMIZERS
from spactor.train.builders import build_model, build_objectives, raw_length_for, seeded_generator
from spactor.train.flops.counting import count_step_flops, count_vocab
from spactor.train.parallel import DistInfo
from spactor.train.stages import trainable_parameters
from spactor.train.step import StepContext, TrainModules, apply_transforms, train_step

load_plugins()

T5GEMMA_SC_STEP = "t5gemma_span_corruption_step"


@dataclass(frozen=True)
class Size:
    batch_size: int
    input_length: int
    vocab_pieces: int
    rounds: int
    warmup_rounds: int


SIZES = {
    "tiny": Size(batch_size=8, input_length=128, vocab_pieces=8000, rounds=8, warmup_rounds=2),
    "small": Size(batch_size=2, input_length=512, vocab_pieces=32000, rounds=3, warmup_rounds=1),
    "base": Size(batch_size=32, input_length=512, vocab_pieces=32000, rounds=10, warmup_rounds=3),
}


def _resolved(recipe: str, size: str, device: torch.device) -> Resolved:
    shape = SIZES[size]
    return load_config(recipe, [
        "model.arch=t5gemma",
        f"model.size={size}",
        f"data.input_length={shape.input_length}",
        f"data.tokenizer_vocab_size={shape.vocab_pieces}",
        f"trainer.batch_size={shape.batch_size}",
        f"runtime.device={device.type}",
    ])  # fmt: skip


def _original(resolved: Resolved, size: str, raw_length: int) -> torch.Tensor:
    vocab = count_vocab(resolved.cfg.data)
    return torch.randint(3, vocab.last_sentinel_id, (SIZES[size].batch_size, raw_length),
                         generator=torch.Generator().manual_seed(3))


def _amp(device: torch.device) -> torch.dtype | None:
    return torch.bfloat16 if device.type == "cuda" else None


def build_t5gemma_step(recipe: str, size: str, device: torch.device) -> BuiltStep:
    """The runner's step of ``recipe`` on ``t5gemma`` at ``size`` on a fixed batch."""
    resolved = _resolved(recipe, size, device)
    vocab = count_vocab(resolved.cfg.data)
    torch.manual_seed(0)
    model = build_model(resolved, vocab)
    objectives = build_objectives(resolved, vocab, model)
    modules = TrainModules(model, objectives, vocab.pad_id).to(device).train()
    optimizer = OPTIMIZERS.get(resolved.optimizer.type).factory(resolved.optimizer.config,
                                                                trainable_parameters(modules))
    ctx = StepContext(dist=DistInfo(), transform_rng=seeded_generator(1, device), modify_rng=seeded_generator(2, device),
                      clip_grad_norm=resolved.cfg.trainer.clip_grad_norm, amp_dtype=_amp(device))
    raw_length = raw_length_for(objectives, SIZES[size].input_length)
    batch = {"original": _original(resolved, size, raw_length).to(device)}

    def step() -> None:
        train_step(modules, optimizer, batch, ctx, with_metrics=False)
        synchronize(device)

    return BuiltStep(resolved, vocab, raw_length, step)


def build_hf_t5gemma_step(size: str, device: torch.device) -> BuiltStep:
    """``T5GemmaForConditionalGeneration`` with the same dimensions on the SC step's batch."""
    from transformers import T5GemmaConfig, T5GemmaForConditionalGeneration

    from spactor.architectures.t5gemma_hf import hf_t5gemma_config

    resolved = _resolved("sc", size, device)
    vocab = count_vocab(resolved.cfg.data)
    torch.manual_seed(0)
    config = hf_t5gemma_config(resolved.model.config, vocab.size, vocab.pad_id, vocab.eos_id)
    for stack in ("encoder", "decoder"):
        config[stack] = {**config[stack], "use_cache": False}
    hf_config = T5GemmaConfig.from_dict(config)
    hf_config._attn_implementation = "eager"
    model = T5GemmaForConditionalGeneration(hf_config).to(device).train()
    objectives = build_objectives(resolved, vocab, build_model(resolved, vocab))  # the corruption only
    raw_length = raw_length_for(objectives, SIZES[size].input_length)
    batch = apply_transforms(objectives, {"original": _original(resolved, size, raw_length)},
                             seeded_generator(1, torch.device("cpu")))
    inputs = {k: v.to(device) for k, v in hf_inputs(batch, vocab).items()}
    # every decoder position is real (HF would otherwise mask the pad start token)
    inputs["decoder_attention_mask"] = torch.ones_like(inputs["decoder_input_ids"])
    train = hf_train_step(model, resolved, inputs, _amp(device))

    def step() -> None:
        train()
        synchronize(device)

    return BuiltStep(resolved, vocab, raw_length, step)


def _record(benchmark, built: BuiltStep, size: str, device: torch.device, kind: str, **extra) -> None:
    shape = SIZES[size]
    flops = count_step_flops(built.resolved, stage=1, vocab=built.vocab, device=device).flops_per_step
    record(benchmark, sequences=shape.batch_size, tokens=shape.batch_size * built.raw_length, device=device,
           flops_per_step=flops, size=size, input_length=shape.input_length, kind=kind, **extra)


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("recipe", ["sc", "spactor"])
def test_t5gemma_step(benchmark, recipe: str, size: str) -> None:
    device = device_for(size)
    built = build_t5gemma_step(recipe, size, device)
    benchmark.group = f"t5gemma_step-{size}"
    shape = SIZES[size]
    benchmark.pedantic(built.step, rounds=shape.rounds, warmup_rounds=shape.warmup_rounds, iterations=1)
    _record(benchmark, built, size, device, T5GEMMA_SC_STEP if recipe == "sc" else "t5gemma_spactor_stage1",
            recipe=recipe, stage=1)


@pytest.mark.parametrize("size", list(SIZES))
def test_hf_t5gemma_step(benchmark, size: str) -> None:
    """Hugging Face's T5GemmaForConditionalGeneration: the reference of the t5gemma SC step."""
    pytest.importorskip("transformers")
    device = device_for(size)
    built = build_hf_t5gemma_step(size, device)
    benchmark.group = f"t5gemma_step-{size}"
    shape = SIZES[size]
    benchmark.pedantic(built.step, rounds=shape.rounds, warmup_rounds=shape.warmup_rounds, iterations=1)
    _record(benchmark, built, size, device, T5GEMMA_SC_STEP, recipe="hf_t5gemma", reference=True)
