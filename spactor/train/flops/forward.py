"""fvcore's count of a model's plain forward pass, the number each architecture's analytic
formula (``ArchitectureSpec.analytic_flops``) predicts: the tests hold the two equal.

``spactor flops`` prints the analytic count beside fvcore's count of each training step:
the model's forward at the lengths that step runs it (:func:`forward_lengths`) × 3 (the
model trains) × ``trainer.batch_size``, per step and per token of the raw chunk (what
``tokens_seen`` counts). Measured / analytic is 1 where the step runs the model and
nothing else with every position through the LM head (plain span corruption, causal LM),
above 1 for what objectives add (the RTD generator and head), below 1 for a head run on
a subset of positions (MLM's masked tokens).

The same counter as a training step's (fvcore, :func:`spactor.train.flops.handles.op_handles`,
attention fused on ``meta``, flex and the fused cross-entropy in their traceable forms), on
the model alone: no objectives, no losses, no padding.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from spactor.capabilities import CAUSAL_LM, PREFIX_LM, capabilities_of
from spactor.objectives.causal_lm import LM_INPUT
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


def forward_lengths(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(encoder, decoder) tokens of one sequence's model forward on a training ``batch``,
    as the analytic formula takes them: an encoder-decoder reads ``encoder_input`` and
    ``decoder_input``, a decoder-only model ``lm_input`` where an objective provides it,
    anything else ``encoder_input`` (decoder 0)."""
    if getattr(model, "has_decoder", False):
        decoder = batch.get("decoder_input")
        return int(batch["encoder_input"].shape[-1]), 0 if decoder is None else int(decoder.shape[-1])
    if capabilities_of(model) & {CAUSAL_LM, PREFIX_LM} and LM_INPUT in batch:
        return int(batch[LM_INPUT].shape[-1]), 0
    return int(batch["encoder_input"].shape[-1]), 0
