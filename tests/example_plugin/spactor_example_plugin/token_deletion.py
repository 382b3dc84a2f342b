"""``token_deletion``: BART's token-deletion noise as a spactor objective.

A transform only (no loss, no parameters): after span corruption it deletes a
``ratio`` of each encoder input's ordinary tokens — never sentinels, EOS, ``[M]`` or
padding — closes the gaps and pads the end, so the batch keeps its shape. The span
corruption target is unchanged, so the model must fill in the spans from a context
that also has holes it was not told about.

    objectives:
      span_corruption: {}
      token_deletion: {ratio: 0.05}

``ratio`` is a knob (``objectives.token_deletion.ratio``): a schedule can anneal it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spactor.objectives.base import Batch, Objective, ObjectiveContext
from spactor.registry import OBJECTIVES


@dataclass
class TokenDeletionConfig:
    ratio: float = 0.1  # fraction of each row's ordinary tokens to delete


class TokenDeletion(Objective):
    KNOBS = ("ratio",)
    REQUIRES = ("encoder_input",)
    PROVIDES = ("encoder_input",)

    def __init__(self, cfg: TokenDeletionConfig, ctx: ObjectiveContext) -> None:
        super().__init__(cfg, ctx)

    def transform(self, batch: Batch, rng: torch.Generator) -> Batch:
        ratio = float(self.knob("ratio"))  # the schedule's current value, not the config's
        ids = batch["encoder_input"]
        if ratio <= 0:
            return batch
        candidate = ~self.vocab.is_special(ids)
        to_delete = (candidate.sum(1).float() * ratio).round().long()  # per row
        # A random rank among each row's candidates (specials rank last): delete the
        # lowest ranks. Vectorised, on the batch's device, no host sync.
        noise = torch.rand(ids.shape, generator=rng, device=ids.device).masked_fill(~candidate, 2.0)
        rank = noise.argsort(dim=1).argsort(dim=1)
        keep = rank >= to_delete[:, None]
        # Stable sort moves the kept tokens to the front in their original order.
        order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
        out = ids.gather(1, order)
        positions = torch.arange(ids.shape[1], device=ids.device)
        out = out.masked_fill(positions[None, :] >= keep.sum(1, keepdim=True), self.vocab.pad_id)
        return {**batch, "encoder_input": out}


@OBJECTIVES.register("token_deletion", TokenDeletionConfig)
def build_token_deletion(cfg: TokenDeletionConfig, ctx: ObjectiveContext) -> TokenDeletion:
    """BART-style token deletion on the encoder input (example third-party plugin)."""
    return TokenDeletion(cfg, ctx)
