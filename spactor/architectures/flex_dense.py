"""FlexAttention's dense equivalent, for code that runs a model where flex cannot go.

FlexAttention is a higher-order operator with a ``BlockMask`` built by vmapped code:
``torch.jit`` cannot trace it (fvcore's FLOP count), a dispatch-mode counter has no rule
for it, and torch's selective activation checkpointing cannot recompute it with a
``score_mod`` that reads a trained table (T5's relative positions: "backward an extra
time"). Within :class:`DenseFlex`, attention configured as ``flex`` runs as
``scaled_dot_product_attention`` on the dense form of its mask, the same two matmuls at
the same shapes and the same softmax:

* ``attend(..., "flex")``: a :class:`~spactor.architectures.kernels.FlexBias` gives its
  additive bias (``FlexBias.dense``), a ``BlockMask`` its boolean mask (its ``mask_mod``
  evaluated on the full grid);
* ``flex_block_mask`` builds nothing (None), and ``build_mask("flex", ...)`` gives the
  boolean mask the ``eager`` backend takes.

The code that needs it enters the mode (``spactor.train.flops`` for the FLOP trace,
``spactor.train.parallel`` around selectively checkpointed blocks); the models do not
know.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from spactor.architectures.attention import build_mask
from spactor.architectures.kernels import FlexBias, attend, flex_block_mask
from spactor.overrides import IMPLEMENTATIONS, SubstitutingMode, bound_arguments


def _no_block_mask(*args: Any, **kwargs: Any) -> None:
    return None


def _dense_build_mask(*args: Any, **kwargs: Any) -> Any:
    call = bound_arguments(build_mask, args, kwargs)
    if call["backend"] == "flex":
        call["backend"] = "eager"  # the boolean mask, materialised (causal included)
    return IMPLEMENTATIONS[build_mask](**call)


def _dense_mask(mask: Any, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
    if mask is None or isinstance(mask, torch.Tensor):
        return mask
    if isinstance(mask, FlexBias):
        return mask.dense(q.dtype)
    from torch.nn.attention.flex_attention import create_mask  # a BlockMask

    return create_mask(mask.mask_mod, mask.kv_num_blocks.shape[0], 1, q.shape[2], k.shape[2], q.device)


def _dense_attend(*args: Any, **kwargs: Any) -> torch.Tensor:
    call = bound_arguments(attend, args, kwargs)
    if call["backend"] != "flex" or call["softcap"] is not None:
        return IMPLEMENTATIONS[attend](**call)
    q, k, v = call["q"], call["k"], call["v"]
    mask = _dense_mask(call["mask"], q, k)
    return F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=mask,
        dropout_p=call["dropout_p"],
        is_causal=call["is_causal"] and mask is None,
        scale=call["scale"],
        enable_gqa=call["groups"] > 1,
    )


DENSE_FLEX_FORMS: dict[Callable[..., Any], Callable[..., Any]] = {
    attend: _dense_attend,
    flex_block_mask: _no_block_mask,
    build_mask: _dense_build_mask,
}


class DenseFlex(SubstitutingMode):
    """Within this mode ``flex`` attention runs as SDPA on its dense mask (module docstring)."""

    forms = DENSE_FLEX_FORMS
