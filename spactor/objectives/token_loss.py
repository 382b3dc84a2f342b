"""The vocabulary loss every sequence objective shares: teacher-forced token
cross-entropy of a model pass against a target field, summed over the real (non-pad)
targets, with T5's z-loss as an aux loss of its own (``<name>_z``).

Span corruption, prefix-LM and UL2 read the decoder pass against ``decoder_target``;
``causal_lm`` and the decoder-only layouts read the causal pass against ``lm_target``. A
subclass names its ``TARGET`` field and the ``pass_hidden`` it scores; the count, the
z-loss and the metrics are defined here once."""

from __future__ import annotations

from typing import ClassVar

import torch

from spactor.objectives.base import (
    Batch,
    MicroBatchContext,
    Objective,
    ObjectiveOutput,
    Reduce,
    SharedForward,
)
from spactor.objectives.cross_entropy import token_cross_entropy


class TokenTargetLoss(Objective):
    """Token cross-entropy of ``pass_hidden(forward)`` against ``batch[TARGET]`` (pad
    targets count nothing); the base of an objective whose config has ``z_loss``."""

    TARGET: ClassVar[str]

    def pass_hidden(self, forward: SharedForward) -> torch.Tensor:
        """``(B, T, d)`` hidden states whose positions predict ``batch[TARGET]``."""
        raise NotImplementedError

    def count(self, batch: Batch) -> torch.Tensor:
        return (batch[self.TARGET] != self.vocab.pad_id).sum()

    @property
    def z_loss_name(self) -> str:
        return f"{self.name}_z"

    def aux_counts(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {self.z_loss_name: self.count(batch)} if self.cfg.z_loss > 0 else {}

    def loss_weights(self) -> dict[str, float]:
        return {self.name: self.weight, self.z_loss_name: self.weight}  # the z-loss is weighted like the loss

    def loss(self, batch: Batch, forward: SharedForward, ctx: MicroBatchContext) -> ObjectiveOutput:
        """Unweighted summed token cross-entropy; the runner multiplies by ``weight`` and
        divides by the global ``count``. With ``z_loss`` > 0 the z term is an aux loss of
        its own (``<name>_z``, also weighted by ``weight``)."""
        # Logits stay in the compute dtype; the cross-entropy works in fp32 chunk by chunk.
        logits = forward.model.lm_logits(self.pass_hidden(forward))
        target = batch[self.TARGET]
        ce = token_cross_entropy(logits, target, self.vocab.pad_id, with_accuracy=ctx.with_metrics)
        term = self.loss_term(ctx, ce.total)
        aux = {}
        if self.cfg.z_loss > 0:
            aux[self.z_loss_name] = self.aux_term(ctx, self.z_loss_name, self.cfg.z_loss * ce.z_total)
        out = ObjectiveOutput(loss=term, aux_losses=aux)
        if ce.correct is not None:  # logging steps only
            out.record(f"{self.name}/accuracy", ce.correct.float() / term.count.clamp_min(1).float(), Reduce.MEAN)
        return out
