"""The modern attention stack: mask descriptions and the form each backend gets, RoPE,
grouped-query attention, gated feed-forwards."""

from __future__ import annotations

import pytest
import torch

from spactor.architectures.attention import (
    AttentionSpec,
    GatedFeedForward,
    MaskSpec,
    RotaryEmbedding,
    SelfAttention,
    apply_rotary,
    build_mask,
)

CPU = torch.device("cpu")


def test_sdpa_gets_no_mask_tensor_when_none_is_needed():
    causal = build_mask("sdpa", MaskSpec(causal=True), 8, 8, CPU)
    assert causal.mask is None and causal.is_causal  # fused kernels: is_causal, no tensor
    full = build_mask("sdpa", MaskSpec(causal=False), 8, 8, CPU)
    assert full.mask is None and not full.is_causal  # bidirectional, no padding: nothing at all


def test_sdpa_dense_mask_only_for_prefix_or_padding():
    prefix = build_mask("sdpa", MaskSpec(causal=True, prefix_length=torch.tensor([3, 0])), 5, 5, CPU)
    assert prefix.mask.dtype == torch.bool and prefix.mask.shape == (2, 1, 5, 5)
    row0 = prefix.mask[0, 0]
    # Within the prefix (positions 0..2) every query sees the whole prefix; after it, causal.
    assert row0[0].tolist() == [True, True, True, False, False]
    assert row0[3].tolist() == [True, True, True, True, False]
    assert prefix.mask[1, 0].equal(torch.ones(5, 5, dtype=torch.bool).tril())  # prefix 0: plain causal
    keep = torch.tensor([[True, True, False]])
    padded = build_mask("sdpa", MaskSpec(causal=False, key_keep=keep), 3, 3, CPU)
    assert padded.mask[0, 0].tolist() == [[True, True, False], [True, True, False], [True, True, True]]


def test_eager_materialises_causal():
    built = build_mask("eager", MaskSpec(causal=True), 4, 4, CPU)
    assert built.mask[0, 0].equal(torch.ones(4, 4, dtype=torch.bool).tril())


def test_rotary_matches_the_complex_rotation():
    rope = RotaryEmbedding(8, theta=100.0)
    cos, sin = rope(6, CPU, torch.float64)
    x = torch.randn(1, 1, 6, 8, dtype=torch.float64)
    out = apply_rotary(x, cos, sin)
    # Pair (i, i + d/2) rotated by position * theta^(-2i/d).
    freqs = 100.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    angle = torch.arange(6, dtype=torch.float64)[:, None] * freqs
    z = torch.complex(x[..., :4], x[..., 4:]) * torch.polar(torch.ones_like(angle), angle)
    torch.testing.assert_close(out, torch.cat([z.real, z.imag], dim=-1))
    # Relative: q·k depends only on the distance.
    q, k = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    qs, ks = apply_rotary(q.expand(1, 1, 6, 8), cos, sin), apply_rotary(k.expand(1, 1, 6, 8), cos, sin)
    # The angles are computed in fp32 whatever the output dtype (as the model does): equal
    # to fp32's precision, not float64's (a random pair differed by 3e-7 relative).
    torch.testing.assert_close(qs[0, 0, 3] @ ks[0, 0, 1], qs[0, 0, 5] @ ks[0, 0, 3], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["eager", "flex"])
@pytest.mark.parametrize(
    "spec",
    [
        MaskSpec(causal=True),
        MaskSpec(causal=False),
        MaskSpec(causal=True, prefix_length=torch.tensor([4, 1])),
        MaskSpec(causal=False, key_keep=torch.tensor([[True] * 7 + [False] * 2, [True] * 9])),
    ],
    ids=["causal", "full", "prefix", "padding"],
)
def test_gqa_backends_agree_with_sdpa(backend, spec):
    torch.manual_seed(0)
    attn_spec = AttentionSpec(d_model=32, num_heads=4, num_kv_heads=2, head_dim=8)
    attn = SelfAttention(attn_spec)
    other = SelfAttention(AttentionSpec(d_model=32, num_heads=4, num_kv_heads=2, head_dim=8, backend=backend))
    other.load_state_dict(attn.state_dict())
    x = torch.randn(2, 9, 32)
    rotary = RotaryEmbedding(8)(9, CPU, torch.float32)
    ref = build_mask("sdpa", spec, 9, 9, CPU)
    got = build_mask(backend, spec, 9, 9, CPU)
    with torch.no_grad():
        torch.testing.assert_close(
            other(x, rotary, got.mask, got.is_causal), attn(x, rotary, ref.mask, ref.is_causal),
            atol=1e-5, rtol=1e-5,
        )


def test_gqa_equals_multi_head_with_repeated_kv_heads():
    torch.manual_seed(0)
    gqa = SelfAttention(AttentionSpec(d_model=16, num_heads=4, num_kv_heads=2, head_dim=4))
    mha = SelfAttention(AttentionSpec(d_model=16, num_heads=4, num_kv_heads=4, head_dim=4))
    state = gqa.state_dict()
    for name in ("k_proj.weight", "v_proj.weight"):  # kv head j serves query heads 2j, 2j + 1
        state[name] = state[name].view(2, 1, 4, 16).expand(2, 2, 4, 16).reshape(16, 16)
    mha.load_state_dict(state)
    x = torch.randn(1, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(gqa(x, None, None, True), mha(x, None, None, True))


def test_attention_spec_rejects_kv_heads_that_do_not_divide():
    with pytest.raises(ValueError, match="num_kv_heads"):
        AttentionSpec(d_model=16, num_heads=4, num_kv_heads=3, head_dim=4)


def test_swiglu_formula():
    torch.manual_seed(0)
    ffn = GatedFeedForward(8, 12, "silu")
    x = torch.randn(3, 8)
    expected = ffn.down_proj(torch.nn.functional.silu(ffn.gate_proj(x)) * ffn.up_proj(x))
    torch.testing.assert_close(ffn(x), expected)
    with pytest.raises(ValueError, match="gated activation"):
        GatedFeedForward(8, 12, "relu")


@pytest.mark.parametrize("backend", ["eager", "flex"])
def test_gradients_through_a_prefix_mask_match_sdpa(backend):
    torch.manual_seed(0)
    spec = MaskSpec(causal=True, prefix_length=torch.tensor([3, 6]))
    attn = SelfAttention(AttentionSpec(d_model=32, num_heads=4, num_kv_heads=2, head_dim=8))
    other = SelfAttention(AttentionSpec(d_model=32, num_heads=4, num_kv_heads=2, head_dim=8, backend=backend))
    other.load_state_dict(attn.state_dict())
    x = torch.randn(2, 8, 32)
    rotary = RotaryEmbedding(8)(8, CPU, torch.float32)
    grads = []
    for module, name in ((attn, "sdpa"), (other, backend)):
        built = build_mask(name, spec, 8, 8, CPU)
        module(x, rotary, built.mask, built.is_causal).square().sum().backward()
        grads.append(module.q_proj.weight.grad)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-5)
