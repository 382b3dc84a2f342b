"""Decoder-only train-step throughput: spactor's ``causal_lm`` step on ``llama`` beside
Hugging Face's ``LlamaForCausalLM`` of the same dimensions (the reference ``compare``
divides by, ``kind`` ``llama_causal_lm_step``).

Both take one optimizer step on the same packed batch (``lm_input`` → ``lm_target``,
every position a target) with the recipe's optimizer (AdamW) and clipping. HF's model is
built from the ``config.json`` ``spactor export`` writes for the same model (no
download) and computes its mean next-token loss with the labels already shifted
(``shift_labels``), the same targets spactor's sum covers. ``tiny`` and ``small`` run on
CPU in fp32 (``-k tiny``), ``base`` on CUDA with bf16 autocast.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from benchmarks.conftest import device_for, record, synchronize
from benchmarks.hf_peer import hf_train_step
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

CAUSAL_LM_STEP = "llama_causal_lm_step"


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
    "base": Size(batch_size=16, input_length=1024, vocab_pieces=32000, rounds=10, warmup_rounds=3),
}


def _resolved(size: str, device: torch.device) -> Resolved:
    shape = SIZES[size]
    return load_config("causal_lm", [
        f"model.size={size}",
        f"data.input_length={shape.input_length}",
        f"data.tokenizer_vocab_size={shape.vocab_pieces}",
        f"trainer.batch_size={shape.batch_size}",
        f"runtime.device={device.type}",
    ])  # fmt: skip


def _original(resolved: Resolved, size: str, raw_length: int) -> torch.Tensor:
    vocab = count_vocab(resolved.cfg.data)
    data_rng = torch.Generator().manual_seed(3)
    return torch.randint(3, vocab.last_sentinel_id, (SIZES[size].batch_size, raw_length), generator=data_rng)


def _amp(device: torch.device) -> torch.dtype | None:
    return torch.bfloat16 if device.type == "cuda" else None


def build_llama_step(size: str, device: torch.device) -> BuiltStep:
    """The runner's ``causal_lm`` step on ``llama`` at ``size`` on a fixed batch."""
    resolved = _resolved(size, device)
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


def build_hf_llama_step(size: str, device: torch.device) -> BuiltStep:
    """``LlamaForCausalLM`` with the same dimensions on the same batch."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from spactor.architectures.llama_hf import hf_llama_config

    resolved = _resolved(size, device)
    vocab = count_vocab(resolved.cfg.data)
    torch.manual_seed(0)
    config = hf_llama_config(resolved.model.config, vocab.size, vocab.pad_id, vocab.eos_id)
    model = LlamaForCausalLM(LlamaConfig.from_dict({**config, "use_cache": False})).to(device).train()
    objectives = build_objectives(resolved, vocab, build_model(resolved, vocab))  # the batch layout only
    raw_length = raw_length_for(objectives, SIZES[size].input_length)
    batch = apply_transforms(objectives, {"original": _original(resolved, size, raw_length)},
                             seeded_generator(1, torch.device("cpu")))
    labels = batch["lm_target"].masked_fill(batch["lm_target"] == vocab.pad_id, -100).to(device)
    inputs = {"input_ids": batch["lm_input"].to(device), "labels": labels, "shift_labels": labels}
    train = hf_train_step(model, resolved, inputs, _amp(device))

    def step() -> None:
        train()
        synchronize(device)

    return BuiltStep(resolved, vocab, raw_length, step)


def _record(benchmark, built: BuiltStep, size: str, device: torch.device, **extra) -> None:
    shape = SIZES[size]
    try:
        flops = count_step_flops(built.resolved, stage=1, vocab=built.vocab, device=device).flops_per_step
    except Exception:  # noqa: BLE001 — throughput stands without the FLOPs column
        flops = None
    record(benchmark, sequences=shape.batch_size, tokens=shape.batch_size * built.raw_length, device=device,
           flops_per_step=flops, size=size, input_length=shape.input_length, kind=CAUSAL_LM_STEP, **extra)


@pytest.mark.parametrize("size", list(SIZES))
def test_llama_causal_lm_step(benchmark, size: str) -> None:
    device = device_for(size)
    built = build_llama_step(size, device)
    benchmark.group = f"llama_step-{size}"
    shape = SIZES[size]
    benchmark.pedantic(built.step, rounds=shape.rounds, warmup_rounds=shape.warmup_rounds, iterations=1)
    _record(benchmark, built, size, device, recipe="causal_lm", stage=1)


@pytest.mark.parametrize("size", list(SIZES))
def test_hf_llama_step(benchmark, size: str) -> None:
    """Hugging Face's LlamaForCausalLM: the reference of the llama group."""
    pytest.importorskip("transformers")
    device = device_for(size)
    built = build_hf_llama_step(size, device)
    benchmark.group = f"llama_step-{size}"
    shape = SIZES[size]
    benchmark.pedantic(built.step, rounds=shape.rounds, warmup_rounds=shape.warmup_rounds, iterations=1)
    _record(benchmark, built, size, device, recipe="hf_llama", reference=True)
