"""fvcore's count of a model's plain forward pass, the number each architecture's analytic
formula (``ArchitectureSpec.analytic_flops``) predicts: the tests hold the two equal, and
``spactor flops`` prints both per token.

The same counter as a training step's (fvcore, :func:`spactor.train.flops.handles.op_handles`,
attention fused on ``meta``, flex and the fused cross-entropy in their traceable forms), on
the model alone: no objectives, no losses, no padding.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from spactor.train.flops.handles import op_handles
from spactor.train.flops.trace_forms import TraceForms


class _Forward(nn.Module):
    """The model's own forward pass, as :data:`spactor.architectures.base.AnalyticFlops`
    defines it: encode and decode (an encoder-decoder), one causal sequence (a decoder),
    or encode (an encoder), then the LM head on every position of the last stack."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        model: Any = self.model
        if model.has_decoder:
            hidden = model.decode(target, model.encode(source))
        elif callable(getattr(model, "causal", None)):
            hidden = model.causal(torch.cat([source, target], dim=1))
        else:
            hidden = model.encode(source)
        return model.lm_logits(hidden)


def count_forward_flops(
    model: nn.Module, encoder_length: int, decoder_length: int = 0, elementwise: bool = False
) -> tuple[float, dict[str, int]]:
    """fvcore's FLOPs (2 x multiply-adds, the training step's op handles) of one sequence's plain
    forward through ``model`` (:class:`_Forward`), on random token ids and without
    padding: what the architecture's ``analytic_flops`` formula predicts; and the ops
    fvcore could not count (by name: how often), which it would have dropped."""
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError:
        raise RuntimeError("counting FLOPs needs fvcore: pip install fvcore") from None

    device = next(model.parameters()).device
    ids = torch.randint(3, model.vocab_size, (1, encoder_length + decoder_length), device=device)
    analysis = FlopCountAnalysis(_Forward(model), (ids[:, :encoder_length], ids[:, encoder_length:]))
    analysis.set_op_handle(**op_handles(elementwise))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    with TraceForms(), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        total = 2.0 * float(analysis.total())
        return total, dict(analysis.unsupported_ops())
