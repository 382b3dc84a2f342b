"""Attention as one op in the FLOP trace on the ``meta`` device.

On ``meta`` PyTorch's ``scaled_dot_product_attention`` always picks its math backend (the
meta backend choice knows no fused kernel), which decomposes into ``q kᵀ``, a softmax and
``p v``: every call allocates (L, L) score tensors, meta ones, but still tensors a probe
of the runner's process sees, and work the trace need not do. During the FLOP trace,
:class:`FusedMetaAttention` sends such a call to the CPU flash kernel's operator
(``aten::_scaled_dot_product_flash_attention_for_cpu``), whose meta function only builds
the output and log-sum-exp shapes. fvcore records that operator as one node with the same
q/k/v, which the attention handle (:mod:`spactor.train.flops.handles`) counts exactly as
it counts ``aten::scaled_dot_product_attention``: the FLOP totals do not change.

Only meta tensors are rerouted (a CPU or CUDA trace keeps torch's own backend choice),
and only calls the flash operator represents faithfully; anything else runs as it would
without this mode (see :func:`reroutable`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_FLASH_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default


def _sdpa_arguments(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> dict[str, Any]:
    """``F.scaled_dot_product_attention``'s signature: binds a call's arguments by name."""
    return dict(query=query, key=key, value=value, attn_mask=attn_mask, dropout_p=dropout_p,
                is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)


def reroutable(call: dict[str, Any]) -> bool:
    """Whether the flash operator stands for this SDPA call exactly (else the call runs
    unchanged): meta (B, H, L, d) tensors whose batch, length and head sizes agree as SDPA
    requires (fewer k/v heads only with ``enable_gqa``); v's head size equal to q's (the
    operator's meta output takes q's shape); no mask with ``is_causal`` (SDPA refuses it);
    and a mask that needs no gradient: the flash operator's derivative gives the mask
    none, so a learned bias (T5's relative positions) would drop out of the autograd graph
    from which the counter tells trained modules from frozen ones."""
    q, k, v, mask = call["query"], call["key"], call["value"], call["attn_mask"]
    if not all(isinstance(t, torch.Tensor) and t.device.type == "meta" and t.dim() == 4 for t in (q, k, v)):
        return False
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.requires_grad or call["is_causal"]):
        return False
    if not (q.shape[0] == k.shape[0] == v.shape[0] and k.shape[1:3] == v.shape[1:3]):
        return False
    if q.shape[-1] != k.shape[-1] or q.shape[-1] != v.shape[-1]:
        return False
    heads, kv_heads = q.shape[1], k.shape[1]
    return heads == kv_heads or (bool(call["enable_gqa"]) and kv_heads > 0 and heads % kv_heads == 0)


class FusedMetaAttention(TorchFunctionMode):
    """Within this mode, ``F.scaled_dot_product_attention`` on meta tensors is the CPU
    flash operator (one traced op, no (L, L) tensor); every other call runs unchanged."""

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            call = _sdpa_arguments(*args, **kwargs)
            if reroutable(call):
                out, _logsumexp = _FLASH_CPU(
                    call["query"], call["key"], call["value"], call["dropout_p"], call["is_causal"],
                    attn_mask=call["attn_mask"], scale=call["scale"],
                )
                return out
        return func(*args, **kwargs)
