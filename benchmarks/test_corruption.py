"""Corruption throughput: the vectorised span corruption and MLM masking against the
per-example numpy rendering of T5's preprocessors (``tests/reference_t5.py``),
at the paper's shapes: B = 64 raw chunks of N = 568 tokens (→ 512 / 114).

The reference carries ``extra_info["reference"] = True``; ``python -m benchmarks.compare``
reports every benchmark of the group against it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.conftest import record, synchronize
from spactor.data.tokenizer import t5_vocab
from spactor.objectives.base import ObjectiveContext
from spactor.objectives.mlm_mask import MlmMaskConfig, build_mlm_mask
from tests.reference_t5 import span_corrupt_batch
from spactor.objectives.span_corruption import span_corrupt

BATCH, RAW_LENGTH, INPUT_LENGTH = 64, 568, 512
DENSITY, MEAN_SPAN = 0.15, 3.0
VOCAB = t5_vocab(32000)  # T5's layout: sentinels 32099..32000, [M] 32100

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.tiny),
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
]


def originals(device: str = "cpu") -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(3, VOCAB.last_sentinel_id, (BATCH, RAW_LENGTH), generator=gen).to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_span_corruption(benchmark, min_rounds: int, device: str) -> None:
    dev = torch.device(device)
    batch = originals(device)
    rng = torch.Generator(device=dev).manual_seed(0)

    def corrupt() -> None:
        span_corrupt(batch, DENSITY, MEAN_SPAN, VOCAB, rng, pad_to=INPUT_LENGTH)
        synchronize(dev)

    benchmark.group = "corruption"
    benchmark.pedantic(corrupt, rounds=max(30, min_rounds), warmup_rounds=3, iterations=1)
    record(benchmark, sequences=BATCH, tokens=BATCH * RAW_LENGTH, device=dev, kind="span_corruption")


@pytest.mark.tiny
def test_span_corruption_numpy_reference(benchmark, min_rounds: int) -> None:
    batch = originals().numpy()
    rng = np.random.default_rng(0)
    benchmark.group = "corruption"
    benchmark.pedantic(
        lambda: span_corrupt_batch(batch, DENSITY, MEAN_SPAN, VOCAB, rng, pad_to=INPUT_LENGTH),
        rounds=max(5, min_rounds),
        warmup_rounds=1,
        iterations=1,
    )
    record(
        benchmark, sequences=BATCH, tokens=BATCH * RAW_LENGTH, device=torch.device("cpu"),
        kind="span_corruption", reference=True,
    )  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
def test_mlm_mask(benchmark, min_rounds: int, device: str) -> None:
    """15% [M] masking of the span-corrupted encoder input (SpacTor's stage 1)."""
    dev = torch.device(device)
    rng = torch.Generator(device=dev).manual_seed(0)
    corrupted = span_corrupt(originals(device), DENSITY, MEAN_SPAN, VOCAB, rng, pad_to=INPUT_LENGTH)
    ctx = ObjectiveContext(name="mlm_mask", vocab=VOCAB, input_length=INPUT_LENGTH, model=None)
    masking = build_mlm_mask(MlmMaskConfig(ratio=0.15), ctx)

    def mask() -> None:
        masking.transform(corrupted, rng)
        synchronize(dev)

    benchmark.group = "corruption"
    benchmark.pedantic(mask, rounds=max(30, min_rounds), warmup_rounds=3, iterations=1)
    record(benchmark, sequences=BATCH, tokens=BATCH * INPUT_LENGTH, device=dev, kind="mlm_mask")
