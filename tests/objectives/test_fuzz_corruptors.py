"""Property-based fuzzing of the corruptors (hypothesis): for any chunk length >= 2, noise
density, mean span length, MLM ratio and seed —

* span corruption is exactly invertible, with T5's counts (and the documented cap for
  degenerate settings), sentinels in order, fixed shapes, padding only at the end;
* mlm_mask chooses exactly round(ratio * n) real tokens per row and never touches
  sentinels, EOS, padding or an existing [M];
* span corruption -> mlm_mask, with the [M]s filled back from ``mlm_labels``, still
  reconstructs the original;
* the same seed gives the same batch.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from spactor.objectives.base import ObjectiveContext, Vocab
from spactor.objectives.mlm_mask import MODES, MlmMask, MlmMaskConfig
from spactor.objectives.span_corruption import (
    SpanCorruption,
    SpanCorruptionConfig,
    max_raw_length,
    reconstruct,
    span_corrupt,
    span_counts,
)

VOCAB = Vocab(size=32128)  # T5: pad 0, EOS 1, UNK 2, sentinels 32099..32000, [M] 32100
FUZZ = settings(max_examples=50, deadline=None)

lengths = st.integers(min_value=2, max_value=700)
densities = st.floats(min_value=0.005, max_value=0.995, allow_nan=False)
mean_spans = st.floats(min_value=0.25, max_value=20.0, allow_nan=False)
ratios = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
seeds = st.integers(min_value=0, max_value=2**31 - 1)
batches = st.integers(min_value=1, max_value=3)


def originals(batch: int, length: int, seed: int) -> torch.Tensor:
    """Real ids (UNK included) with EOS at random document boundaries and an occasional
    [M] that was in the data already; never pad, never a sentinel."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 32000, (batch, length), generator=g)
    u = torch.rand(batch, length, generator=g)
    ids[u < 0.03] = VOCAB.eos_id
    ids[u > 0.99] = VOCAB.mask_id
    return ids


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def is_sentinel(ids: torch.Tensor) -> torch.Tensor:
    return (ids >= VOCAB.last_sentinel_id) & (ids <= VOCAB.first_sentinel_id)


def expected_counts(n: int, density: float, mu: float) -> tuple[int, int]:
    """T5's rule, plus the cap span_corruption documents for degenerate settings (every
    span non-empty: at most num_noise noise spans and n - num_noise non-noise ones)."""
    num_noise = min(max(int(np.round(np.float32(n) * np.float32(density))), 1), n - 1)  # tf.round, float32
    t5_spans = max(1, int(np.round(np.float32(num_noise) / np.float32(mu))))
    return num_noise, min(t5_spans, num_noise, n - num_noise)


def max_fitting(input_length: int, density: float, mu: float) -> int:
    n = 2
    while span_counts(n + 1, density, mu).encoder_length <= input_length:
        n += 1
    return n


def mlm(ratio: float, mode: str = "replace_all") -> MlmMask:
    ctx = ObjectiveContext(name="mlm_mask", vocab=VOCAB, input_length=0, model=None)
    return MlmMask(MlmMaskConfig(ratio=ratio, mode=mode), ctx)


def runs(mask: torch.Tensor) -> int:
    """Number of maximal runs of True in a 1-D bool tensor."""
    m = mask.long()
    return int((m[1:] > m[:-1]).sum()) + int(m[0])


# -- span corruption ---------------------------------------------------------------------


@FUZZ
@given(length=lengths, density=densities, mu=mean_spans)
def test_counts_follow_t5s_formulas(length, density, mu):
    counts = span_counts(length, density, mu)
    num_noise, num_spans = expected_counts(length, density, mu)
    assert (counts.num_noise, counts.num_spans) == (num_noise, num_spans)
    assert 1 <= counts.num_noise <= length - 1 and 1 <= counts.num_spans
    assert counts.encoder_length == length - num_noise + num_spans + 1
    assert counts.target_length == num_noise + num_spans + 1
    # Away from degenerate settings the cap never applies: exactly T5's numbers.
    if mu >= 1 and num_noise <= length - num_noise:
        assert counts.num_spans == max(1, round(num_noise / mu))


@FUZZ
@given(
    length=lengths, density=densities, mu=mean_spans, seed=seeds, batch=batches, extra_pad=st.integers(0, 5)
)
def test_span_corruption_reconstructs_exactly(length, density, mu, seed, batch, extra_pad):
    original = originals(batch, length, seed)
    counts = span_counts(length, density, mu)
    if counts.num_spans > VOCAB.num_sentinels:
        try:
            span_corrupt(original, density, mu, VOCAB, gen(seed))
        except ValueError as e:
            assert "sentinels" in str(e)
            return
        raise AssertionError("more spans than sentinels must be refused")
    pad_to = counts.encoder_length + extra_pad
    out = span_corrupt(original, density, mu, VOCAB, gen(seed), pad_to=pad_to)
    enc, tgt, noise = out["encoder_input"], out["decoder_target"], out["noise_mask"]
    assert enc.shape == (batch, pad_to) and tgt.shape == (batch, counts.target_length)
    assert (
        torch.equal(out["decoder_input"][:, 1:], tgt[:, :-1])
        and (out["decoder_input"][:, 0] == VOCAB.pad_id).all()
    )
    sentinels = torch.tensor([VOCAB.sentinel_id(k) for k in range(counts.num_spans)])
    for i in range(batch):
        assert torch.equal(reconstruct(enc[i], tgt[i], VOCAB), original[i])
        # T5's structure: num_noise noise tokens in num_spans runs, starting with non-noise.
        assert int(noise[i].sum()) == counts.num_noise and runs(noise[i]) == counts.num_spans
        assert not noise[i, 0]
        # Sentinels <extra_id_0>, <extra_id_1>, ... in order, once each, in input and target.
        assert torch.equal(enc[i][is_sentinel(enc[i])], sentinels)
        assert torch.equal(tgt[i][is_sentinel(tgt[i])], sentinels)
        assert tgt[i, 0] == VOCAB.sentinel_id(0) and tgt[i, -1] == VOCAB.eos_id
        # EOS right after the content, then padding only.
        assert enc[i, counts.encoder_length - 1] == VOCAB.eos_id
        assert (enc[i, counts.encoder_length :] == VOCAB.pad_id).all()
        assert not (enc[i, : counts.encoder_length] == VOCAB.pad_id).any()


