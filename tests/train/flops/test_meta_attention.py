"""The FLOP trace on ``meta`` runs attention as one fused op: no (L, L) score tensor is
created (the runner counts FLOPs on meta before training), and every FLOP total is what
it was when SDPA decomposed into its math backend there."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from spactor.config import load_config
from spactor.plugins import load_plugins
from spactor.train.flops.counting import flops_report
from spactor.train.flops.meta_attention import FusedMetaAttention

load_plugins()

L = 192  # none of tiny t5gemma's widths (d_model 64, d_ff 128, head_dim 16, 4/2 heads)


class _Allocations(TorchDispatchMode):
    """Counts ops whose output ends in an (L, L) block, and the attention kernels run."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self.length = length
        self.square: dict[str, int] = {}
        self.attention: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if "scaled_dot_product" in name:
            self.attention[name] = self.attention.get(name, 0) + 1
        outs = result if isinstance(result, (tuple, list)) else (result,)
        if any(isinstance(t, torch.Tensor) and t.dim() >= 2 and tuple(t.shape[-2:]) == (self.length,) * 2
               for t in outs):
            self.square[name] = self.square.get(name, 0) + 1
        return result


def test_meta_flop_trace_of_t5gemma_sc_creates_no_score_matrix():
    resolved = load_config("sc", ["model.arch=t5gemma", "model.size=tiny", f"data.input_length={L}"])
    with _Allocations(L) as seen:
        report = flops_report(resolved, device="meta", every_stage=True)  # what the runner counts
    assert seen.square == {}
    assert seen.attention.get("_scaled_dot_product_flash_attention_for_cpu", 0) > 0
    assert "_scaled_dot_product_attention_math" not in seen.attention
    assert report.baseline_flops_per_step == 5266341888.0  # measured before the change


# FLOPs per step of each stage and of the baseline, measured before the change (meta and
# CPU agreed): `spactor flops --json --device {meta,cpu} RECIPE ...`.
BEFORE = {
    ("sc", "model.size=tiny"): ([20826390528.0], 20826390528.0),
    ("spactor", "model.size=tiny"): ([30099996672.0, 20826390528.0], 20826390528.0),
    ("sc", "model.arch=t5gemma model.size=tiny"): ([18946818048.0], 18946818048.0),
    ("causal_lm", ""): ([158329674399744.0], 158329674399744.0),
}


@pytest.mark.parametrize(
    "recipe, overrides, device",
    [(*key, "meta") for key in BEFORE] + [("sc", "model.arch=t5gemma model.size=tiny", "cpu")],
)
def test_flop_totals_are_unchanged(recipe, overrides, device):
    report = flops_report(load_config(recipe, overrides.split()), device=device)
    stages, baseline = BEFORE[(recipe, overrides)]
    assert [s.flops.flops_per_step for s in report.stages] == stages
    assert report.baseline_flops_per_step == baseline
    assert all(s.flops.unsupported_ops == {} for s in report.stages)


def _qkv(device: str, heads: int = 4, kv_heads: int = 4, length: int = 6, requires_grad: bool = False):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, length, 8, generator=gen) for h in (heads, kv_heads, kv_heads))
    return tuple(t.to(device).requires_grad_(requires_grad) for t in (q, k, v))


@pytest.mark.parametrize("kwargs", [{}, {"is_causal": True}, {"enable_gqa": True}])
def test_meta_attention_is_one_op_of_sdpas_output_shape(kwargs):
    q, k, v = _qkv("meta", kv_heads=2 if kwargs.get("enable_gqa") else 4, requires_grad=True)
    expected = F.scaled_dot_product_attention(q, k, v, **kwargs)
    with _Allocations(q.shape[2]) as seen, FusedMetaAttention():
        out = F.scaled_dot_product_attention(q, k, v, **kwargs)
    assert list(seen.attention) == ["_scaled_dot_product_flash_attention_for_cpu"]
    assert seen.square == {}
    assert out.shape == expected.shape and out.requires_grad


def test_cpu_and_learned_bias_calls_run_unchanged():
    q, k, v = _qkv("cpu")
    expected = F.scaled_dot_product_attention(q, k, v)
    with FusedMetaAttention():
        assert torch.equal(F.scaled_dot_product_attention(q, k, v), expected)
    # A bias that trains (T5's relative positions) keeps SDPA's own path: the flash
    # operator's derivative would cut it out of the autograd graph.
    q, k, v = _qkv("meta")
    bias = torch.zeros(1, 4, 6, 6, device="meta", requires_grad=True)
    with _Allocations(6) as seen, FusedMetaAttention():
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    assert "_scaled_dot_product_flash_attention_for_cpu" not in seen.attention
    assert out.requires_grad
