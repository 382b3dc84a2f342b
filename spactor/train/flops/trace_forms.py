"""What fvcore's trace sees in place of what ``torch.jit`` cannot record.

fvcore counts the ops of a ``torch.jit`` trace. Two things the models run are invisible
to it: an autograd ``Function`` (the token cross-entropy's chunked kernel is one opaque
node) and FlexAttention (a higher-order op, with a ``BlockMask`` built by code a trace
cannot follow). The model and loss code mark those calls
:func:`spactor.overrides.overridable` and keep one form; during the FLOP trace
:class:`TraceForms` gives each the form that does the same arithmetic in ops fvcore's
handles count (:mod:`spactor.train.flops.handles`):

* ``token_cross_entropy_sums`` → its unfused math (``logsumexp``, ``gather``, sums);
* flex attention → SDPA on its dense mask, and no ``BlockMask`` built
  (:mod:`spactor.architectures.flex_dense`): the same two matmuls at the same shapes,
  which the SDPA handle counts as it counts the flex kernel's work.

Every other call runs as it would, under this mode still, which is also
:class:`~spactor.train.flops.meta_attention.FusedMetaAttention` (SDPA on ``meta`` as one
fused op). Nothing outside ``spactor.train.flops`` asks whether it is being traced.
"""

from __future__ import annotations

from typing import Any

from spactor.architectures.flex_dense import DENSE_FLEX_FORMS
from spactor.objectives.cross_entropy import token_cross_entropy_sums, unfused_token_cross_entropy_sums
from spactor.overrides import SubstitutingMode
from spactor.train.flops.meta_attention import FusedMetaAttention


class TraceForms(SubstitutingMode, FusedMetaAttention):
    """Within this mode the overridable calls listed in the module docstring take their
    traceable form, and SDPA on meta is one fused op; everything else runs unchanged."""

    forms = {**DENSE_FLEX_FORMS, token_cross_entropy_sums: unfused_token_cross_entropy_sums}

    def passthrough(self, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return FusedMetaAttention.__torch_function__(self, func, types, args, kwargs)
