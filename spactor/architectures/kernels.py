"""One attention dispatch for every architecture: :func:`attend` runs
``softmax(q kᵀ · scale + mask) v`` on the configured backend.

* ``sdpa``: ``F.scaled_dot_product_attention`` (PyTorch picks flash / memory-efficient /
  math), with ``is_causal`` when the caller has no mask tensor;
* ``eager``: the reference math, scores and softmax in fp32 (as T5 and Hugging Face);
* ``flex``: FlexAttention, a relative position table in a ``score_mod`` and masks in a
  ``BlockMask`` (:class:`FlexBias`), so no ``(., ., Lq, Lk)`` float tensor exists.

The mask an architecture builds once per stack and hands every layer comes in one of
three forms, whichever its positions need: an *additive* float bias (T5's relative
position bias with masking folded in as ``finfo(dtype).min``, BERT's key padding), a
*boolean* keep-mask (the rotary stacks: True = may attend), or for ``flex`` a
:class:`FlexBias` / ``BlockMask``. The architectures keep their builders
(``layers.attention_bias``, ``attention.build_mask``); the kernel choice is here alone.

:func:`attend` and :func:`flex_block_mask` are :func:`spactor.overrides.overridable`:
code that cannot run FlexAttention (a FLOP tracer) substitutes the dense SDPA form from
outside; nothing here knows who watches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from spactor.overrides import overridable

ATTENTION_BACKENDS = ("sdpa", "eager", "flex")


def check_attention(attention: str, dropout: float) -> None:
    """The attention backend exists, and ``dropout`` is one it can apply."""
    if attention not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention '{attention}'; valid: {', '.join(ATTENTION_BACKENDS)}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if attention == "flex" and dropout > 0.0:
        raise ValueError(
            f"attention 'flex' has no attention-probability dropout, but dropout is {dropout}; "
            f"set dropout 0 or use attention sdpa"
        )


# --------------------------------------------------------------------------- additive biases


def mask_bias(bias: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Replace the entries of ``bias`` where ``keep`` is False by ``finfo(dtype).min``.

    ``where`` rather than ``+ min`` so a masked entry is exactly ``min`` and can never
    overflow to ``-inf``: a fully masked row then softmaxes to uniform, not NaN.
    """
    return torch.where(keep, bias, torch.finfo(bias.dtype).min)


def dense_bias(
    position: torch.Tensor | None,
    key_keep: torch.Tensor | None,
    causal: bool,
    dtype: torch.dtype,
    query_length: int,
    key_length: int,
) -> torch.Tensor | None:
    """Position bias ``(1, H, Lq, Lk)`` and/or masks folded into one additive tensor in
    ``dtype``, no larger than the masks need (``(B, H, Lq, Lk)`` only for position bias
    plus key padding)."""
    if position is None and key_keep is None and not causal:
        return None
    device = position.device if position is not None else key_keep.device if key_keep is not None else None
    bias = position.to(dtype) if position is not None else torch.zeros((), dtype=dtype, device=device)
    if causal:
        bias = mask_bias(bias, torch.ones(query_length, key_length, dtype=torch.bool, device=device).tril())
    if key_keep is not None:
        bias = mask_bias(bias, key_keep[:, None, None, :])
    return bias


