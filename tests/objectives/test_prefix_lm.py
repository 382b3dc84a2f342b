"""prefix_lm: T5's split distribution (and its density generalisation), exact
reconstruction, EOS on both sides, static shapes, the decoder loss, config errors."""

from __future__ import annotations

import math

import pytest
import torch

from spactor.architectures.t5 import T5Config
from spactor.architectures.t5_plugin import build_t5
from spactor.objectives.base import ObjectiveContext, SharedForward, Vocab
from spactor.objectives.prefix_lm import PrefixLM, PrefixLMConfig, min_prefix_length
from spactor.objectives.span_corruption import SpanCorruption, SpanCorruptionConfig
from spactor.plugins import load_plugins
from spactor.registry import OBJECTIVES

VOCAB = Vocab(size=512, first_sentinel_id=499, mask_id=500)
LENGTH = 40


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
    low = min_prefix_length(LENGTH, density)
    assert low == (1 if density == 0.5 else round(0.5 * (LENGTH - 1)))  # T5: [1, N) at 0.5
    values = torch.arange(low, LENGTH)
    assert prefix.min() == low and prefix.max() == LENGTH - 1
    freq = torch.bincount(prefix - low, minlength=len(values)).double()
    expected = len(prefix) / len(values)
    chi2 = (((freq - expected) ** 2) / expected).sum().item()
    dof = len(values) - 1
    assert chi2 < dof + 5 * math.sqrt(2 * dof)
    # The decoder predicts about `density` of the chunk.
    suffix_fraction = (LENGTH - prefix).double().mean().item() / LENGTH
    assert suffix_fraction == pytest.approx(density, abs=0.03)


def test_inputs_and_targets_reconstruct_the_chunk():
    out = split(build(), 200, seed=2)
    for i in range(200):
        p = int(out["prefix_length"][i])
        enc, tgt = out["encoder_input"][i], out["decoder_target"][i]
        assert enc[p] == VOCAB.eos_id and (enc[p + 1 :] == VOCAB.pad_id).all()
        s = LENGTH - p
        assert 1 <= s <= LENGTH - 1 and tgt[s] == VOCAB.eos_id
        assert (tgt[s + 1 :] == VOCAB.pad_id).all()
        assert torch.equal(torch.cat([enc[:p], tgt[:s]]), out["original"][i])
        assert torch.equal(out["noise_mask"][i], torch.arange(LENGTH) >= p)
    assert torch.equal(out["decoder_input"][:, 1:], out["decoder_target"][:, :-1])


def test_static_shapes_and_no_length_change():
    obj = build()
    assert obj.raw_length(LENGTH) == LENGTH
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
    out = obj.loss(batch, forward)
    sc = SpanCorruption(SpanCorruptionConfig(), ObjectiveContext("sc", VOCAB, LENGTH, None))
    ref = sc.loss(batch, forward)  # the same decoder pass
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
