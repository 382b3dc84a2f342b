"""BERT-style masked language modelling on the discriminator's encoder states, ``mlm``.

Needs ``mlm_mask`` / ``mlm_labels`` from the ``mlm_mask`` objective. The loss is the token
cross-entropy at the masked positions, summed, with ``count`` = the number of masked
positions; the vocabulary projection (``model.lm_logits``) runs on the rows of
``mlm_index`` only (a fixed number per example, see ``mlm_mask``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spactor.architectures.base import ENCODE
from spactor.checks import CheckContext
from spactor.objectives.base import (
    Batch,
    MicroBatchContext,
    Objective,
    ObjectiveContext,
    ObjectiveOutput,
    Reduce,
    SharedForward,
    check_objective_fields,
)
from spactor.objectives.cross_entropy import token_cross_entropy
from spactor.objectives.mlm_mask import index_from_mask, index_parts
from spactor.registry import OBJECTIVES


@dataclass
class MLMConfig:
    weight: float = 1.0  # knob
    z_loss: float = 0.0  # T5's z-loss coefficient (see span_corruption); logged as loss/<name>_z

    def check(self, where: str, ctx: CheckContext) -> None:
        check_objective_fields(where, self)


class MLM(Objective):
    """Cross-entropy of ``model.lm_logits`` at the masked encoder positions."""

    KNOBS = ("weight",)
    REQUIRES = ("mlm_mask", "mlm_index", "mlm_labels")
    NEEDS = (frozenset({ENCODE}),)  # predictions from both sides of each masked position

    def __init__(self, cfg: MLMConfig, ctx: ObjectiveContext) -> None:
        super().__init__(cfg, ctx)
        cfg.check(f"objectives.{ctx.name}", ctx.check_context())

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

    def loss_weights(self) -> dict[str, float]:
        return {self.name: self.weight, f"{self.name}_z": self.weight}  # the z-loss is weighted like the loss

    def loss(self, batch: Batch, forward: SharedForward, ctx: MicroBatchContext) -> ObjectiveOutput:
        mask = self._mask(batch)
        index = batch["mlm_index"] if "mlm_index" in batch else index_from_mask(mask)
        rows, cols, slot = index_parts(index, mask.shape[1])
        full_labels = batch.get("mlm_labels", batch["encoder_input"])  # no labels only if nothing is masked
        # (B·K,) targets at the index; its padding slots are ignored (-100). The vocabulary
        # projection runs on the K gathered rows only, a shape that never depends on the data;
        # its logits stay in the compute dtype and the cross-entropy works in fp32 by chunks.
        labels = torch.where(slot, full_labels.gather(1, cols), -100).flatten()
        logits = forward.model.lm_logits(forward.encode()[rows, cols]).flatten(0, 1)
        ce = token_cross_entropy(logits, labels, with_accuracy=ctx.with_metrics)
        aux = {}
        if self.cfg.z_loss > 0:
            key = f"{self.name}_z"
            aux[key] = self.aux_term(ctx, key, self.cfg.z_loss * ce.z_total)
        out = ObjectiveOutput(loss=self.loss_term(ctx, ce.total), aux_losses=aux)
        if ce.correct is not None:  # logging steps only
            out.record(f"{self.name}/accuracy", ce.correct.float() / slot.sum().clamp(min=1).float(), Reduce.MEAN)
        return out


@OBJECTIVES.register("mlm", MLMConfig)
def build_mlm(cfg: MLMConfig, ctx: ObjectiveContext) -> MLM:
    """Masked language modelling (BERT) on the encoder states at mlm_mask positions."""
    return MLM(cfg, ctx)
