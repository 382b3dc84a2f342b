"""BERT-style masked language modelling on the discriminator's encoder states, ``mlm``.

Needs ``mlm_mask`` / ``mlm_labels`` from the ``mlm_mask`` objective. The loss is the token
cross-entropy at the masked positions, summed, with ``count`` = the number of masked
positions; the vocabulary projection (``model.lm_logits``) runs on those rows only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from spactor.objectives.base import Batch, LossTerm, Objective, ObjectiveContext, ObjectiveOutput
from spactor.objectives.cross_entropy import check_z_loss, token_cross_entropy
from spactor.registry import OBJECTIVES


@dataclass
class MLMConfig:
    weight: float = 1.0  # knob
    z_loss: float = 0.0  # T5's z-loss coefficient (see span_corruption); logged as loss/<name>_z


class MLM(Objective):
    """Cross-entropy of ``model.lm_logits`` at the masked encoder positions."""

    KNOBS = ("weight",)

    def __init__(self, cfg: MLMConfig, ctx: ObjectiveContext) -> None:
        super().__init__(cfg, ctx)
        check_z_loss(f"objectives.{ctx.name}", cfg.z_loss)

    def _mask(self, batch: Batch) -> torch.Tensor:
        if "mlm_mask" not in batch:
            raise KeyError(
                f"objectives.{self.name}: the batch has no 'mlm_mask'; configure an mlm_mask objective before mlm"
            )
        return batch["mlm_mask"]

    def count(self, batch: Batch) -> torch.Tensor:
        return self._mask(batch).sum()

    def aux_counts(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {f"{self.name}_z": self.count(batch)} if self.cfg.z_loss > 0 else {}

    def loss(self, batch: Batch, encoder_hidden: torch.Tensor, model: Any) -> ObjectiveOutput:
        mask = self._mask(batch)
        labels = batch.get("mlm_labels", batch["encoder_input"])[mask]  # no labels only if nothing is masked
        # Logits in the compute dtype; the cross-entropy works in fp32 chunk by chunk.
        logits = model.lm_logits(encoder_hidden[mask])
        ce = token_cross_entropy(logits, labels, with_accuracy=self.compute_metrics)
        aux = {}
        if self.cfg.z_loss > 0:
            aux[f"{self.name}_z"] = LossTerm(self.cfg.z_loss * ce.z_total, mask.sum(), self.weight)
        metrics = {}
        if ce.correct is not None:
            metrics["mlm/accuracy"] = ce.correct.float() / max(labels.numel(), 1)
        return ObjectiveOutput(loss=LossTerm(ce.total, mask.sum()), aux_losses=aux, metrics=metrics)


@OBJECTIVES.register("mlm", MLMConfig)
def build_mlm(cfg: MLMConfig, ctx: ObjectiveContext) -> MLM:
    """Masked language modelling (BERT) on the encoder states at mlm_mask positions."""
    return MLM(cfg, ctx)
