"""Token-level masking on the (already span-corrupted) encoder input.

``round(ratio * n_i)`` positions are chosen uniformly among the ``n_i`` real tokens of
example ``i`` (never pad, EOS, sentinels, [M] or a UL2 mode token) and replaced according to ``mode``:

* ``replace_all`` (SpacTor): every chosen position becomes [M];
* ``electra``: each chosen position becomes [M] with probability 0.85, else keeps its token;
* ``bert``: [M] with probability 0.8, a uniformly random real token with 0.1, else kept.

Data-side only: this objective has no loss. It adds

* ``mlm_mask`` ``(B, L)`` bool: the chosen positions (whatever happened to them);
* ``mlm_labels`` ``(B, L)``: the original id at chosen positions, ``pad_id`` elsewhere.
  The pre-masking input everywhere is ``torch.where(mlm_mask, mlm_labels, encoder_input)``.

The number chosen differs per example, so positions are returned as a mask (no host
sync); ``preview_fields`` turns it into padded ``mlm_positions``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spactor.objectives.base import Batch, Objective, ObjectiveContext, Vocab
from spactor.registry import OBJECTIVES

MODES = ("replace_all", "electra", "bert")
ELECTRA_MASK_PROB = 0.85
BERT_MASK_PROB = 0.8
BERT_RANDOM_PROB = 0.1


@dataclass
class MlmMaskConfig:
    ratio: float = 0.15  # knob: fraction of real tokens chosen
    enabled: bool = True  # knob: off = identity (stage 2 of SpacTor)
    mode: str = "replace_all"  # replace_all | electra | bert


def choose_positions(
    ids: torch.Tensor, ratio: float, vocab: Vocab, generator: torch.Generator
) -> torch.Tensor:
    """``(B, L)`` bool with exactly ``round(ratio * n_i)`` True among the real tokens of
    each row, uniformly at random: random keys (specials pushed past every real key), and
    a position is chosen if its key ranks among the row's k smallest."""
    real = ~(vocab.is_special(ids) | vocab.is_mode_token(ids))
    # float64 half-to-even rounding, like Python's round() on the same numbers.
    k = torch.round(real.sum(dim=1).double() * ratio).long()
    # float64 keys in [0, 1); specials get 2.0 so they rank after all real tokens.
    keys = torch.rand(ids.shape, generator=generator, device=ids.device, dtype=torch.float64)
    keys = keys.masked_fill(~real, 2.0)
    order = keys.argsort(dim=1)
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    return rank < k[:, None]


def apply_mask(
    ids: torch.Tensor, chosen: torch.Tensor, mode: str, vocab: Vocab, generator: torch.Generator
) -> torch.Tensor:
    """Replace the chosen positions of ``ids`` according to ``mode``."""
    if mode == "replace_all":
        return ids.masked_fill(chosen, vocab.mask_id)
    u = torch.rand(ids.shape, generator=generator, device=ids.device)
    if mode == "electra":
        return ids.masked_fill(chosen & (u < ELECTRA_MASK_PROB), vocab.mask_id)
    if mode == "bert":
        # Real SentencePiece ids: after pad/EOS/UNK and below the lowest sentinel.
        random_ids = torch.randint(
            3, vocab.last_sentinel_id, ids.shape, generator=generator, device=ids.device, dtype=ids.dtype
        )
        out = ids.masked_fill(chosen & (u < BERT_MASK_PROB), vocab.mask_id)
        replace = chosen & (u >= BERT_MASK_PROB) & (u < BERT_MASK_PROB + BERT_RANDOM_PROB)
        return torch.where(replace, random_ids, out)
    raise ValueError(f"unknown mlm_mask mode '{mode}'; valid: {', '.join(MODES)}")


class MlmMask(Objective):
    """Choose ``ratio`` of the real encoder tokens and mask them (no loss of its own)."""

    KNOBS = ("ratio", "enabled")
    STAGE1_ONLY = True  # no masking after SpacTor's switch to plain span corruption

    def __init__(self, cfg: MlmMaskConfig, ctx: ObjectiveContext) -> None:
        super().__init__(cfg, ctx)
        if cfg.mode not in MODES:
            raise ValueError(
                f"objectives.{ctx.name}.mode: unknown mode '{cfg.mode}'; valid: {', '.join(MODES)}"
            )
        self._check_ratio()

    def _check_ratio(self) -> None:
        # Checked per batch too: a schedule may set the knob at any step.
        if not 0.0 <= self.cfg.ratio <= 1.0:
            raise ValueError(f"objectives.{self.name}.ratio must be in [0, 1], got {self.cfg.ratio}")

    @torch.no_grad()
    def transform(self, batch: Batch, rng: torch.Generator) -> Batch:
        ids = batch["encoder_input"]
        if not self.cfg.enabled or self.cfg.ratio == 0:
            return {**batch, "mlm_mask": torch.zeros_like(ids, dtype=torch.bool)}
        self._check_ratio()
        chosen = choose_positions(ids, self.cfg.ratio, self.vocab, rng)
        return {
            **batch,
            "encoder_input": apply_mask(ids, chosen, self.cfg.mode, self.vocab, rng),
            "mlm_mask": chosen,
            "mlm_labels": ids.masked_fill(~chosen, self.vocab.pad_id),
        }

    def is_off(self) -> bool:
        return not self.enabled or self.cfg.ratio == 0

    def preview_fields(self, batch: Batch) -> dict[str, torch.Tensor]:
        """``mlm_positions``: ``(B, max_k)`` sorted indices into ``encoder_input``, -1 padded."""
        mask = batch["mlm_mask"]
        length = mask.shape[1]
        index = torch.arange(length, device=mask.device).expand_as(mask)
        ordered = torch.where(mask, index, length).sort(dim=1).values
        width = int(mask.sum(dim=1).max()) if mask.numel() else 0
        positions = ordered[:, :width]
        return {"mlm_positions": positions.masked_fill(positions == length, -1)}


@OBJECTIVES.register("mlm_mask", MlmMaskConfig)
def build_mlm_mask(cfg: MlmMaskConfig, ctx: ObjectiveContext) -> MlmMask:
    """Token-level [M] masking of real encoder tokens (SpacTor / ELECTRA / BERT modes)."""
    return MlmMask(cfg, ctx)
