"""UL2's mixture of denoisers (Tay et al., 2023), vectorised over the batch in torch.

Each example is corrupted by one denoiser, drawn per example with the configured rates:

* **R** (regular) and **X** (extreme): T5 span corruption
  (:func:`spactor.objectives.span_corruption.span_corrupt`) with the denoiser's mean span
  length and noise density — UL2's R: μ 3 and 8 at 15%; X: μ 3 and 8 at 50%, μ 64 at
  15% and at 50% (UL2 §3.1.2);
* **S** (sequential): a prefix LM (:mod:`spactor.objectives.prefix_lm`), one split
  point, the encoder reads the prefix and the decoder predicts the rest — UL2's
  (μ = L/4, r = 0.25, one span) is T5's prefix split at noise density 0.25.

The denoiser's mode token (``[R]``, ``[S]``, ``[X]``: the embedding padding rows right
after ``[M]``, ``Vocab.mode_id``) is prepended to the encoder input.

**Lengths.** Every denoiser must fill the same ``input_length`` encoder tokens but needs
a different raw chunk for it (R at 15% / μ 3 shortens ~568 → 512, S keeps it). The data
pipeline delivers one raw length, the longest any denoiser needs
(:meth:`UL2.raw_length`), and each denoiser corrupts only the first ``raw_length`` tokens
of its own (T5 cuts chunks per task the same way); the rest of the chunk is dropped. A
denoiser's own raw length is the longest chunk whose corrupted input, with the mode
token, fits ``input_length`` *and* needs at most the vocabulary's 100 sentinels — at
50% noise and μ 3 that is the sentinels' limit, so that denoiser's encoder input is
shorter and padded. Targets differ in length per denoiser; all are padded to
``target_length``, the longest any denoiser produces (or a longer configured value),
so every output shape depends only on the config.

**Vectorisation.** Every denoiser runs on the whole batch (a handful of tensor ops each)
and each example keeps the output of its own: a few times the (cheap) corruption work in
exchange for static shapes, no boolean indexing and no host sync.

The loss is span corruption's decoder cross-entropy (``loss/<name>``), summed over the
real target tokens of every example whatever its denoiser.

On a decoder-only model (``PREFIX_LM``) the factory builds :class:`UL2Decoder`: the same
corruption, laid out as UL2's decoder-only model reads it (mode token, corrupted input,
then the targets in one sequence; bidirectional over the input, loss on the targets).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from spactor.architectures.base import DECODE, ENCODE, PREFIX_LM
from spactor.checks import CheckContext
from spactor.config import ConfigError
from spactor.objectives.noise import row_index, row_multinomial
from spactor.objectives.base import MODE_TOKENS, Batch, ObjectiveContext, check_objective_fields
from spactor.objectives.causal_lm import LM_INPUT, LM_TARGET, PREFIX_LENGTH, CausalTargetLoss, decoder_layout
from spactor.objectives.prefix_lm import (
    check_prefix_density,
    prefix_chunk_length,
    prefix_split,
    random_prefix_lengths,
)
from spactor.objectives.span_corruption import DecoderTargetLoss, max_raw_length, span_corrupt, span_counts
from spactor.registry import OBJECTIVES

MODES = ("R", "S", "X")
assert len(MODES) == len(MODE_TOKENS)


@dataclass
class DenoiserConfig:
    mode: str = "R"  # R | X: span corruption; S: prefix LM. Also picks the mode token.
    mean_noise_span_length: float = 3.0  # R / X only
    noise_density: float = 0.15  # R / X: noise fraction; S: expected suffix fraction (<= 0.5)
    rate: float = 1.0  # relative share of the examples this denoiser corrupts


def ul2_denoisers() -> list[DenoiserConfig]:
    """UL2's seven denoisers as the paper's §3.1.2 states its final objective (arXiv
    2205.05131 v3), in equal proportions (its appendix code samples the tasks uniformly
    when no rates are given). That appendix code runs S as T5's prefix_lm at its default
    density 0.5; the text's S is (μ = L/4, r = 0.25): 0.25 here."""
    return [
        DenoiserConfig("R", 3.0, 0.15),
        DenoiserConfig("R", 8.0, 0.15),
        DenoiserConfig("S", 0.0, 0.25),
        DenoiserConfig("X", 3.0, 0.5),
        DenoiserConfig("X", 8.0, 0.5),
        DenoiserConfig("X", 64.0, 0.15),
        DenoiserConfig("X", 64.0, 0.5),
    ]


