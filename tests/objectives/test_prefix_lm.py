"""prefix_lm: T5's split distribution (and its density generalisation), T5's chunk length
and float32 rounding against a reference written here from T5's ``prefix_lm`` /
``random_prefix_noise_mask``, exact reconstruction, EOS on both sides, static shapes, the
decoder loss, config errors."""

from __future__ import annotations

import math

import pytest
import torch

from spactor.architectures.t5 import T5Config
from spactor.architectures.t5_plugin import build_t5
from spactor.objectives.base import ObjectiveContext, SharedForward, Vocab
from spactor.objectives.prefix_lm import PrefixLM, PrefixLMConfig, min_prefix_length, prefix_chunk_length
from spactor.objectives.span_corruption import SpanCorruption, SpanCorruptionConfig
from spactor.plugins import load_plugins
from spactor.registry import OBJECTIVES

from roles import ctx_for  # tests/roles.py: tests/ is on sys.path (rootdir conftest)

VOCAB = Vocab(size=512, first_sentinel_id=499, mask_id=500)
LENGTH = 40  # encoder input length
CHUNK = LENGTH - 1  # raw tokens per example (T5's split_tokens_to_inputs_length)


def build(length: int = LENGTH, **cfg) -> PrefixLM:
    return PrefixLM(PrefixLMConfig(**cfg), ObjectiveContext("prefix_lm", VOCAB, length, None))


