"""fvcore op handles: attention (SDPA and its kernels) counted as its two matmuls;
elementwise ops, norms, softmax and losses given explicit handles (0 FLOPs under the
matmul-only MFU convention, a rough per-element cost on request); ops with no
arithmetic ignored — so fvcore reports no op of the shipped models as unsupported.

An op with no handle here and none of fvcore's own (a plugin's model calling, say,
``aten::softplus``) counts 0 FLOPs: fvcore cannot know its cost. That is not silent:
each counted step keeps such ops by name and call count (``StepFlops.unsupported_ops``),
``spactor flops`` prints :func:`unhandled_note` under its table (and in ``--json``'s
``notes``), and the runner warns it once before training (its ``flops_per_step`` and MFU
would be low by their cost). The architecture's analytic count
(``ArchitectureSpec.analytic_flops``, printed beside fvcore's) does not use fvcore, so it
still gives the number. The fix is an entry in :func:`op_handles`: a cost, or None for an
op with no arithmetic."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

# --------------------------------------------------------------------------- fvcore handles

Handle = Callable[[list[Any], list[Any]], float]

# Ops with no arithmetic: lookups, copies, masks, comparisons, RNG, argmax (a comparison
# reduction), dropout. fvcore already ignores the shape ops and a few of these.
NO_FLOP_OPS: tuple[str, ...] = (
    "aten::embedding",
    "aten::where",
    "aten::ne",
    "aten::lt",
    "aten::le",
    "aten::eq",
    "aten::logical_and",
    "aten::logical_or",
    "aten::logical_not",
    "aten::bitwise_and",
    "aten::bitwise_or",
    "aten::__or__",
    "aten::argmax",
    "aten::argmin",
    "aten::rand",
    "aten::randint",
    "aten::bernoulli_",
    "aten::native_dropout",
    "aten::feature_dropout",
    "aten::masked_scatter",
    "aten::masked_select",
    "aten::masked_fill_",
    "aten::tril",
    "aten::triu",
    "aten::scatter",
    "aten::scatter_",
    "aten::index_select",
    "aten::topk",
    "aten::sort",
    "aten::argsort",
    "aten::clone",
    "aten::fill_",
    "aten::ones_like",
    "aten::expand_as",
    "aten::view_as",
    "aten::repeat",
    "aten::repeat_interleave",  # grouped-query attention's k/v heads on the eager path
    "aten::alias",
    "aten::lift_fresh",
)

# Rough FLOPs per element (of the larger of the first input and the output) for ops
# counted only with ``elementwise=True``. Reductions count their input.
ELEMENTWISE_FLOPS: dict[str, float] = {
    "aten::add": 1,
    "aten::add_": 1,
    "aten::sub": 1,
    "aten::rsub": 1,
    "aten::mul": 1,
    "aten::mul_": 1,
    "aten::div": 1,
    "aten::neg": 1,
    "aten::abs": 1,
    "aten::pow": 1,
    "aten::rsqrt": 1,
    "aten::sqrt": 1,
    "aten::exp": 1,
    "aten::log": 1,
    "aten::tanh": 1,
    "aten::sin": 1,  # RoPE angles: once per forward, (L, head_dim/2)
    "aten::cos": 1,
    "aten::reciprocal": 1,
    "aten::mean": 1,
    "aten::sum": 1,
    "aten::relu": 1,  # fvcore ignores it; a handle takes precedence
    "aten::gelu": 8,  # tanh approximation: ~8 ops
    "aten::silu": 4,
    "aten::sigmoid": 4,
    "aten::softmax": 5,  # max, subtract, exp, sum, divide
    "aten::log_softmax": 5,
    "aten::logsumexp": 4,  # max, subtract, exp, sum (+ a log per row)
    "aten::square": 1,
    "aten::cross_entropy_loss": 6,  # log-softmax + gather/negate/sum
    "aten::binary_cross_entropy_with_logits": 6,
    "aten::layer_norm": 5,  # fvcore's own estimate
    "aten::group_norm": 5,
    "aten::rms_norm": 4,
}

# Attention ops and the layout of their q/k/v: "bhld" = (..., L, d), "blhd" = (B, L, H, d).
ATTENTION_OPS: dict[str, str] = {
    "aten::scaled_dot_product_attention": "bhld",
    "aten::_scaled_dot_product_attention_math": "bhld",
    "aten::_scaled_dot_product_flash_attention": "bhld",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "bhld",
    "aten::_scaled_dot_product_efficient_attention": "bhld",
    "aten::_scaled_dot_product_cudnn_attention": "bhld",
    "aten::_flash_attention_forward": "blhd",
    "aten::_efficient_attention_forward": "blhd",
}
# Flex attention needs no handle: it cannot be traced by torch.jit, so during the trace
# ``trace_forms.TraceForms`` runs the equivalent SDPA call on the dense mask (same q/k/v
# shapes), which the SDPA handle counts — the FLOPs flex's kernel does.


def _shape(value: Any) -> list[int] | None:
    return value.type().sizes() if value.isCompleteTensor() else None


def _numel(value: Any) -> int:
    shape = _shape(value)
    return math.prod(shape) if shape is not None else 1


def attention_handle(layout: str) -> Handle:
    """Multiply-adds of ``softmax(q kᵀ + bias) v``: two matmuls over the full score
    matrix (masked entries included, as the kernels compute them in blocks)."""

    def handle(inputs: list[Any], outputs: list[Any]) -> float:
        q, k, v = (_shape(x) for x in inputs[:3])
        assert q is not None and k is not None and v is not None, "attention inputs without shapes"
        if layout == "bhld":
            rows, keys = math.prod(q[:-1]), k[-2]  # (batch · heads · Lq), Lk
        else:
            rows, keys = q[0] * q[2] * q[1], k[1]
        return float(rows * keys * (q[-1] + v[-1]))  # q·kᵀ, then p·v

    return handle


def elementwise_handle(flops_per_element: float) -> Handle:
    def handle(inputs: list[Any], outputs: list[Any]) -> float:
        n = max(_numel(inputs[0]) if inputs else 1, _numel(outputs[0]) if outputs else 1)
        return flops_per_element * n / 2  # fvcore's unit is a multiply-add (2 FLOPs)

    return handle


def zero_handle(inputs: list[Any], outputs: list[Any]) -> float:
    return 0.0


def op_handles(elementwise: bool = False) -> dict[str, Handle | None]:
    """fvcore handles on top of its defaults (None = ignore: no FLOPs)."""
    handles: dict[str, Handle | None] = {op: None for op in NO_FLOP_OPS}
    for op, cost in ELEMENTWISE_FLOPS.items():
        handles[op] = elementwise_handle(cost) if elementwise else zero_handle
    for op, layout in ATTENTION_OPS.items():
        handles[op] = attention_handle(layout)
    return handles


def unhandled_note(found: dict[str, dict[str, int]]) -> str | None:
    """One line naming the ops fvcore counted as 0 for want of a handle (``found``: where →
    op → calls), what that does to the count and where the fix goes; None when none."""
    if not found:
        return None
    ops: dict[str, int] = {}
    for table in found.values():
        for op, calls in table.items():
            ops[op] = max(ops.get(op, 0), calls)
    listed = ", ".join(f"{op} (x{calls})" for op, calls in sorted(ops.items()))
    return (
        f"fvcore has no handle for {listed} in {', '.join(found)}: counted as 0 FLOPs, so the measured "
        "count misses their cost (the analytic count does not use fvcore); give each a handle in "
        "spactor/train/flops/handles.py (op_handles)"
    )
