"""T5 building blocks: buckets, RMSNorm, relative bias, SDPA vs eager attention, FFN."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from spactor.architectures.kernels import attend as dispatch
from spactor.architectures.kernels import mask_bias
from spactor.architectures.layers import (
    Attention,
    BlockSpec,
    FeedForward,
    RelativePositionBias,
    RMSNorm,
    padding_bias,
    relative_position_bucket,
)

DISTANCES = [-200, -128, -100, -50, -20, -16, -8, -1, 0, 1, 7, 8, 11, 12, 20, 127, 500]

# Bidirectional, 32 buckets → 16 per side (keys after the query get +16), max_exact = 8.
# |rp| < 8 is its own bucket; otherwise 8 + floor(log(|rp|/8) / log(128/8) * 8)
# = 8 + floor(2·log2(|rp|/8)), capped at 15:
#   200: 2·log2(25)=9.29→17→15   128: 8→16→15   100: 2·log2(12.5)=7.29→15
#   50: 2·log2(6.25)=5.29→13     20: 2·log2(2.5)=2.64→10   16: 2→10
#   8: 0→8   11: 2·log2(1.375)=0.92→8   12: 2·log2(1.5)=1.17→9   127: 7.98→15   500: →15
BIDIRECTIONAL = [15, 15, 15, 13, 10, 10, 8, 1, 0, 17, 23, 24, 24, 25, 26, 31, 31]

# Causal, 32 buckets, max_exact = 16; only the past (rp < 0) is distinguished, every
# rp >= 0 is bucket 0. n = -rp: n < 16 exact, else 16 + floor(log2(n/16) / 3 · 16), cap 31:
#   200: log2(12.5)=3.64→19.4→35→31   128: 3→16→31   100: log2(6.25)=2.64→14.1→30
#   50: log2(3.125)=1.64→8.77→24      20: log2(1.25)=0.32→1.72→17   16: 0→16
CAUSAL = [31, 31, 30, 24, 17, 16, 8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]


def test_bidirectional_buckets_known_values():
    rp = torch.tensor(DISTANCES)
    assert relative_position_bucket(rp, bidirectional=True).tolist() == BIDIRECTIONAL


def test_causal_buckets_known_values():
    rp = torch.tensor(DISTANCES)
    assert relative_position_bucket(rp, bidirectional=False).tolist() == CAUSAL


@settings(max_examples=50, deadline=None)
@given(st.integers(4, 128), st.integers(1, 512), st.booleans())
def test_buckets_in_range_and_monotone(num_buckets, extra_distance, bidirectional):
    max_distance = num_buckets // (4 if bidirectional else 2) + extra_distance
    rp = torch.arange(-3 * max_distance, 3 * max_distance + 1)
    buckets = relative_position_bucket(rp, bidirectional, num_buckets, max_distance)
    assert buckets.min() >= 0 and buckets.max() < num_buckets
    past = buckets[: 3 * max_distance + 1].flip(0)  # rp = 0, -1, -2, ...
    assert (past.diff() >= 0).all()
    if bidirectional:
        future = buckets[3 * max_distance + 1 :]  # rp = 1, 2, ...
        assert (future.diff() >= 0).all() and future.min() >= num_buckets // 2


def test_buckets_reject_max_distance_inside_exact_range():
    with pytest.raises(ValueError, match="max_distance"):
        relative_position_bucket(torch.arange(3), True, num_buckets=32, max_distance=8)


def test_rmsnorm_matches_formula_and_keeps_mean():
    norm = RMSNorm(8)
    norm.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(3, 8) + 5.0  # a large mean: LayerNorm would remove it, RMSNorm must not
    expected = norm.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(norm(x), expected)
    assert (norm(x).mean(-1) > 0.5).all()
    assert not hasattr(norm, "bias")


def test_rmsnorm_bf16_weights_give_bf16_output():
    norm = RMSNorm(8).to(torch.bfloat16)
    out = norm(torch.randn(2, 8, dtype=torch.float32))
    assert out.dtype == torch.bfloat16


def test_relative_position_bias_shape_and_lookup():
    rel = RelativePositionBias(num_heads=3, bidirectional=True)
    bias = rel(5, 7)
    assert bias.shape == (1, 3, 5, 7)
    buckets = relative_position_bucket(torch.tensor(6 - 2), True)  # key 6, query 2
    torch.testing.assert_close(bias[0, :, 2, 6], rel.embedding.weight[buckets])


def _spec(backend: str, ffn: str = "relu") -> BlockSpec:
    return BlockSpec(d_model=32, d_ff=64, num_heads=4, d_kv=8, ffn=ffn, attention=backend)


def _pair() -> tuple[Attention, Attention]:
    torch.manual_seed(0)
    sdpa = Attention(_spec("sdpa"))
    eager = Attention(_spec("eager"))
    eager.load_state_dict(sdpa.state_dict())
    return sdpa, eager


def _padding_mask() -> torch.Tensor:
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, :] = False  # a fully padded row must stay finite (uniform attention, no NaN)
    return mask


@pytest.mark.parametrize("padded", [False, True])
def test_sdpa_matches_eager_self_attention_encoder(padded):
    sdpa, eager = _pair()
    x = torch.randn(3, 6, 32)
    bias = RelativePositionBias(4, bidirectional=True)(6, 6)
    if padded:
        bias = mask_bias(bias, _padding_mask()[:, None, None, :])
    out = sdpa(x, bias)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, eager(x, bias), atol=1e-5, rtol=1e-5)


def test_sdpa_matches_eager_causal_self_attention():
    sdpa, eager = _pair()
    x = torch.randn(2, 5, 32)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    bias = mask_bias(RelativePositionBias(4, bidirectional=False)(5, 5), causal)
    torch.testing.assert_close(sdpa(x, bias), eager(x, bias), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padded", [False, True])
def test_sdpa_matches_eager_cross_attention(padded):
    sdpa, eager = _pair()
    x, memory = torch.randn(3, 4, 32), torch.randn(3, 6, 32)
    bias = padding_bias(_padding_mask(), torch.float32) if padded else None
    out = sdpa(x, bias, kv=memory)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, eager(x, bias, kv=memory), atol=1e-5, rtol=1e-5)


def test_eager_attention_has_no_score_scaling():
    q, k, v = torch.randn(3, 1, 2, 4, 8).unbind(0)
    expected = torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v  # no 1/sqrt(8)
    torch.testing.assert_close(dispatch(q, k, v, None, "eager", scale=1.0), expected)


@pytest.mark.parametrize("bias_shape", [(2, 3, 5, 5), (1, 3, 5, 5)])  # position + padding; causal position
def test_sdpa_with_a_learned_bias_on_cpu_matches_torchs_sdpa_with_gradients(bias_shape):
    # On CPU with a bias that needs a gradient, unscaled sdpa runs its explicit math
    # path instead of torch's math fallback: same values and gradients.
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g).requires_grad_() for _ in range(3))
    position = torch.randn(bias_shape, generator=g).requires_grad_()
    keep = torch.ones(bias_shape[0], 1, 1, 5, dtype=torch.bool)
    keep[0, ..., -2:] = False
    grad_out = torch.randn(2, 3, 5, 4, generator=g)
    results = []
    for attend in (
        lambda b: dispatch(q, k, v, b, "sdpa", scale=1.0),
        lambda b: F.scaled_dot_product_attention(q, k, v, attn_mask=b, scale=1.0),
    ):
        out = attend(mask_bias(position, keep))
        grads = torch.autograd.grad(out, (q, k, v, position), grad_out)
        results.append((out, *grads))
    for ours, torchs in zip(*results):
        torch.testing.assert_close(ours, torchs, atol=1e-5, rtol=1e-5)


def test_sdpa_with_fp32_bias_under_bf16_autocast_stays_finite():
    # fp32's finfo.min becomes -inf when naively cast to bf16; the cast must clamp.
    sdpa, _ = _pair()
    bias = padding_bias(_padding_mask(), torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sdpa(torch.randn(3, 6, 32), bias)
    assert torch.isfinite(out.float()).all()


def test_attention_projections_have_no_bias():
    attn = Attention(_spec("sdpa"))
    assert [name for name, _ in attn.named_parameters()] == ["q.weight", "k.weight", "v.weight", "o.weight"]
    assert attn.q.weight.shape == (4 * 8, 32)


def test_feedforward_relu_and_gated_gelu():
    relu = FeedForward(_spec("sdpa", "relu"))
    x = torch.randn(2, 3, 32)
    torch.testing.assert_close(relu(x), relu.wo(F.relu(relu.wi(x))))
    gated = FeedForward(_spec("sdpa", "gated-gelu"))
    assert sorted(n for n, _ in gated.named_parameters()) == ["wi_0.weight", "wi_1.weight", "wo.weight"]
    h = gated.wi_0(x)
    gelu_tanh = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    torch.testing.assert_close(gated(x), gated.wo(gelu_tanh * gated.wi_1(x)))


def test_block_spec_rejects_unknown_values():
    with pytest.raises(ValueError, match="attention"):
        _spec("flash")
    with pytest.raises(ValueError, match="ffn"):
        _spec("sdpa", "swiglu")
