"""Train-step throughput: SC, SpacTor stage 1 and 2, ELECTRA, Fast-ELECTRA.

One full optimizer step of the runner (``spactor.train.step.train_step``: corruption,
generator, encode, losses, backward, optimizer; without the logging step's metrics) on a
fixed batch of random real token ids; beside it, in the same group, Hugging Face's
``T5ForConditionalGeneration`` on the SC step's batch (``benchmarks.hf_peer``), the
reference ``compare`` divides the SC step by. ``small`` is T5.1.0-Small at 512/114,
batch 2, on CPU (``-k small``). ``tiny`` runs on CPU in fp32; ``base``/``large`` on CUDA
with bf16 autocast and the recipes' optimizers (spactor's Adafactor, batched over
parameters; AdamW ``fused``). ``extra_info``: seq/s and raw tokens/s from the median step
time, the step's FLOPs (``spactor.train.flops.counting``) and MFU. The step builders are shared
with ``benchmarks.profile_step`` (op tables of both steps side by side).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from benchmarks.conftest import device_for, record, synchronize
from spactor.config import Resolved, load_config
from spactor.vocab import Vocab
from spactor.plugins import load_plugins
from spactor.registry import OPTIMIZERS
from spactor.train.flops.counting import count_step_flops, count_vocab
from spactor.train.parallel import DistInfo
from spactor.train.stages import trainable_parameters
from tests.train.stage1 import release_stage1
from spactor.train.step import StepContext, TrainModules, train_step
from spactor.train.builders import build_model, build_objectives, raw_length_for, seeded_generator

load_plugins()


@dataclass(frozen=True)
class Size:
    batch_size: int
    input_length: int
    vocab_pieces: int  # 8k: the built-in tokenizer; 32k: T5's SentencePiece model
    rounds: int
    warmup_rounds: int


SIZES = {
    "tiny": Size(batch_size=8, input_length=128, vocab_pieces=8000, rounds=8, warmup_rounds=2),
    # T5.1.0-Small at T5's 512/114 on CPU: the side-by-side with HF the issue quotes
    "small": Size(batch_size=2, input_length=512, vocab_pieces=32000, rounds=3, warmup_rounds=1),
    "base": Size(batch_size=32, input_length=512, vocab_pieces=32000, rounds=10, warmup_rounds=3),
    "large": Size(batch_size=16, input_length=512, vocab_pieces=32000, rounds=10, warmup_rounds=3),
}
# benchmark name -> (recipe, stage)
CASES = {
    "sc": ("sc", 1),
    "spactor_stage1": ("spactor", 1),
    "spactor_stage2": ("spactor", 2),
    "electra": ("electra", 1),
    "fast_electra": ("fast_electra", 1),
}


# what HF's T5 is compared with: the same work as the SC step
SPAN_CORRUPTION_STEP = "t5_span_corruption_step"


def _resolved(recipe: str, size: str, device: torch.device) -> Resolved:
    shape = SIZES[size]
    return load_config(recipe, [
        f"model.size={size}",
        f"data.input_length={shape.input_length}",
        f"data.tokenizer_vocab_size={shape.vocab_pieces}",
        f"trainer.batch_size={shape.batch_size}",
        f"runtime.device={device.type}",
    ])


@dataclass
class BuiltStep:
    resolved: Resolved
    vocab: Vocab
    raw_length: int  # tokens per sequence before corruption
    step: Callable[[], None]


def build_spactor_step(case: str, size: str, device: torch.device) -> BuiltStep:
    """The runner's step of ``case`` at ``size``, on a fixed batch.
    A step without metrics (``with_metrics=False``): the steps between logging steps."""
    recipe, stage = CASES[case]
    shape = SIZES[size]
    resolved = _resolved(recipe, size, device)
    vocab = count_vocab(resolved.cfg.data)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*frozen generator without generator_checkpoint.*")
        model = build_model(resolved, vocab)
        objectives = build_objectives(resolved, vocab, model)
    modules = TrainModules(model, objectives, vocab.pad_id)
    if stage == 2:
        release_stage1(modules, objectives, optimizer=None)
    modules.to(device).train()
    optimizer = OPTIMIZERS.get(resolved.optimizer.type).factory(
        resolved.optimizer.config, trainable_parameters(modules)
    )
    ctx = StepContext(
        dist=DistInfo(),
        transform_rng=seeded_generator(1, device),
        modify_rng=seeded_generator(2, device),
        clip_grad_norm=resolved.cfg.trainer.clip_grad_norm,
        amp_dtype=torch.bfloat16 if device.type == "cuda" else None,
    )
    raw_length = raw_length_for(objectives, shape.input_length)
    data_rng = torch.Generator().manual_seed(3)
    original = torch.randint(3, vocab.last_sentinel_id, (shape.batch_size, raw_length), generator=data_rng)
    batch = {"original": original.to(device)}

    def step() -> None:
        train_step(modules, optimizer, batch, ctx, with_metrics=False)
        synchronize(device)

    return BuiltStep(resolved, vocab, raw_length, step)


def build_hf_step(size: str, device: torch.device) -> BuiltStep:
    """Hugging Face's ``T5ForConditionalGeneration`` step on the SC step's batch."""
    from benchmarks.hf_peer import hf_inputs, hf_t5_for, hf_train_step
    from spactor.train.step import apply_transforms

    shape = SIZES[size]
    resolved = _resolved("sc", size, device)
    vocab = count_vocab(resolved.cfg.data)
    torch.manual_seed(0)
    model = hf_t5_for(resolved, vocab).to(device).train()
    objectives = build_objectives(resolved, vocab, build_model(resolved, vocab))  # for the corruption only
    raw_length = raw_length_for(objectives, shape.input_length)
    data_rng = torch.Generator().manual_seed(3)
    original = torch.randint(3, vocab.last_sentinel_id, (shape.batch_size, raw_length), generator=data_rng)
    batch = apply_transforms(objectives, {"original": original}, seeded_generator(1, torch.device("cpu")))
    inputs = {k: v.to(device) for k, v in hf_inputs(batch, vocab).items()}
    train = hf_train_step(model, resolved, inputs, torch.bfloat16 if device.type == "cuda" else None)

    def step() -> None:
        train()
        synchronize(device)

    return BuiltStep(resolved, vocab, raw_length, step)


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("case", list(CASES))
def test_train_step(benchmark, min_rounds: int, case: str, size: str) -> None:
    device = device_for(size)
    recipe, stage = CASES[case]
    shape = SIZES[size]
    built = build_spactor_step(case, size, device)
    resolved, vocab, raw_length, step = built.resolved, built.vocab, built.raw_length, built.step

    benchmark.group = f"train_step-{size}"
    benchmark.pedantic(step, rounds=max(shape.rounds, min_rounds), warmup_rounds=shape.warmup_rounds,
                       iterations=1)
    flops = count_step_flops(resolved, stage=stage, vocab=vocab, device=device)
    record(
        benchmark,
        sequences=shape.batch_size,
        tokens=shape.batch_size * raw_length,
        device=device,
        flops_per_step=flops.flops_per_step,
        recipe=recipe,
        stage=stage,
        size=size,
        input_length=shape.input_length,
        kind=SPAN_CORRUPTION_STEP if case == "sc" else case,
    )


@pytest.mark.parametrize("size", list(SIZES))
def test_hf_t5_step(benchmark, min_rounds: int, size: str) -> None:
    """Hugging Face's T5ForConditionalGeneration on the SC step's batch: the reference of
    the SC benchmark in the same group (``compare`` prints sc ÷ HF as "vs reference")."""
    pytest.importorskip("transformers")
    device = device_for(size)
    shape = SIZES[size]
    built = build_hf_step(size, device)
    resolved, vocab, raw_length, step = built.resolved, built.vocab, built.raw_length, built.step

    benchmark.group = f"train_step-{size}"
    benchmark.pedantic(step, rounds=max(shape.rounds, min_rounds), warmup_rounds=shape.warmup_rounds,
                       iterations=1)
    flops = count_step_flops(resolved, stage=1, vocab=vocab, device=device)  # the same model's FLOPs
    record(
        benchmark,
        sequences=shape.batch_size,
        tokens=shape.batch_size * raw_length,
        device=device,
        flops_per_step=flops.flops_per_step,
        recipe="hf_t5",
        size=size,
        input_length=shape.input_length,
        kind=SPAN_CORRUPTION_STEP,
        reference=True,
    )