@FUZZ
@given(input_length=st.integers(3, 400), density=densities, mu=st.floats(1.0, 10.0), seed=seeds)
def test_objective_fills_input_length(input_length, density, mu, seed):
    """The objective asks the data for max_raw_length tokens and pads to input_length."""
    ctx = ObjectiveContext(name="span_corruption", vocab=VOCAB, input_length=input_length, model=None)
    try:
        sc = SpanCorruption(SpanCorruptionConfig(noise_density=density, mean_noise_span_length=mu), ctx)
    except ValueError as e:  # too short to corrupt, or too many spans for 100 sentinels
        assert "input_length" in str(e) or "sentinels" in str(e)
        return
    assert sc.chunk_length == max_raw_length(input_length, density, mu)
    original = originals(2, sc.chunk_length, seed)
    batch = sc.transform({"original": original}, gen(seed))
    assert batch["encoder_input"].shape == (2, input_length)
    # The longest that fits; at density 0.5 T5's helper may take one token less.
    longest = max_fitting(input_length, density, mu)
    assert sc.chunk_length in ((longest, longest - 1) if density == 0.5 else (longest,))
    for i in range(2):
        assert torch.equal(
            reconstruct(batch["encoder_input"][i], batch["decoder_target"][i], VOCAB), original[i]
        )


# -- mlm_mask ----------------------------------------------------------------------------


@FUZZ
@given(
    length=lengths,
    density=densities,
    mu=mean_spans,
    ratio=ratios,
    seed=seeds,
    batch=batches,
    mode=st.sampled_from(MODES),
)
def test_mlm_mask_counts_and_never_touches_specials(length, density, mu, ratio, seed, batch, mode):
    counts = span_counts(length, density, mu)
    assume(counts.num_spans <= VOCAB.num_sentinels)
    enc = span_corrupt(
        originals(batch, length, seed), density, mu, VOCAB, gen(seed), pad_to=counts.encoder_length + 3
    )["encoder_input"]
    out = mlm(ratio, mode).transform({"encoder_input": enc}, gen(seed + 1))
    masked, chosen = out["encoder_input"], out["mlm_mask"]
    special = VOCAB.is_special(enc)  # pad, EOS, sentinels, [M] already in the data
    assert not (chosen & special).any()
    assert torch.equal(masked[special], enc[special])
    assert torch.equal(masked[~chosen], enc[~chosen])
    real = (~special).sum(dim=1)
    for i in range(batch):
        assert int(chosen[i].sum()) == round(int(real[i]) * ratio)
    if ratio > 0:
        assert torch.equal(out["mlm_labels"], torch.where(chosen, enc, torch.full_like(enc, VOCAB.pad_id)))
        replaced = masked[chosen]
        if mode == "replace_all":
            assert (replaced == VOCAB.mask_id).all()
        else:  # [M], the original, or (bert) a random ordinary token: never a special id
            assert not (VOCAB.is_special(replaced) & (replaced != VOCAB.mask_id)).any()


@FUZZ
@given(length=lengths, density=densities, mu=mean_spans, ratio=ratios, seed=seeds, batch=batches)
def test_span_corruption_then_mlm_mask_reconstructs(length, density, mu, ratio, seed, batch):
    original = originals(batch, length, seed)
    counts = span_counts(length, density, mu)
    assume(counts.num_spans <= VOCAB.num_sentinels)
    rng = gen(seed)
    sc = span_corrupt(original, density, mu, VOCAB, rng, pad_to=counts.encoder_length + 2)
    out = mlm(ratio).transform(sc, rng)
    filled = torch.where(out["mlm_mask"], out.get("mlm_labels", out["encoder_input"]), out["encoder_input"])
    assert torch.equal(filled, sc["encoder_input"])
    for i in range(batch):
        assert torch.equal(reconstruct(filled[i], out["decoder_target"][i], VOCAB), original[i])


# -- determinism -------------------------------------------------------------------------


@FUZZ
@given(length=lengths, density=densities, mu=mean_spans, ratio=ratios, seed=seeds, batch=batches)
def test_same_seed_same_batch(length, density, mu, ratio, seed, batch):
    assume(span_counts(length, density, mu).num_spans <= VOCAB.num_sentinels)
    original = originals(batch, length, seed)

    def corrupt() -> dict[str, torch.Tensor]:
        rng = gen(seed)
        return mlm(ratio, "bert").transform(span_corrupt(original, density, mu, VOCAB, rng), rng)

    first, second = corrupt(), corrupt()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
