"""Causal language modelling: next-token prediction over packed chunks, on a decoder-only
model (``CAUSAL_LM``).

The data delivers raw chunks of ``input_length + 1`` tokens (packed documents, no
padding); the model reads the first ``input_length`` (``lm_input``) and every position
predicts the token after it (``lm_target``), so every token of the chunk but the first
is a target. The loss is the same summed token cross-entropy (with T5's optional
z-loss) as span corruption's decoder loss, counted over the real (non-pad) targets.

:class:`CausalTargetLoss` is that loss for any decoder-only layout: ``prefix_lm`` and
``ul2`` use it on a decoder, with ``lm_target`` padded where no loss is taken (the prefix,
the corrupted input) and ``prefix_length`` marking the bidirectional prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from spactor.architectures.base import CAUSAL_LM, DECODE, ENCODE, PREFIX_LM, capabilities_of
from spactor.checks import CheckContext
from spactor.config import ConfigError
from spactor.objectives.base import (
    Batch,
    ObjectiveContext,
    SharedForward,
    check_objective_fields,
)
from spactor.objectives.token_loss import TokenTargetLoss
from spactor.registry import OBJECTIVES

LM_INPUT = "lm_input"  # (B, L) ids a decoder-only model reads
LM_TARGET = "lm_target"  # (B, L) the next token each position predicts; pad = no loss
PREFIX_LENGTH = "prefix_length"  # (B,) long: the bidirectional prefix of lm_input (PREFIX_LM)


@dataclass
class CausalLMConfig:
    weight: float = 1.0  # knob: λ for this loss; the runner applies it
    z_loss: float = 0.0  # T5's z-loss coefficient, logged as loss/<name>_z (see span_corruption)

    def check(self, where: str, ctx: CheckContext) -> None:
        check_objective_fields(where, self)


def require_capability(name: str, model: Any, capability: str) -> None:
    """A one-line build-time refusal when ``model`` lacks ``capability`` (the config check
    refuses the pairing first when it can tell from the classes)."""
    offered = capabilities_of(model)
    if capability not in offered:
        raise ConfigError(
            f"objectives.{name}: needs a model with the '{capability}' pass, but {type(model).__name__} "
            f"offers {', '.join(sorted(offered)) or 'none'}"
        )


def decoder_layout(name: str, model: Any) -> bool:
    """Whether an objective with an encoder-decoder form and a decoder-only form (prefix
    LM, UL2) builds the decoder-only one for ``model``: an encoder-decoder keeps its own
    form, a model with a prefix-bidirectional pass (``PREFIX_LM``) gets the decoder-only
    layout, anything else is refused in one line (no model: the encoder-decoder form,
    for corruption-only uses such as previews and tests)."""
    offered = capabilities_of(model)
    if model is None or {ENCODE, DECODE} <= offered:
        return False
    if PREFIX_LM in offered:
        return True
    raise ConfigError(
        f"objectives.{name}: needs an encoder-decoder ('{ENCODE}' + '{DECODE}') or a decoder with the "
        f"'{PREFIX_LM}' pass, but {type(model).__name__} offers {', '.join(sorted(offered)) or 'none'}"
    )


class CausalTargetLoss(TokenTargetLoss):
    """Token cross-entropy of a decoder-only pass over ``lm_input`` against ``lm_target``
    (pad targets count nothing), with T5's z-loss; the pass is bidirectional over
    ``prefix_length`` when :attr:`prefix_view` names it. Subclasses fill the fields."""

    prefix_view: str | None = None  # PREFIX_LENGTH for a prefix-bidirectional layout

    TARGET = LM_TARGET

    def pass_hidden(self, forward: SharedForward) -> torch.Tensor:
        return forward.causal(LM_INPUT, self.prefix_view)


class CausalLM(CausalTargetLoss):
    """Next-token prediction on packed chunks."""

    ROW_LOCAL_NOISE = True  # no noise at all: a rank's rows are its own
    KNOBS = ("weight",)
    REQUIRES = ("original",)
    PROVIDES = (LM_INPUT, LM_TARGET)
    NEEDS = (frozenset({CAUSAL_LM}),)

    def __init__(self, cfg: CausalLMConfig, ctx: ObjectiveContext) -> None:
        super().__init__(cfg, ctx)
        cfg.check(f"objectives.{ctx.name}", ctx.check_context())
        require_capability(ctx.name, ctx.model, CAUSAL_LM)
        if ctx.input_length < 1:
            raise ConfigError(f"objectives.{ctx.name}: input_length {ctx.input_length} is too short")
        self.input_length = ctx.input_length

    def raw_length(self, input_length: int) -> int:
        return input_length + 1  # one more token: the last input's target

    @torch.no_grad()
    def transform(self, batch: Batch, rng: torch.Generator) -> Batch:
        # A curriculum's data may deliver a longer chunk: use our own part.
        original = batch["original"][..., : self.input_length + 1]
        if original.dim() != 2 or original.shape[1] < 2:
            raise ValueError(f"objectives.{self.name}: expected raw chunks (B, N >= 2), got {tuple(original.shape)}")
        return {**batch, LM_INPUT: original[:, :-1], LM_TARGET: original[:, 1:]}


@OBJECTIVES.register("causal_lm", CausalLMConfig)
def build_causal_lm(cfg: CausalLMConfig, ctx: ObjectiveContext) -> CausalLM:
    """Causal LM: next-token loss over packed chunks on a decoder-only model."""
    return CausalLM(cfg, ctx)