@dataclass
class UL2Config:
    denoisers: list[DenoiserConfig] = field(default_factory=ul2_denoisers)
    mode_tokens: bool = True  # prepend [R] / [S] / [X] to the encoder input
    target_length: int | None = None  # null: the longest target any denoiser produces
    weight: float = 1.0  # knob: λ for this loss; the runner applies it
    z_loss: float = 0.0  # T5's z-loss on the decoder's cross-entropy (see span_corruption)

    def check(self, where: str, ctx: CheckContext) -> None:
        check_objective_fields(where, self)
        plan_denoisers(self, where, ctx.input_length, ctx.num_sentinels)


def denoiser_label(d: DenoiserConfig) -> str:
    """``R(μ=3,r=0.15)`` / ``S(r=0.5)``: how preview and errors name a denoiser."""
    if d.mode == "S":
        return f"S(r={d.noise_density:g})"
    return f"{d.mode}(μ={d.mean_noise_span_length:g},r={d.noise_density:g})"


@dataclass(frozen=True)
class DenoiserPlan:
    """What one denoiser does at this encoder length (fixed at build time)."""

    index: int
    mode: str
    raw_length: int  # leading tokens of the chunk it corrupts
    target_length: int  # its (unpadded) decoder target length
    mean_noise_span_length: float
    noise_density: float


def plan_denoiser(
    index: int, d: DenoiserConfig, input_length: int, mode_tokens: bool, num_sentinels: int, where: str
) -> DenoiserPlan:
    """Check one denoiser and fix its raw / target lengths for an encoder input of
    ``input_length`` tokens (the mode token, if any, included)."""
    at = f"{where}.denoisers[{index}]"
    body = input_length - (1 if mode_tokens else 0)  # room left after the mode token
    if d.mode not in MODES:
        raise ConfigError(f"{at}.mode: '{d.mode}' not in {', '.join(MODES)}")
    if not d.rate >= 0.0:
        raise ConfigError(f"{at}.rate must be >= 0, got {d.rate}")
    if d.mode == "S":
        check_prefix_density(at, d.noise_density)
        # T5's prefix_lm at the full input length, the mode token prepended after (UL2's
        # appendix code): the chunk is input_length - 1 either way, and the mode token
        # takes the place T5 leaves for EOS. prefix + EOS fit in raw tokens.
        raw = prefix_chunk_length(input_length)
        if raw < 2:
            raise ConfigError(f"{at}: input_length is too short for a prefix-LM split")
        return DenoiserPlan(index, d.mode, raw, raw, 0.0, d.noise_density)
    if not 0.0 < d.noise_density < 1.0:
        raise ConfigError(f"{at}.noise_density must be in (0, 1), got {d.noise_density}")
    if not d.mean_noise_span_length > 0.0:
        raise ConfigError(f"{at}.mean_noise_span_length must be > 0, got {d.mean_noise_span_length}")
    try:
        raw = max_raw_length(body, d.noise_density, d.mean_noise_span_length)
    except ValueError:
        raise ConfigError(f"{at}: input_length is too short for span corruption") from None
    # Past the sentinel budget, use the longest chunk that stays within it (a shorter,
    # padded encoder input) rather than refuse one of UL2's own denoisers at 512 tokens.
    while raw > 2 and span_counts(raw, d.noise_density, d.mean_noise_span_length).num_spans > num_sentinels:
        raw -= 1
    counts = span_counts(raw, d.noise_density, d.mean_noise_span_length)
    return DenoiserPlan(index, d.mode, raw, counts.target_length, d.mean_noise_span_length, d.noise_density)


def plan_denoisers(
    cfg: UL2Config, where: str, input_length: int, num_sentinels: int
) -> tuple[list[DenoiserPlan], int]:
    """Every denoiser's plan at ``input_length`` (the mode token included) and the decoder
    target length; a one-line ``ConfigError`` for a mixture that cannot work."""
    if not cfg.denoisers:
        raise ConfigError(f"{where}.denoisers: empty; configure at least one denoiser")
    plans = [plan_denoiser(i, d, input_length, cfg.mode_tokens, num_sentinels, where)
             for i, d in enumerate(cfg.denoisers)]
    if sum(d.rate for d in cfg.denoisers) <= 0:
        raise ConfigError(f"{where}.denoisers: every rate is 0; give at least one a positive rate")
    needed = max(p.target_length for p in plans)
    if cfg.target_length is not None and cfg.target_length < needed:
        worst = denoiser_label(cfg.denoisers[max(range(len(plans)), key=lambda i: plans[i].target_length)])
        raise ConfigError(
            f"{where}.target_length: {cfg.target_length} is shorter than the {needed} target tokens "
            f"denoiser {worst} produces at input_length {input_length}; use at least {needed} or null"
        )
    return plans, needed if cfg.target_length is None else cfg.target_length


