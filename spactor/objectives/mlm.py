"""BERT-style masked language modelling on the discriminator's encoder states, ``mlm``.

Needs ``mlm_mask`` / ``mlm_labels`` from the ``mlm_mask`` objective. The loss is the token
cross-entropy at the masked positions, summed, with ``count`` = the number of masked
positions; the vocabulary projection (``model.lm_logits``) runs on those rows only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from spactor.objectives.base import Batch, LossTerm, Objective, ObjectiveContext, ObjectiveOutput
from spactor.registry import OBJECTIVES


@dataclass
class MLMConfig:
    weight: float = 1.0  # knob


class MLM(Objective):
    """Cross-entropy of ``model.lm_logits`` at the masked encoder positions."""

    KNOBS = ("weight",)

    def _mask(self, batch: Batch) -> torch.Tensor:
        if "mlm_mask" not in batch:
            raise KeyError(
                f"objectives.{self.name}: the batch has no 'mlm_mask'; configure an mlm_mask objective before mlm"
            )
        return batch["mlm_mask"]

    def count(self, batch: Batch) -> torch.Tensor:
        return self._mask(batch).sum()

    def loss(self, batch: Batch, encoder_hidden: torch.Tensor, model: Any) -> ObjectiveOutput:
        mask = self._mask(batch)
        labels = batch.get("mlm_labels", batch["encoder_input"])[mask]  # no labels only if nothing is masked
        logits = model.lm_logits(encoder_hidden[mask]).float()  # CE in fp32 whatever the compute dtype
        total = F.cross_entropy(logits, labels, reduction="sum")
        with torch.no_grad():
            accuracy = (logits.argmax(dim=-1) == labels).sum().float() / max(labels.numel(), 1)
        return ObjectiveOutput(loss=LossTerm(total, mask.sum()), metrics={"mlm/accuracy": accuracy})


@OBJECTIVES.register("mlm", MLMConfig)
def build_mlm(cfg: MLMConfig, ctx: ObjectiveContext) -> MLM:
    """Masked language modelling (BERT) on the encoder states at mlm_mask positions."""
    return MLM(cfg, ctx)
