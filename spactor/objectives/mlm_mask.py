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
* ``mlm_index`` ``(B, K)`` long: the chosen positions of each row in ascending order,
  padded with ``L`` (one past the last position). ``K = round(ratio * L)`` bounds every
  row's count and follows from the encoder length and the knob alone, so the shape never
  depends on the data: the generator and the MLM loss gather and scatter at these
  indices without boolean indexing or a host sync (see :func:`index_parts`).

``preview_fields`` shows them as ``mlm_positions``, trimmed to the longest row, -1 padded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spactor.checks import CheckContext, one_of, unit_interval
from spactor.objectives.noise import row_rand, row_randint
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

    def check(self, where: str, ctx: CheckContext) -> None:
        # Every real token (ratio 1) is a well-defined choice, unlike the [0, 1) of
        # objectives' generic ``*ratio`` rule.
        unit_interval(f"{where}.ratio", self.ratio, closed_high=True)
        one_of(f"{where}.mode", self.mode, MODES)


def max_chosen(length: int, ratio: float) -> int:
    """The most positions a row of ``length`` can have chosen: ``round(ratio * length)``
    (half to even in float64 like the per-row counts, and monotone in the row's count)."""
    return round(length * ratio)


def choose_index(
    ids: torch.Tensor, ratio: float, vocab: Vocab, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exactly ``round(ratio * n_i)`` positions among the ``n_i`` real tokens of each row,
    uniformly at random: random keys (specials pushed past every real key), and the
    row's k smallest keys are chosen. Returns the ``(B, L)`` bool mask and the ``(B, K)``
    ascending index (padded with ``L``, ``K = max_chosen(L, ratio)``)."""
    length = ids.shape[1]
    real = ~(vocab.is_special(ids) | vocab.is_mode_token(ids))
    # float64 half-to-even rounding, like Python's round() on the same numbers.
    k = torch.round(real.sum(dim=1).double() * ratio).long()
    # float64 keys in [0, 1); specials get 2.0 so they rank after all real tokens.
    keys = row_rand(ids.shape, generator=generator, device=ids.device, dtype=torch.float64)
    keys = keys.masked_fill(~real, 2.0)
    order = keys.argsort(dim=1)
    positions = torch.arange(length, device=ids.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    mask = rank < k[:, None]
    width = max_chosen(length, ratio)
    slots = torch.arange(width, device=ids.device) < k[:, None]
    index = torch.where(slots, order[:, :width], length).sort(dim=1).values
    return mask, index


def choose_positions(
    ids: torch.Tensor, ratio: float, vocab: Vocab, generator: torch.Generator
) -> torch.Tensor:
    """``(B, L)`` bool with exactly ``round(ratio * n_i)`` True among the real tokens of
    each row (:func:`choose_index`'s mask)."""
    return choose_index(ids, ratio, vocab, generator)[0]


def index_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """An ``mlm_index`` for a batch that has only a mask (every position a slot, so ``K =
    L``: static, but as wide as the row)."""
    length = mask.shape[1]
    positions = torch.arange(length, device=mask.device).expand_as(mask)
    return torch.where(mask, positions, length).sort(dim=1).values


def index_parts(index: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rows, cols, slot)`` for an ``mlm_index`` over rows of ``length``:
    ``x[rows, cols]`` gathers ``(B, K, ...)`` from a ``(B, L, ...)`` tensor (padding
    slots read the last position), ``slot`` is True at the real entries."""
    slot = index < length
    cols = index.clamp(max=length - 1)
    rows = torch.arange(index.shape[0], device=index.device)[:, None].expand_as(cols)
    return rows, cols, slot


def scatter_index(ids: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``ids`` with ``values`` ``(B, K)`` written at ``index``; padding slots (``L``) land
    in a spare column that is dropped."""
    length = ids.shape[1]
    spare = torch.cat([ids, ids[:, :1]], dim=1)
    return spare.scatter(1, index, values.to(ids.dtype))[:, :length]


def apply_mask(
    ids: torch.Tensor, chosen: torch.Tensor, mode: str, vocab: Vocab, generator: torch.Generator
) -> torch.Tensor:
    """Replace the chosen positions of ``ids`` according to ``mode``."""
    if mode == "replace_all":
        return ids.masked_fill(chosen, vocab.mask_id)
    u = row_rand(ids.shape, generator=generator, device=ids.device)
    if mode == "electra":
        return ids.masked_fill(chosen & (u < ELECTRA_MASK_PROB), vocab.mask_id)
    if mode == "bert":
        # Real SentencePiece ids: after pad/EOS/UNK and below the lowest sentinel.
        random_ids = row_randint(
            3, vocab.last_sentinel_id, ids.shape, generator=generator, device=ids.device, dtype=ids.dtype
        )
        out = ids.masked_fill(chosen & (u < BERT_MASK_PROB), vocab.mask_id)
        replace = chosen & (u >= BERT_MASK_PROB) & (u < BERT_MASK_PROB + BERT_RANDOM_PROB)
        return torch.where(replace, random_ids, out)
    raise ValueError(f"unknown mlm_mask mode '{mode}'; valid: {', '.join(MODES)}")


class MlmMask(Objective):
    """Choose ``ratio`` of the real encoder tokens and mask them (no loss of its own)."""

    ROW_LOCAL_NOISE = True
    KEEPS_PADDING = True  # masks real tokens in place: an unpadded input stays unpadded

    KNOBS = ("ratio", "enabled")
    REQUIRES = ("encoder_input",)
    PROVIDES = ("encoder_input", "mlm_mask", "mlm_index", "mlm_labels")
    NEEDS = ()  # a transform: no model pass

    def __init__(self, cfg: MlmMaskConfig, ctx: ObjectiveContext) -> None:
        super().__init__(cfg, ctx)
        cfg.check(f"objectives.{ctx.name}", ctx.check_context())

    @property
    def ratio(self) -> float:
        return float(self.knob("ratio"))

    def check_knob(self, knob: str, value: float | bool) -> None:
        if knob == "ratio":  # the config's own rule, for a value a schedule sets
            unit_interval(f"objectives.{self.name}.ratio", value, closed_high=True)

    @torch.no_grad()
    def transform(self, batch: Batch, rng: torch.Generator) -> Batch:
        ids = batch["encoder_input"]
        if self.is_off():  # every field still there (nothing chosen), as PROVIDES says
            empty = ids.new_zeros((ids.shape[0], 0), dtype=torch.long)
            return {**batch, "mlm_mask": torch.zeros_like(ids, dtype=torch.bool), "mlm_index": empty,
                    "mlm_labels": torch.full_like(ids, self.vocab.pad_id)}
        chosen, index = choose_index(ids, self.ratio, self.vocab, rng)
        return {
            **batch,
            "encoder_input": apply_mask(ids, chosen, self.cfg.mode, self.vocab, rng),
            "mlm_mask": chosen,
            "mlm_index": index,
            "mlm_labels": ids.masked_fill(~chosen, self.vocab.pad_id),
        }

    def is_off(self) -> bool:
        return not self.enabled or self.ratio == 0

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