class UL2(DecoderTargetLoss):
    """UL2's mixture of denoisers, with mode tokens and a decoder loss."""

    ROW_LOCAL_NOISE = True

    KNOBS = ("weight",)
    REQUIRES = ("original",)
    PROVIDES = ("encoder_input", "decoder_input", "decoder_target", "noise_mask", "denoiser")
    # An encoder-decoder, or a decoder-only model with a prefix-bidirectional pass (built
    # as :class:`UL2Decoder`).
    NEEDS = (frozenset({ENCODE, DECODE}), frozenset({PREFIX_LM}))

    def __init__(self, cfg: UL2Config, ctx: ObjectiveContext) -> None:
        super().__init__(cfg, ctx)
        where = f"objectives.{ctx.name}"
        cfg.check(where, ctx.check_context())
        if cfg.mode_tokens:
            last = ctx.vocab.mode_id(len(MODE_TOKENS) - 1)
            if last >= ctx.vocab.size:
                raise ConfigError(
                    f"{where}.mode_tokens: the vocabulary has {ctx.vocab.size} rows, no free rows after [M] "
                    f"({ctx.vocab.mask_id}) for [R] [S] [X] (needs {last + 1}); set mode_tokens: false"
                )
        self.input_length = ctx.input_length
        self.plans, self.target_length = plan_denoisers(cfg, where, ctx.input_length, ctx.vocab.num_sentinels)
        rates = [d.rate for d in cfg.denoisers]
        self.labels = [denoiser_label(d) for d in cfg.denoisers]
        self.chunk_length = max(p.raw_length for p in self.plans)
        self._rates = rates
        self._mode_ids = [ctx.vocab.mode_id(MODES.index(p.mode)) for p in self.plans]
        # Per device, made once: not buffers, because objectives may be built on the meta
        # device (preview, FLOPs) while the batch lives on the CPU or a GPU.
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.round_robin = False  # preview: denoiser i % D for example i instead of drawing

    def raw_length(self, input_length: int) -> int:
        if input_length != self.input_length:
            sentinels, where = self.vocab.num_sentinels, f"objectives.{self.name}"
            return max(plan_denoiser(i, d, input_length, self.cfg.mode_tokens, sentinels, where).raw_length
                       for i, d in enumerate(self.cfg.denoisers))
        return self.chunk_length

    def _table(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(rates, mode-token ids) on ``device``."""
        if device not in self._tables:
            self._tables[device] = (
                torch.tensor(self._rates, dtype=torch.float64, device=device),
                torch.tensor(self._mode_ids, dtype=torch.long, device=device),
            )
        return self._tables[device]

    def choose_denoisers(self, batch_size: int, rng: torch.Generator, device: torch.device) -> torch.Tensor:
        """``(batch_size,)`` denoiser index per example, drawn with the configured rates."""
        if self.round_robin:
            return row_index(batch_size, device) % len(self.plans)
        return row_multinomial(self._table(device)[0], batch_size, generator=rng)

    def _corrupt(self, plan: DenoiserPlan, original: torch.Tensor, rng: torch.Generator) -> Batch:
        """One denoiser on the whole batch: encoder ``(B, body)``, target ``(B, T)``,
        noise mask ``(B, N)`` over the full chunk (False past the denoiser's own length)."""
        chunk = original[:, : plan.raw_length]
        body = self.input_length - (1 if self.cfg.mode_tokens else 0)
        if plan.mode == "S":
            prefix = random_prefix_lengths(chunk.shape[0], chunk.shape[1], plan.noise_density, rng, chunk.device)
            out = prefix_split(chunk, prefix, self.vocab)
        else:
            out = span_corrupt(chunk, plan.noise_density, plan.mean_noise_span_length, self.vocab, rng,
                               pad_to=body, name=self.name)
        pad = self.vocab.pad_id
        return {
            "encoder_input": F.pad(out["encoder_input"], (0, body - out["encoder_input"].shape[1]), value=pad),
            "decoder_target": F.pad(
                out["decoder_target"], (0, self.target_length - out["decoder_target"].shape[1]), value=pad
            ),
            "noise_mask": F.pad(out["noise_mask"], (0, original.shape[1] - plan.raw_length), value=False),
        }

    @torch.no_grad()
    def transform(self, batch: Batch, rng: torch.Generator) -> Batch:
        original = batch["original"]
        if original.dim() != 2 or original.shape[1] < self.chunk_length:
            raise ValueError(
                f"objectives.{self.name}: expected raw chunks (B, >= {self.chunk_length}), got {tuple(original.shape)}"
            )
        choice = self.choose_denoisers(original.shape[0], rng, original.device)
        merged: Batch | None = None
        for plan in self.plans:  # a static handful, not a loop over examples
            out = self._corrupt(plan, original, rng)
            if merged is None:
                merged = out
                continue
            mine = choice == plan.index
            merged = {k: torch.where(mine[:, None], out[k], merged[k]) for k in merged}
        assert merged is not None
        encoder = merged["encoder_input"]
        if self.cfg.mode_tokens:
            mode = self._table(original.device)[1][choice].to(encoder.dtype)
            encoder = torch.cat([mode[:, None], encoder], dim=1)
        target = merged["decoder_target"]
        decoder_input = F.pad(target[:, :-1], (1, 0), value=self.vocab.pad_id)
        return {
            **batch,
            "encoder_input": encoder,
            "decoder_target": target,
            "decoder_input": decoder_input,
            "noise_mask": merged["noise_mask"],
            "denoiser": choice,
        }

    def for_preview(self) -> int:
        """Show every denoiser in turn (``spactor preview``)."""
        self.round_robin = True
        return len(self.plans)

    def preview_fields(self, batch: Batch) -> dict[str, Any]:
        return {"denoiser": [self.labels[i] for i in batch["denoiser"].tolist()], "noise_mask": batch["noise_mask"]}


class UL2Decoder(CausalTargetLoss, UL2):
    """UL2 on a decoder-only model (``PREFIX_LM``), in UL2's decoder-only layout: one
    sequence per example, the mode token and the corrupted input (what the encoder would
    read, with its EOS) then the targets (what the decoder would predict), right-padded
    to ``input_length + target_length - 1`` tokens. The model attends bidirectionally
    over the input part (``prefix_length``) and causally over the targets; the loss is
    the next-token loss on the target tokens only, the same count as the
    encoder-decoder form's."""

    PROVIDES = (LM_INPUT, LM_TARGET, PREFIX_LENGTH, "noise_mask", "denoiser")
    prefix_view = PREFIX_LENGTH

    @torch.no_grad()
    def transform(self, batch: Batch, rng: torch.Generator) -> Batch:
        out = UL2.transform(self, batch, rng)
        encoder, target, pad = out["encoder_input"], out["decoder_target"], self.vocab.pad_id
        # Both sides are right-padded and hold no pad inside (raw chunks have none):
        # pack each row as its input, then its targets, then padding; no host sync.
        input_length = (encoder != pad).sum(dim=1, keepdim=True)
        target_length = (target != pad).sum(dim=1, keepdim=True)
        position = torch.arange(encoder.shape[1] + target.shape[1], device=encoder.device)[None, :]
        from_target = target.gather(1, (position - input_length).clamp(0, target.shape[1] - 1))
        sequence = torch.where(
            position < input_length,
            F.pad(encoder, (0, target.shape[1]), value=pad),
            torch.where(position < input_length + target_length, from_target, torch.full_like(from_target, pad)),
        )
        # Position t predicts token t + 1, a loss only where that token is a target.
        predicted = position[:, 1:] >= input_length
        lm_target = torch.where(predicted, sequence[:, 1:], torch.full_like(sequence[:, 1:], pad))
        return {
            **batch,
            LM_INPUT: sequence[:, :-1],
            LM_TARGET: lm_target,
            PREFIX_LENGTH: input_length.squeeze(1),
            "noise_mask": out["noise_mask"],
            "denoiser": out["denoiser"],
        }


@OBJECTIVES.register("ul2", UL2Config)
def build_ul2(cfg: UL2Config, ctx: ObjectiveContext) -> UL2:
    """UL2 mixture of denoisers (R/S/X, per-example, mode tokens), decoder loss; on a
    decoder-only model, UL2's decoder-only layout (inputs then targets, one sequence)."""
    if decoder_layout(ctx.name, ctx.model):
        return UL2Decoder(cfg, ctx)
    return UL2(cfg, ctx)
