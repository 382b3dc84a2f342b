"""Tracing concerns live in ``spactor.train.flops``: the model and loss code keep one form,
and the FLOP trace substitutes the traceable one (``TraceForms``)."""

from __future__ import annotations

import ast
from pathlib import Path

import torch

import spactor
from spactor.architectures.kernels import FlexBias, attend
from spactor.architectures.layers import RelativePositionBias, attention_bias
from spactor.objectives.cross_entropy import token_cross_entropy
from spactor.train.flops.trace_forms import TraceForms

PACKAGE = Path(spactor.__file__).parent
TRACING_NAMES = {"is_tracing", "_get_current_dispatch_mode", "_get_tracing_state"}


def _mentions(path: Path) -> list[str]:
    """``line: name`` for each use or import of a tracing check in ``path``."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Attribute):
            name = node.attr
        elif isinstance(node, ast.Name):
            name = node.id
        elif isinstance(node, ast.ImportFrom):
            hits += [f"{node.lineno}: {a.name}" for a in node.names if a.name in TRACING_NAMES]
            continue
        else:
            continue
        if name in TRACING_NAMES:
            hits.append(f"{node.lineno}: {name}")
    return hits


def test_no_module_outside_train_flops_asks_whether_it_is_traced():
    flops = PACKAGE / "train" / "flops"
    hits = [f"{path.relative_to(PACKAGE.parent)}:{hit}" for path in sorted(PACKAGE.rglob("*.py"))
            if flops not in path.parents for hit in _mentions(path)]
    assert hits == [], "tracing checks belong in spactor/train/flops:\n" + "\n".join(hits)


def test_the_scan_sees_a_tracing_check(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import torch\nfrom torch.utils._python_dispatch import _get_current_dispatch_mode\n"
                     "if torch.jit.is_tracing() or _get_current_dispatch_mode() is not None:\n    pass\n",
                     encoding="utf-8")
    assert sorted(_mentions(probe)) == ["2: _get_current_dispatch_mode", "3: _get_current_dispatch_mode",
                                        "3: is_tracing"]


def test_cross_entropy_is_fused_outside_the_trace_and_unfused_inside():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 11, generator=g, requires_grad=True)
    targets = torch.tensor([1, 4, -100, 0, 10, -100])
    fused = token_cross_entropy(logits, targets)
    with TraceForms():
        unfused = token_cross_entropy(logits, targets)
    assert "TokenCrossEntropy" in type(fused.total.grad_fn).__name__
    assert "TokenCrossEntropy" not in type(unfused.total.grad_fn).__name__  # plain ops fvcore records
    torch.testing.assert_close(unfused.total, fused.total)
    torch.testing.assert_close(unfused.z_total, fused.z_total)


def test_flex_is_sdpa_on_the_dense_bias_inside_the_trace():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 5, 8, generator=g) for _ in range(3))
    keep = torch.tensor([[True] * 5, [True, True, True, False, False]])
    rel = RelativePositionBias(4, bidirectional=True)
    with TraceForms():
        bias = attention_bias("flex", torch.float32, 5, 5, rel, keep)
        assert isinstance(bias, FlexBias) and bias.block_mask is None  # no BlockMask to trace
        out = attend(q, k, v, bias, "flex", scale=1.0)
    expected = attend(q, k, v, attention_bias("sdpa", torch.float32, 5, 5, rel, keep), "sdpa", scale=1.0)
    torch.testing.assert_close(out, expected)