def split(obj: PrefixLM, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    original = torch.randint(3, VOCAB.last_sentinel_id, (batch, obj.raw_length(obj.input_length)), generator=g)
    return obj.transform({"original": original}, g)


@pytest.mark.parametrize("density", [0.5, 0.25])
def test_split_point_is_uniform_over_its_range(density):
    obj = build(noise_density=density)
    out = split(obj, 20000, seed=1)
    prefix = out["prefix_length"]
    low = min_prefix_length(CHUNK, density)
    assert low == (1 if density == 0.5 else round(0.5 * (CHUNK - 1)))  # T5: [1, N) at 0.5
    values = torch.arange(low, CHUNK)
    assert prefix.min() == low and prefix.max() == CHUNK - 1
    freq = torch.bincount(prefix - low, minlength=len(values)).double()
    expected = len(prefix) / len(values)
    chi2 = (((freq - expected) ** 2) / expected).sum().item()
    dof = len(values) - 1
    assert chi2 < dof + 5 * math.sqrt(2 * dof)
    # The decoder predicts about `density` of the chunk.
    suffix_fraction = (CHUNK - prefix).double().mean().item() / CHUNK
    assert suffix_fraction == pytest.approx(density, abs=0.03)


def t5_prefix_lm_range(inputs_length: int, noise_density: float) -> tuple[int, int, int]:
    """(chunk length, shortest prefix, longest prefix) of T5's ``prefix_lm``
    (t5/data/preprocessors.py), written here from its semantics: ``
    split_tokens_to_inputs_length`` cuts ``inputs_length - 1`` tokens (``add_eos`` leaves
    room for EOS); ``random_prefix_noise_mask`` draws the prefix uniformly in
    ``[min_input_tokens, length - 1]`` with ``min_input_tokens = min(length - 1, max(1,
    int32(tf.math.round((1 - 2d) * float32(length - 1)))))`` — the Python float operand
    becomes float32 and ``tf.math.round`` rounds half to even, as ``torch.round``."""
    length = inputs_length - 1
    longest = length - 1
    f32 = torch.float32
    scaled = torch.tensor(1 - 2 * noise_density, dtype=f32) * torch.tensor(longest, dtype=f32)
    return length, min(longest, max(1, int(torch.round(scaled)))), longest


@pytest.mark.parametrize("density", [0.5, 0.45, 0.25, 0.15])
def test_chunk_and_split_range_are_t5s(density):
    """Every input length 3..4097 (chunks of 2..4096 tokens): the chunk is T5's
    ``inputs_length - 1`` and the shortest prefix T5's float32 count."""
    float64_differs = 0
    for inputs_length in range(3, 4098):
        length, low, high = t5_prefix_lm_range(inputs_length, density)
        assert prefix_chunk_length(inputs_length) == length
        assert min_prefix_length(length, density) == low, (inputs_length, density)
        float64_differs += min(high, max(1, round((1 - 2 * density) * high))) != low
    # The audit's count: float64 rounding is off by one for 205 of the 4,095 lengths at
    # 0.45 (chunk 16: 1.5 in float32, 1.4999999999999996 in float64); none at these others.
    assert float64_differs == {0.45: 205, 0.15: 39}.get(density, 0)


@pytest.mark.parametrize("inputs_length, density", [(512, 0.5), (17, 0.45), (512, 0.45)])
def test_transform_draws_t5s_range(inputs_length, density):
    """512 → 511-token chunks, prefix 1..510 at 0.5 (T5's); chunk 16 at 0.45 starts at 2."""
    length, low, high = t5_prefix_lm_range(inputs_length, density)
    obj = build(inputs_length, noise_density=density)
    assert obj.raw_length(inputs_length) == length
    out = split(obj, 20000, seed=4)
    assert out["original"].shape[1] == length
    assert int(out["prefix_length"].min()) == low and int(out["prefix_length"].max()) == high
    assert out["encoder_input"].shape[1] == out["decoder_target"].shape[1] == inputs_length
    if (inputs_length, density) == (512, 0.5):
        assert (low, high) == (1, 510)
    if inputs_length == 17:
        assert low == 2  # float64 would say 1


def test_inputs_and_targets_reconstruct_the_chunk():
    obj = build()
    g = torch.Generator().manual_seed(2)
    original = torch.randint(3, VOCAB.last_sentinel_id, (200, CHUNK), generator=g)
    # A document boundary inside the chunk stays (spactor packs documents; T5's
    # prefix_lm would cut each document on its own, UL2's S runs on packed text).
    original[:, CHUNK // 2] = VOCAB.eos_id
    out = obj.transform({"original": original}, g)
    for i in range(200):
        p = int(out["prefix_length"][i])
        enc, tgt = out["encoder_input"][i], out["decoder_target"][i]
        assert enc[p] == VOCAB.eos_id and (enc[p + 1 :] == VOCAB.pad_id).all()
        s = CHUNK - p
        assert 1 <= s <= CHUNK - 1 and tgt[s] == VOCAB.eos_id
        assert (tgt[s + 1 :] == VOCAB.pad_id).all()
        assert torch.equal(torch.cat([enc[:p], tgt[:s]]), out["original"][i])
        assert torch.equal(out["noise_mask"][i], torch.arange(CHUNK) >= p)
    assert (out["prefix_length"] > CHUNK // 2 + 1).any() and (out["prefix_length"] <= CHUNK // 2).any()
    assert torch.equal(out["decoder_input"][:, 1:], out["decoder_target"][:, :-1])


def test_static_shapes_and_no_length_change():
    obj = build()
    assert obj.raw_length(LENGTH) == CHUNK
    shapes = {tuple((k, tuple(v.shape)) for k, v in split(obj, 8, seed).items()) for seed in range(5)}
    assert len(shapes) == 1
    shape = dict(next(iter(shapes)))
    assert shape["encoder_input"] == shape["decoder_target"] == (8, LENGTH)


def test_loss_is_span_corruptions_decoder_loss():
    torch.manual_seed(0)
    model = build_t5(T5Config(size="tiny", dropout=0.0), VOCAB.size)
    obj = build()
    batch = split(obj, 4, seed=3)
    forward = SharedForward(model, batch, VOCAB.pad_id)
    out = obj.loss(batch, forward, ctx_for(obj, batch))
    sc = SpanCorruption(SpanCorruptionConfig(), ObjectiveContext("sc", VOCAB, LENGTH, None))
    ref = sc.loss(batch, forward, ctx_for(sc, batch))  # the same decoder pass
    assert torch.equal(out.loss.total, ref.loss.total) and torch.equal(out.loss.count, ref.loss.count)
    assert out.loss.count == obj.count(batch) == (batch["decoder_target"] != VOCAB.pad_id).sum()
    out.loss.total.backward()  # gradients reach the encoder through the decoder
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_bad_density_is_one_line():
    with pytest.raises(ValueError, match=r"^objectives\.prefix_lm\.noise_density must be in \(0, 0.5\]"):
        build(noise_density=0.6)


def test_registered():
    load_plugins()
    assert OBJECTIVES.get("prefix_lm").config_cls is PrefixLMConfig
