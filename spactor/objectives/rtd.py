"""Replaced token detection (ELECTRA; SpacTor stage 1; Fast-ELECTRA), objective ``rtd``.

Runs after ``mlm_mask`` (which puts [M] at ``mlm_mask`` and keeps the originals in
``mlm_labels``):

* ``modify``: the generator G predicts the masked tokens; ``L_G`` = CE summed over the
  masked positions (aux loss ``<name>_generator``, logged ``loss/rtd_generator`` for the
  instance ``rtd``, weight
  ``generator_weight``). Replacements are drawn by Gumbel-max on fp32 logits / temperature
  under ``no_grad``, at the ``mlm_index`` positions (a fixed number per row), and written
  into ``encoder_input``. The uniforms are counter-based on the runner's per-row
  ``noise_seed`` (the same for a row on any number of ranks), or drawn from the runner's
  generator where a batch has no seeds;
  ``rtd_labels`` = 1 where the token now differs from the original (a sample equal to the
  original is *original*), 0 elsewhere and at padding.
* ``loss``: an MLP head (``Linear(d, head_hidden) → GELU → Linear(head_hidden, 1)``) on
  every non-pad encoder state, BCE-with-logits summed (``loss/rtd``, weight λ1 = ``weight``).

Nothing D computes flows back into G: the replaced ids are integers, so the only shared
path is the token embedder when ``embedding_sharing: shared`` (where D's gradient reaches
it as D's own embedding). With ``gdes`` D's input is ``stop_grad(E_G[ids]) + E_D[ids]``,
set through ``batch["encoder_embeds"]``. Simplification: only the encoder input gets the
sum; T5's decoder and its tied LM head keep reading E_D alone, and E_D (E_Δ) keeps D's
usual initialisation instead of DeBERTa-v3's zeros (zeroing it would zero T5's tied head).

Samples never take special ids (pad, EOS, sentinels, [M]): labels never are special, and
a sampled pad would turn a real position into padding for the runner's attention mask.

G's shape is its own block, ``generator: {arch: encoder, layers: 4, ...}`` (an entry of the
``GENERATORS`` registry and that entry's config, checked by it; its sharing modes and its
loader come from the entry's ``GeneratorSpec``); this config keeps what is
the objective's: its loss weights and z-loss, how logits are asked for, the sampling
temperature, how G and D share embeddings, and whether G is trained or loaded and frozen.

``frozen`` (Fast-ELECTRA): G loaded from ``generator_checkpoint``, eval mode,
``requires_grad_(False)``, forward under ``no_grad``; ``loss/rtd_generator`` is still logged
with weight 0. ``release()`` drops G and the head at SpacTor's switch to stage 2.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from spactor.architectures.base import ENCODE, GeneratorSpec, generator_spec_for
from spactor.checks import CheckContext, ModelShape, fail, one_of, positive
from spactor.config import Plugin, plugin_block, resolve_blocks
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
from spactor.objectives.mlm_mask import index_from_mask, index_parts, scatter_index
from spactor.registry import GENERATORS, OBJECTIVES

IGNORE = -100  # cross-entropy target of the padding slots of mlm_index
LOGIT_MODES = ("masked", "all")


# The generator's shape fields that were ``generator_<field>`` keys of this config.
MOVED_GENERATOR_FIELDS = (
    "layers", "d_model", "heads", "d_ff", "d_kv", "hidden_fraction", "norm", "positions", "dropout", "head",
)  # fmt: skip


@dataclass
class RTDConfig:
    weight: float = 10.0  # knob: λ1 on the RTD loss (ELECTRA: 50)
    generator_weight: float = 1.0  # knob: weight on L_G
    # T5's z-loss on the generator's cross-entropy (see span_corruption), loss/<name>_generator_z,
    # weighted by generator_weight.
    generator_z_loss: float = 0.0
    temperature: float = 1.0  # knob: sampling temperature (Fast-ELECTRA anneals it to 1)
    enabled: bool = True  # knob: off = identity, no losses
    head_hidden: int | None = None  # RTD head MLP width; None: head_hidden_multiple × D's hidden size
    # The head's width as a multiple of D's when head_hidden is None: 4 is T5.1.0's d_ff,
    # SpacTor's head (3072 at Base, 4096 at Large); 1 is ELECTRA's hidden -> hidden head.
    head_hidden_multiple: float = 4.0
    generator_logits: str = "masked"  # masked (n_masked × V) | all (B × L × V, the paper's cost)
    embedding_sharing: str = "shared"  # shared | none | gdes
    frozen: bool = False  # Fast-ELECTRA: no gradient, no optimizer state for G
    generator_checkpoint: str | None = None  # run / checkpoint / DCP directory, or a .pt state dict
    # G's architecture block: `arch` names a registered generator, the other keys are its
    # config (EncoderGeneratorConfig for `encoder`: layers, d_model, heads, d_ff, ...).
    generator: Any = plugin_block(GENERATORS, "arch", "encoder")

    MOVED_KEYS: ClassVar[dict[str, str]] = {
        f"generator_{k}": f"generator.{k}" for k in MOVED_GENERATOR_FIELDS
    }

    def generator_block(self, where: str) -> Plugin:
        """The resolved ``generator`` block (resolving it first when this config was made in
        Python with a mapping or a generator config object)."""
        resolve_blocks(self, where)
        return self.generator  # type: ignore[no-any-return]

    def check(self, where: str, ctx: CheckContext) -> None:
        """One-line ConfigError for the first bad value; ``ctx.hidden_size``: D's width
        (None: not known yet). The generator block checks itself."""
        check_objective_fields(where, self)
        one_of(f"{where}.generator_logits", self.generator_logits, LOGIT_MODES)
        positive(f"{where}.head_hidden_multiple", self.head_hidden_multiple)
        block = self.generator_block(where)
        # The registered generator says which sharing modes it builds (GeneratorSpec).
        modes = generator_spec_for(block.type).sharing_modes
        one_of(f"{where}.embedding_sharing", self.embedding_sharing, modes)
        if self.frozen and self.embedding_sharing == "shared":
            fail(
                f"{where}.embedding_sharing",
                "shared",
                "a frozen generator cannot share the discriminator's token embedding (D keeps training it); "
                "use none or gdes",
            )
        check = getattr(block.config, "check", None)
        if callable(check):
            check(f"{where}.generator", ctx)

    def generator_loader(self, where: str) -> GeneratorSpec:
        """The registered generator's spec, which loads it from ``generator_checkpoint``; a
        ConfigError naming that key when the generator gives no loader."""
        arch = self.generator_block(where).type
        spec = generator_spec_for(arch)
        if spec.check_checkpoint is None or spec.load_weights is None:
            fail(
                f"{where}.generator_checkpoint",
                self.generator_checkpoint,
                f"generator '{arch}' cannot be loaded from a trained run (its GENERATORS entry's "
                "GeneratorSpec gives no check_checkpoint/load_weights)",
            )
        return spec

    def sizes(
        self, hidden_size: int, model_shape: ModelShape | None, where: str = "objectives.rtd"
    ) -> dict[str, Any]:
        """What this config builds beside a D of ``hidden_size`` / ``model_shape``: the RTD
        head's width and, for a generator whose block says (``dimensions``), its layers,
        width, heads and d_ff (``spactor flops --sizes`` prints them per model.size)."""
        out: dict[str, Any] = {"head_hidden": head_width(self, hidden_size)}
        block = self.generator_block(where)
        dimensions = getattr(block.config, "dimensions", None)
        if callable(dimensions):
            g = dimensions(hidden_size, 1, self.embedding_sharing, model_shape)
            out["generator"] = {"layers": g.num_layers, "d_model": g.d_model, "heads": g.num_heads, "d_ff": g.d_ff}
        return out

    def check_files(self, where: str, ctx: Any) -> list[str]:
        """What ``spactor train`` checks before it builds data or a model: a frozen generator
        (Fast-ELECTRA) has a ``generator_checkpoint``, and a configured one exists and holds
        a generator of this config's shape and vocabulary (read from its metadata; no
        weights are loaded). Returns the line saying where G comes from (none when it is
        trained from scratch). ``ctx``: ``resolved``, ``tokenizer`` (the SentencePiece
        model the run will use; None: ``data.tokenizer``) and ``hidden_size`` (D's width,
        None when unknown). Not part of :meth:`check`: ``flops`` and ``preview`` of a
        frozen recipe need no trained generator."""
        key, path = f"{where}.generator_checkpoint", self.generator_checkpoint
        if not path:
            if self.frozen:
                fail(key, path, "a frozen generator must be loaded from a trained run: set it to a run "
                                 "directory, a checkpoint directory or a .pt state dict")
            return []
        if not os.path.exists(os.path.expanduser(path)):
            fail(key, path, "no such file or directory")
        spec = self.generator_loader(where)
        resolved = ctx.resolved
        rows = _vocab_rows(resolved, ctx.tokenizer)
        if rows is None or ctx.hidden_size is None:
            return []  # no readable tokenizer: the data set-up reports it
        name = where.rsplit(".", 1)[-1]
        with torch.device("meta"):
            embedding = torch.nn.Embedding(rows, ctx.hidden_size)
            input_length = resolved.cfg.data.input_length
            shape = getattr(ctx, "model_shape", None)
            generator = build_generator(self, embedding, ctx.hidden_size, input_length, where, shape)
        try:
            check = spec.check_checkpoint
            assert check is not None  # generator_loader refuses a spec without one
            source, step = check(generator, os.path.expanduser(path), name)
        except (OSError, KeyError, ValueError, RuntimeError) as e:
            message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            fail(key, path, f"not usable: {message}")
        return [f"{where}: generator loaded from {source}" + (f" (step {step})" if step is not None else "")]


def _vocab_rows(resolved: Any, tokenizer: str | None) -> int | None:
    from spactor.data.tokenizer import Tokenizer, t5_vocab

    path = tokenizer or resolved.cfg.data.tokenizer
    if not path:
        return t5_vocab(resolved.cfg.data.tokenizer_vocab_size).size
    try:
        return Tokenizer.load(os.path.expanduser(path)).vocab().size
    except Exception:  # noqa: BLE001 — a missing or broken model is the data set-up's error to report
        return None


def build_generator(
    cfg: RTDConfig,
    embedding: nn.Embedding,
    hidden_size: int,
    input_length: int,
    where: str = "objectives.rtd",
    model_shape: ModelShape | None = None,
) -> nn.Module:
    """G from ``cfg.generator``'s registered entry, beside a D of ``hidden_size`` whose
    token embedding is ``embedding``; ``model_shape`` (D's dimensions) goes to a factory
    that takes it (the ``encoder`` generator sizes itself from it)."""
    block = cfg.generator_block(where)
    factory = GENERATORS.get(block.type).factory
    extra: dict[str, Any] = {}
    if _takes(factory, "model_shape"):  # factories written before it existed do not
        extra["model_shape"] = model_shape
    return factory(
        block.config,
        embedding,
        hidden_size=hidden_size,
        input_length=input_length,
        embedding_sharing=cfg.embedding_sharing,
        **extra,
    )


def _takes(factory: Any, name: str) -> bool:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def head_width(cfg: RTDConfig, hidden_size: int) -> int:
    """The RTD head's MLP width beside a D of ``hidden_size``: ``head_hidden`` when set,
    else ``head_hidden_multiple`` × D's width."""
    return cfg.head_hidden or max(1, round(cfg.head_hidden_multiple * hidden_size))


# -- sampling and metrics --------------------------------------------------------------------


def gumbel_max_sample(
    logits: torch.Tensor,
    temperature: float,
    generator: torch.Generator | None,
    disallowed: torch.Tensor | None = None,
    uniform: torch.Tensor | None = None,
) -> torch.Tensor:
    """One sample per row of ``softmax(logits / temperature)`` via Gumbel-max.

    In fp32 whatever the input dtype (fp16/bf16 noise near U = 1 gives -log(0) = inf and
    NaN). The uniforms come from ``uniform`` (``logits``' shape, e.g. from
    :func:`counter_uniform`) or else are drawn from ``generator``; U is clamped into
    (0, 1) so both logs stay finite. ``disallowed`` (``(V,)`` bool) ids are never drawn.
    Temperature 0 is the argmax.
    """
    if temperature < 0:
        raise ValueError(f"sampling temperature must be >= 0, got {temperature}")
    scores = logits.detach().float()
    if disallowed is not None:
        scores = scores.masked_fill(disallowed, float("-inf"))
    if temperature == 0:
        return scores.argmax(dim=-1)
    if uniform is None:
        uniform = torch.rand(scores.shape, generator=generator, device=scores.device, dtype=torch.float32)
    u = uniform.float().clamp(min=torch.finfo(torch.float32).tiny, max=1.0 - torch.finfo(torch.float32).eps)
    return (scores / temperature - torch.log(-torch.log(u))).argmax(dim=-1)


_MASK32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (Wellons' lowbias32) on int64 tensors holding values in
    [0, 2^32): products are reduced mod 2^32, shifts act on non-negative values."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def counter_uniform(row_seeds: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``(B, *shape)`` fp32 uniforms in (0, 1), a pure function of each row's seed and the
    element's position in the row: counter-based, so a row gets the same numbers on any
    rank, in any micro-batch, and inside a compiled graph (no generator object)."""
    count = 1
    for size in shape:
        count *= size
    counter = torch.arange(count, device=row_seeds.device, dtype=torch.int64).view(shape)
    rows = _hash32(row_seeds.long() & _MASK32).view(-1, *([1] * len(shape)))
    bits = _hash32(_hash32(counter ^ 0x9E3779B9) ^ rows)
    return ((bits >> 8).float() + 0.5) * (1.0 / (1 << 24))


def roc_auc(scores: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Rank-based (Mann–Whitney) ROC AUC over the ``valid`` entries (all by default), ties
    counted half. 0.5 when they hold only one class (AUC is undefined there; 0.5 keeps
    the logged curve NaN-free). Static shapes: invalid entries sort after every valid
    one instead of being dropped, and tie groups come from ``searchsorted``."""
    scores = scores.flatten().float()
    labels = labels.bool().flatten()
    valid = torch.ones_like(labels) if valid is None else valid.bool().flatten()
    positive = labels & valid
    positives = positive.sum().double()
    negatives = valid.sum().double() - positives
    keyed = torch.where(valid, scores, torch.full_like(scores, float("inf")))
    ordered = keyed.sort().values
    # A tie group holds ranks below+1 .. upto (1-based): its members share the mean rank.
    below = torch.searchsorted(ordered, keyed, right=False)
    upto = torch.searchsorted(ordered, keyed, right=True)
    rank_sum = ((below + upto + 1).double() / 2 * positive).sum()
    auc = (rank_sum - positives * (positives + 1) / 2) / (positives * negatives).clamp(min=1)
    return torch.where((positives > 0) & (negatives > 0), auc, torch.full_like(auc, 0.5))


def rtd_metrics(
    logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None, *, name: str
) -> dict[str, torch.Tensor]:
    """Detection metrics over one micro-batch's ``valid`` (non-pad) positions, keyed
    ``<name>/<metric>`` (``name``: the objective instance). Precision/recall are 0 where
    their denominator is (sklearn's ``zero_division=0``)."""
    valid = torch.ones_like(labels, dtype=torch.bool) if valid is None else valid.bool()
    labels = labels.bool() & valid
    predicted = (logits > 0) & valid
    true_pos = (predicted & labels).sum().float()
    n = valid.sum().clamp(min=1).float()
    return {
        f"{name}/replaced_fraction": labels.sum().float() / n,
        f"{name}/accuracy": ((predicted == labels) & valid).sum().float() / n,
        f"{name}/precision": true_pos / predicted.sum().clamp(min=1).float(),
        f"{name}/recall": true_pos / labels.sum().clamp(min=1).float(),
        f"{name}/auc": roc_auc(logits, labels, valid).float(),
    }


class RTDHead(nn.Module):
    """``Linear(d, h) → GELU → Linear(h, 1)``: one replaced-vs-original logit per position."""

    def __init__(self, hidden_size: int, head_hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, head_hidden)
        self.out = nn.Linear(head_hidden, 1)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # Unit-variance pre-activations for any D whose final states are normalised.
        for layer in (self.dense, self.out):
            nn.init.normal_(layer.weight, std=layer.in_features**-0.5)
            nn.init.zeros_(layer.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # a fresh tensor, not a view: FSDP hooks the output of this unit for its backward
        return self.out(F.gelu(self.dense(hidden))).squeeze(-1).clone()


# -- the objective ---------------------------------------------------------------------------


class RTD(Objective):
    """Generator + replaced-token-detection head on the discriminator's encoder states."""

    KNOBS = ("weight", "generator_weight", "temperature", "enabled")
    REQUIRES = ("encoder_input", "mlm_mask", "mlm_index", "mlm_labels")
    # encoder_embeds only with embedding_sharing: gdes (the encoder view the losses read)
    PROVIDES = ("encoder_input", "rtd_labels", "encoder_embeds")
    NEEDS = (frozenset({ENCODE}),)  # the discriminator judges each token from both sides

    def __init__(self, cfg: RTDConfig, ctx: ObjectiveContext) -> None:
        super().__init__(cfg, ctx)
        where = f"objectives.{ctx.name}"
        if ctx.model is None:
            raise ValueError(f"{where}: rtd needs the discriminator model to build its generator")
        model = ctx.model
        cfg.check(where, ctx.check_context())
        self.generator: nn.Module | None = build_generator(  # the GENERATORS entry's module
            cfg, model.token_embedding, model.hidden_size, ctx.input_length, where,
            getattr(model, "model_shape", None),
        )
        self.head: RTDHead | None = RTDHead(model.hidden_size, head_width(cfg, model.hidden_size))
        # Ids a sample may not take; persistent=False keeps it out of checkpoints.
        special = self.vocab.is_special(torch.arange(model.vocab_size, device="cpu"))  # real even on meta
        self.register_buffer("disallowed", special, persistent=False)
        self.released = False
        if cfg.generator_checkpoint:
            loader = cfg.generator_loader(where).load_weights
            assert loader is not None  # generator_loader refuses a spec without one
            loader(self.generator, cfg.generator_checkpoint, ctx.name)
        elif cfg.frozen:
            warnings.warn(
                f"{where}: frozen generator without generator_checkpoint: it stays at its random init"
            )
        if cfg.frozen:
            self.generator.requires_grad_(False)
            self.generator.eval()

    # -- state ---------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return not self.released and self.enabled and (self.weight != 0 or self.knob("generator_weight") != 0)

    def train(self, mode: bool = True) -> RTD:
        super().train(mode)
        if self.cfg.frozen and self.generator is not None:
            self.generator.eval()  # a frozen generator never runs dropout
        return self

    def parallel_units(self) -> list[nn.Module]:
        if self.generator is None or self.head is None:
            return []
        return [*self.generator.blocks(), self.generator, self.head]

    def repeated_blocks(self) -> list[nn.Module]:
        return [] if self.generator is None else list(self.generator.blocks())

    def fsdp_forward_methods(self) -> dict[nn.Module, tuple[str, ...]]:
        # embed_tokens: gdes reads E_G outside G's forward, for D's input
        return {} if self.generator is None else {self.generator: ("masked_logits", "logits_all", "embed_tokens")}

    def release(self) -> None:
        """Free G and the head (SpacTor's switch to stage 2); the objective becomes identity.
        The caller must also drop their parameters from the optimizer."""
        self.generator = None
        self.head = None
        self.released = True

    # -- counts ----------------------------------------------------------------------------
    def check_knob(self, knob: str, value: float | bool) -> None:
        # the config's rule, for a value a schedule sets (gumbel_max_sample itself reads
        # T = 0 as the argmax, which RTD does not allow)
        if knob == "temperature":
            positive(f"objectives.{self.name}.temperature", value)

    def count(self, batch: Batch) -> torch.Tensor | None:
        if not self.active:
            return None
        return (batch["encoder_input"] != self.vocab.pad_id).sum()

    def aux_counts(self, batch: Batch) -> dict[str, torch.Tensor]:
        if not self.active:
            return {}
        counts = {self.generator_loss_name: self._mlm_mask(batch).sum()}
        if self.cfg.generator_z_loss > 0:
            counts[self.generator_z_loss_name] = counts[self.generator_loss_name]
        return counts

    def loss_weights(self) -> dict[str, float]:
        # L_G and its z-loss by generator_weight; a frozen generator is not trained (0)
        generator = 0.0 if self.cfg.frozen else float(self.knob("generator_weight"))
        return {self.name: self.weight, self.generator_loss_name: generator,
                self.generator_z_loss_name: generator}

    @property
    def generator_loss_name(self) -> str:
        """The generator's aux loss, ``L_G``: logged as ``loss/<name>_generator``."""
        return f"{self.name}_generator"

    @property
    def generator_z_loss_name(self) -> str:
        """The generator's z-loss: ``loss/<name>_generator_z``."""
        return f"{self.name}_generator_z"

    def _mlm_mask(self, batch: Batch) -> torch.Tensor:
        if "mlm_mask" not in batch:
            raise KeyError(
                f"objectives.{self.name}: the batch has no 'mlm_mask'; configure an mlm_mask objective before rtd"
            )
        return batch["mlm_mask"]

    # -- generator -------------------------------------------------------------------------
    def _generator_logits(
        self, ids: torch.Tensor, attention: torch.Tensor, at: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """``(B, K, V)`` logits at the ``(rows, cols)`` index pair ``at``."""
        assert self.generator is not None
        if self.cfg.generator_logits == "all":
            return self.generator.logits_all(ids, attention)[at]
        # An index pair, not a mask: the gather has a static shape.
        return self.generator.masked_logits(ids, attention, at)  # type: ignore[arg-type]

    def modify(
        self, batch: Batch, model: Any, rng: torch.Generator, ctx: MicroBatchContext
    ) -> tuple[Batch, ObjectiveOutput]:
        if not self.active:
            return batch, ObjectiveOutput()
        assert self.generator is not None
        ids = batch["encoder_input"]
        mask = self._mlm_mask(batch)
        index = batch["mlm_index"] if "mlm_index" in batch else index_from_mask(mask)
        rows, cols, slot = index_parts(index, ids.shape[1])
        full_labels = batch.get("mlm_labels", ids)  # absent only when nothing was masked
        # (B·K,) targets; padding slots are ignored by the cross-entropy (-100).
        labels = torch.where(slot, full_labels.gather(1, cols), IGNORE).flatten()
        attention = ids != self.vocab.pad_id
        frozen = self.cfg.frozen
        # nullcontext, not enable_grad: an outer no_grad (evaluation) must still hold.
        with torch.no_grad() if frozen else contextlib.nullcontext():
            # Logits in the compute dtype; the cross-entropy works in fp32 chunk by chunk.
            logits = self._generator_logits(ids, attention, (rows, cols)).flatten(0, 1)
            gen_ce = token_cross_entropy(logits, labels, with_accuracy=ctx.with_metrics)

        with torch.no_grad():
            uniform = None
            if "noise_seed" in batch:  # the runner's per-row seeds: the same draws on any number of ranks
                uniform = counter_uniform(batch["noise_seed"], (index.shape[1], logits.shape[-1]))
                uniform = uniform.flatten(0, 1)
            temperature = float(self.knob("temperature"))  # > 0: check_knob
            sampled = gumbel_max_sample(logits, temperature, rng, self.disallowed, uniform)
            replaced = scatter_index(ids, index, sampled.view_as(index))
            original = torch.where(mask, full_labels, ids)
            rtd_labels = (replaced != original) & attention
            generator_metrics: dict[str, torch.Tensor] = {}
            if gen_ce.correct is not None:  # logging steps only
                real = slot.flatten()
                n_masked = real.sum().clamp(min=1).float()
                generator_metrics = {
                    f"{self.name}/generator_accuracy": gen_ce.correct.float() / n_masked,
                    f"{self.name}/generator_sampled_original": ((sampled == labels) & real).sum().float() / n_masked,
                }

        out = {**batch, "encoder_input": replaced, "rtd_labels": rtd_labels}
        if self.cfg.embedding_sharing == "gdes":
            # D's input: stop_grad(E_G[ids]) + E_D[ids]; E_G learns only from L_G.
            out["encoder_embeds"] = self.generator.embed_tokens(replaced).detach() + model.embed(replaced)
        key = self.generator_loss_name
        aux = {key: self.aux_term(ctx, key, gen_ce.total)}
        if self.cfg.generator_z_loss > 0:
            z_key = self.generator_z_loss_name
            aux[z_key] = self.aux_term(ctx, z_key, self.cfg.generator_z_loss * gen_ce.z_total)
        result = ObjectiveOutput(aux_losses=aux)
        for name, value in generator_metrics.items():  # per micro-batch ratios
            result.record(name, value, Reduce.MEAN)
        return out, result

    # -- discriminator ---------------------------------------------------------------------
    def loss(self, batch: Batch, forward: SharedForward, ctx: MicroBatchContext) -> ObjectiveOutput:
        if not self.active:
            return ObjectiveOutput()
        assert self.head is not None
        if "rtd_labels" not in batch:
            raise KeyError(f"objectives.{self.name}: no 'rtd_labels' in the batch; modify() did not run")
        valid = forward.encoder_mask()
        labels = batch["rtd_labels"]
        # Head on every position and padding masked out of the sum: static shapes, no sync.
        logits = self.head(forward.encode()).float()
        per_token = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none")
        total = (per_token * valid).sum()
        out = ObjectiveOutput(loss=self.loss_term(ctx, total))
        if ctx.with_metrics:  # logging steps only
            with torch.no_grad():
                for name, value in rtd_metrics(logits.detach(), labels, valid, name=self.name).items():
                    out.record(name, value, Reduce.MEAN)  # per micro-batch ratios
        return out

    def original_log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """log P(original) of each position of the discriminator's final states (B, L, D):
        how zero-shot scoring reads a discriminator whose language-model head was never
        trained (``spactor.evaluation.likelihood``'s discriminator family)."""
        if self.head is None:
            raise RuntimeError(f"objectives.{self.name}: the RTD head was released (stage 2)")
        return F.logsigmoid(-self.head(hidden).float())  # the head's logit says "replaced"

    def preview_fields(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {"rtd_labels": batch["rtd_labels"]} if "rtd_labels" in batch else {}


@OBJECTIVES.register("rtd", RTDConfig)
def build_rtd(cfg: RTDConfig, ctx: ObjectiveContext) -> RTD:
    """Replaced token detection: generator samples at [M], MLP head detects replacements."""
    return RTD(cfg, ctx)
