"""BERT-style masked language modelling on the discriminator's encoder states, ``mlm``.

Needs ``mlm_mask`` / ``mlm_labels`` from the ``mlm_mask`` objective. The loss is the token
cross-entropy at the masked positions, summed, with ``count`` = the number of masked
positions; the vocabulary projection (``model.lm_logits``) runs on the rows of
``mlm_index`` only (a fixed number per example, see ``mlm_mask``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from spactor.objectives.base import Batch, LossTerm, Objective, ObjectiveContext, ObjectiveOutput
from spactor.objectives.mlm_mask import index_from_mask, index_parts
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
        index = batch["mlm_index"] if "mlm_index" in batch else index_from_mask(mask)
        rows, cols, slot = index_parts(index, mask.shape[1])
        full_labels = batch.get("mlm_labels", batch["encoder_input"])  # no labels only if nothing is masked
        # (B·K,) targets at the index; its padding slots are ignored (-100). The vocabulary
        # projection runs on the K gathered rows only, a shape that never depends on the data.
        labels = torch.where(slot, full_labels.gather(1, cols), -100).flatten()
        logits = model.lm_logits(encoder_hidden[rows, cols]).float().flatten(0, 1)  # CE in fp32
        total = F.cross_entropy(logits, labels, reduction="sum")
        metrics = {}
        if self.compute_metrics:
            with torch.no_grad():
                real = slot.flatten()
                correct = ((logits.argmax(dim=-1) == labels) & real).sum().float()
                metrics["mlm/accuracy"] = correct / real.sum().clamp(min=1).float()
        return ObjectiveOutput(loss=LossTerm(total, mask.sum()), metrics=metrics)


@OBJECTIVES.register("mlm", MLMConfig)
def build_mlm(cfg: MLMConfig, ctx: ObjectiveContext) -> MLM:
    """Masked language modelling (BERT) on the encoder states at mlm_mask positions."""
    return MLM(cfg, ctx)