def _bias_as(bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # A no-op for the biases the stacks build (already in the compute dtype). Kept for a
    # bias built elsewhere: fp32's min rounds to -inf in bf16, so clamp before casting.
    if bias.dtype == dtype:
        return bias
    return bias.clamp(min=torch.finfo(dtype).min).to(dtype)


# --------------------------------------------------------------------------- flex


@dataclass(frozen=True)
class FlexBias:
    """What ``flex`` attention needs instead of a dense bias.

    ``table`` (num_buckets, H) and ``offset_buckets`` (Lq + Lk - 1,) give a relative
    position bias (T5: ``table[bucket(key_pos - query_pos), head]``); ``key_keep`` (B, Lk)
    bool and ``causal`` the mask, which ``block_mask`` encodes for the kernel (None:
    nothing masked, or no ``BlockMask`` could be built, see :func:`flex_block_mask`).
    """

    query_length: int
    key_length: int
    table: torch.Tensor | None = None
    offset_buckets: torch.Tensor | None = None
    key_keep: torch.Tensor | None = None
    causal: bool = False
    block_mask: Any = None  # torch.nn.attention.flex_attention.BlockMask

    def dense(self, dtype: torch.dtype) -> torch.Tensor | None:
        """The same bias as one additive tensor (what ``sdpa`` would get)."""
        position = None
        if self.table is not None and self.offset_buckets is not None:
            index = _offset_index(self.query_length, self.key_length, self.offset_buckets.device)
            position = self.table[self.offset_buckets[index]].permute(2, 0, 1).unsqueeze(0)
        return dense_bias(position, self.key_keep, self.causal, dtype, self.query_length, self.key_length)


def _offset_index(query_length: int, key_length: int, device: torch.device) -> torch.Tensor:
    query_pos = torch.arange(query_length, device=device)[:, None]
    key_pos = torch.arange(key_length, device=device)[None, :]
    return key_pos - query_pos + (query_length - 1)


@overridable
def flex_block_mask(
    mask_mod: Callable[..., torch.Tensor], batch: int | None, query_length: int, key_length: int, device: Any
) -> Any:
    """``create_block_mask`` over ``(batch or 1, all heads, Lq, Lk)``: the one place a
    ``BlockMask`` is built, so a caller that cannot use one (a tracer) returns None here
    and takes the dense form instead."""
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(mask_mod, batch, None, query_length, key_length, device=device)


def _relative_score_mod(shift: int) -> Callable[..., torch.Tensor]:
    """``score + table[bucket(key_pos - query_pos), head]``, the bucket read from the
    offset table at ``kv_idx - q_idx + shift`` (``shift`` = Lq - 1)."""

    def score_mod(
        score: torch.Tensor,
        b: torch.Tensor,
        h: torch.Tensor,
        q_idx: torch.Tensor,
        kv_idx: torch.Tensor,
        table: torch.Tensor,
        offset_buckets: torch.Tensor,
    ) -> torch.Tensor:
        return score + table[offset_buckets[kv_idx - q_idx + shift], h]

    return score_mod


_COMPILED_FLEX: list[Callable[..., torch.Tensor]] = []


def _fused_flex() -> Callable[..., torch.Tensor]:
    # flex_attention outside torch.compile is an unfused reference; compile it once (as
    # torchtitan does). Inside a compiled block dynamo fuses the plain function itself.
    from torch.nn.attention.flex_attention import flex_attention

    if torch.compiler.is_compiling():
        return flex_attention
    if not _COMPILED_FLEX:
        _COMPILED_FLEX.append(torch.compile(flex_attention, dynamic=False))
    return _COMPILED_FLEX[0]


def flex_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: FlexBias | None, scale: float
) -> torch.Tensor:
    """FlexAttention with the relative bias in a ``score_mod`` and masks in a ``BlockMask``.

    * on CPU with gradients (torch's public ``flex_attention`` refuses a backward there):
      torch's own flex operator in its eager, unfused mode, the same dense math and
      ``score_mod``/``mask_mod`` the fused kernels implement, with the table passed as a
      buffer so its gradient flows;
    * otherwise ``torch.nn.attention.flex_attention``, compiled.
    """
    if bias is not None and not isinstance(bias, FlexBias):
        raise TypeError(f"attention 'flex' takes a FlexBias (see attention_bias), got {type(bias).__name__}")
    buffers: tuple[torch.Tensor, ...] = ()
    score_fn = None
    if bias is not None and bias.table is not None and bias.offset_buckets is not None:
        buffers = (bias.table, bias.offset_buckets)
        score_fn = _relative_score_mod(bias.query_length - 1)
    block_mask = None if bias is None else bias.block_mask
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, *buffers))
    if q.device.type == "cpu" and needs_grad:
        return _flex_attention_eager(q, k, v, score_fn, buffers, block_mask, scale)
    score_mod = None
    if score_fn is not None:
        table, offset_buckets = buffers

        def score_mod(score: torch.Tensor, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> torch.Tensor:
            return score_fn(score, b, h, q_idx, kv_idx, table, offset_buckets)

    if q.device.type == "cpu":  # inference on CPU
        from torch.nn.attention.flex_attention import flex_attention as flex

        if torch.compiler.is_compiling():
            # Inductor's CPU flex template reads q/k/v as 4-D buffers; a head-split view of
            # a matmul output is 2-D underneath and fails to lower.
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        return flex(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)
    return _fused_flex()(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)


@torch.compiler.disable  # CPU only: no compiled flex backward exists there, run it eagerly
def _flex_attention_eager(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    score_fn: Callable[..., torch.Tensor] | None,
    buffers: tuple[torch.Tensor, ...],
    block_mask: Any,
    scale: float,
) -> torch.Tensor:
    from torch._higher_order_ops.flex_attention import flex_attention as flex_attention_op
    from torch.nn.attention.flex_attention import _apply_kernel_options, _create_empty_block_mask

    if score_fn is None:

        def score_fn(score: torch.Tensor, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> torch.Tensor:
            return score

    if block_mask is None:
        block_mask = _create_empty_block_mask(q, k)
    options = _apply_kernel_options(q, k, v, False, None)
    out, _, _ = flex_attention_op(q, k, v, score_fn, block_mask.as_tuple(), scale, options, buffers, ())
    return out


# --------------------------------------------------------------------------- the dispatch


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``(B, Hkv, L, d)`` → ``(B, Hkv * groups, L, d)``, each k/v head repeated for its group."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


@overridable
def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Any,
    backend: str,
    scale: float,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    groups: int = 1,
    softcap: float | None = None,
) -> torch.Tensor:
    """``softmax(q kᵀ · scale + mask) v`` on ``backend``, q/k/v ``(B, H, L, d)``.

    ``mask``: None; an additive float bias broadcastable to ``(B, H, Lq, Lk)`` (masking
    folded in as ``finfo.min``); a boolean keep-mask (True = may attend); for ``flex`` a
    :class:`FlexBias` or a ``BlockMask``. ``is_causal``: a causal square attention with
    no mask tensor (sdpa's flag). ``groups``: query heads per k/v head (grouped-query
    attention; a Python int, since under ``torch.jit`` tracing a count read from the
    shapes would be a tensor). ``softcap``: scores soft-capped before the mask (Gemma),
    on the eager math whatever the backend.
    """
    if backend == "eager" or softcap is not None:
        return _eager(q, k, v, mask, scale, dropout_p, is_causal, groups, softcap)
    if backend == "flex":
        if isinstance(mask, torch.Tensor):
            raise TypeError("attention 'flex' takes a FlexBias or a BlockMask, got a dense tensor")
        if mask is not None and not isinstance(mask, FlexBias):  # a BlockMask alone
            mask = FlexBias(q.shape[2], k.shape[2], block_mask=mask)
        return flex_attention(q, repeat_kv(k, groups), repeat_kv(v, groups), mask, scale=scale)
    if backend != "sdpa":
        raise ValueError(f"unknown attention '{backend}'; valid: {', '.join(ATTENTION_BACKENDS)}")
    attn_mask = mask if mask is None or mask.dtype == torch.bool else _bias_as(mask, q.dtype)
    if (
        attn_mask is not None
        and scale == 1.0
        and q.device.type == "cpu"
        and q.dtype == torch.float32
        and attn_mask.requires_grad
        and torch.is_grad_enabled()
    ):
        # CPU, fp32, a bias that needs a gradient (T5's learned position bias): no fused
        # CPU kernel takes a mask gradient, so torch would run its math fallback, which is
        # these two matmuls and a softmax plus a "safe" softmax's extra passes (an
        # all-``-inf`` row check and a ``where``) that a ``finfo.min`` mask never needs;
        # the explicit form is 20% faster there (measured: 512², 8 heads, forward and
        # backward). Only for unscaled scores (T5): SDPA's math scales q and k by √scale
        # each, which the explicit form would round differently.
        return _math_attention(q, k, v, attn_mask, dropout_p)
    return F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=attn_mask,
        dropout_p=dropout_p,
        is_causal=is_causal and attn_mask is None,
        scale=scale,
        enable_gqa=groups > 1,
    )


def _math_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, dropout_p: float
) -> torch.Tensor:
    # Not in place into the matmul's output: selective activation checkpointing saves
    # matmul outputs, and an in-place add would change the saved tensor (wrong gradients).
    probs = (q @ k.transpose(-2, -1) + bias).softmax(dim=-1)
    return F.dropout(probs, p=dropout_p, training=dropout_p > 0.0) @ v


def _eager(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    dropout_p: float,
    is_causal: bool,
    groups: int,
    softcap: float | None,
) -> torch.Tensor:
    """The reference: explicit scores, softmax in fp32, probabilities back in v's dtype."""
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    scores = (q @ k.transpose(-2, -1)).float()
    if scale != 1.0:  # T5 folds its scale into q's initialisation: no multiply at all
        scores = scores * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is None and is_causal:  # sdpa's causal flag: the eager math needs the mask
        query_pos = torch.arange(q.shape[2], device=q.device)[:, None]
        key_pos = torch.arange(k.shape[2], device=q.device)[None, :]
        mask = (key_pos <= query_pos)[None, None]
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask.float()
    probs = scores.softmax(dim=-1).to(v.dtype)
    return F.dropout(probs, p=dropout_p, training=dropout_p > 0.0) @ v
