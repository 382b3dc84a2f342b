"""One attention dispatch (``kernels.attend``) for T5, BERT/ELECTRA and the rotary stacks;
flex's dense equivalent (``flex_dense.DenseFlex``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import spactor.architectures as architectures
from spactor.architectures.attention import MaskSpec, build_mask
from spactor.architectures.encoder import EncoderConfig, EncoderModel
from spactor.architectures.flex_dense import DenseFlex
from spactor.architectures.kernels import attend
from spactor.architectures.layers import Attention, RelativePositionBias, attention_bias

CPU = torch.device("cpu")
KERNELS = {"scaled_dot_product_attention", "flex_attention", "create_block_mask"}


def test_only_the_dispatch_calls_attention_kernels():
    root = Path(architectures.__file__).parent
    allowed = {"kernels.py", "flex_dense.py"}
    calls = []
    for path in sorted(root.glob("*.py")):
        if path.name in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                fn = node.func
                name = getattr(fn, "attr", getattr(fn, "id", None))
                if name in KERNELS:
                    calls.append(f"{path.name}:{node.lineno}: {name}")
    assert calls == [], "attention kernels are chosen in kernels.attend alone:\n" + "\n".join(calls)


def test_bert_and_t5_encoders_share_one_attention_class():
    for norm in ("layernorm", "rmsnorm"):
        model = EncoderModel(EncoderConfig(size="tiny", norm=norm), vocab_size=64)
        kinds = {type(m) for m in model.modules() if "attention" in type(m).__name__.lower()}
        assert kinds == {Attention}, (norm, kinds)


def _qkv(heads: int = 4, kv_heads: int = 4, length: int = 6):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, heads, length, 8, generator=g)
    k, v = (torch.randn(2, kv_heads, length, 8, generator=g) for _ in range(2))
    return q, k, v


def _keep() -> torch.Tensor:
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[1, 4:] = False
    return keep


@pytest.mark.parametrize("causal", [False, True])
def test_every_backend_agrees_on_an_additive_bias(causal):
    q, k, v = _qkv()
    rel = RelativePositionBias(4, bidirectional=not causal)
    out = {}
    for backend in ("sdpa", "eager", "flex"):
        bias = attention_bias(backend, torch.float32, 6, 6, rel, _keep(), causal)
        out[backend] = attend(q, k, v, bias, backend, 1.0)
    torch.testing.assert_close(out["eager"], out["sdpa"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["flex"], out["sdpa"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spec", [MaskSpec(causal=True), MaskSpec(causal=True, key_keep=_keep()),
                                  MaskSpec(causal=False, key_keep=_keep(), window=2)])
def test_every_backend_agrees_on_a_boolean_mask_with_grouped_heads(spec):
    q, k, v = _qkv(heads=4, kv_heads=2)
    out = {}
    for backend in ("sdpa", "eager", "flex"):
        built = build_mask(backend, spec, 6, 6, CPU)
        out[backend] = attend(q, k, v, built.mask, backend, 8**-0.5, is_causal=built.is_causal, groups=2)
    torch.testing.assert_close(out["eager"], out["sdpa"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["flex"], out["sdpa"], atol=1e-5, rtol=1e-5)


def test_flex_refuses_a_dense_mask():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="FlexBias or a BlockMask"):
        attend(q, k, v, torch.ones(1, 1, 6, 6, dtype=torch.bool), "flex", 1.0)


@pytest.mark.parametrize("form", ["block_mask", "flex_bias"])
def test_dense_flex_is_flex_on_sdpa(form):
    q, k, v = _qkv()
    if form == "block_mask":  # the rotary stacks'
        mask = build_mask("flex", MaskSpec(causal=True, key_keep=_keep()), 6, 6, CPU).mask
    else:  # T5's: a position table in a score_mod, padding in a BlockMask
        mask = attention_bias("flex", torch.float32, 6, 6, RelativePositionBias(4, True), _keep())
    expected = attend(q, k, v, mask, "flex", 1.0)
    seen = []

    class Probe(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(getattr(func, "__name__", ""))
            return func(*args, **(kwargs or {}))

    with Probe(), DenseFlex():
        out = attend(q, k, v, mask, "flex", 1.0)
    assert "scaled_dot_product_attention" in seen
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
