"""rtd: labels, gradient isolation per sharing mode, Gumbel-max sampling, metrics,
disable/release, a SpacTor step on T5, and a frozen generator loaded from checkpoints."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn

from spactor.architectures.encoder import EncoderConfig, build_encoder
from spactor.architectures.t5 import T5Config
from spactor.architectures.t5_plugin import build_t5
from spactor.objectives.base import ObjectiveContext, Reduce, SharedForward, Vocab
from spactor.objectives.mlm_mask import MlmMaskConfig, build_mlm_mask
from spactor.objectives.rtd import RTD, RTDConfig, build_rtd, counter_uniform, gumbel_max_sample, roc_auc
from spactor.objectives.span_corruption import SpanCorruptionConfig, build_span_corruption
from spactor.plugins import load_plugins
from spactor.registry import OBJECTIVES

from roles import ctx_for  # tests/roles.py: tests/ is on sys.path (rootdir conftest)

# rtd finds its generator in the GENERATORS registry (it imports no architecture module),
# which the plugin loader fills, as before any run.
load_plugins()

VOCAB = Vocab(size=512, first_sentinel_id=499, mask_id=500)
LENGTH = 32
TOKEN = 7  # an ordinary id
METRICS = {
    "rtd/generator_accuracy", "rtd/generator_sampled_original", "rtd/replaced_fraction", "rtd/accuracy",
    "rtd/precision", "rtd/recall", "rtd/auc",
}  # fmt: skip


def rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def encoder_d() -> nn.Module:
    torch.manual_seed(0)
    return build_encoder(EncoderConfig(size="tiny", dropout=0.0), VOCAB.size)


def build(model: nn.Module, generator: dict | None = None, name: str = "rtd", **cfg) -> RTD:
    """``generator``: fields of the generator's block over a small encoder generator;
    ``name``: the instance's key under ``objectives:``."""
    small = {"arch": "encoder", "layers": 1, "d_model": 32, "heads": 2, "d_ff": 64, "d_kv": 16}
    block = {**small, **(generator or {})}
    ctx = ObjectiveContext(name=name, vocab=VOCAB, input_length=LENGTH, model=model)
    torch.manual_seed(1)
    return build_rtd(RTDConfig(generator=block, **cfg), ctx)


def masked_batch(seed: int = 0, ratio: float = 0.25) -> dict[str, torch.Tensor]:
    g = rng(seed)
    ids = torch.randint(3, VOCAB.last_sentinel_id, (4, LENGTH), generator=g)
    ids[:, -1] = VOCAB.eos_id
    ids[2, 20:] = VOCAB.pad_id
    ctx = ObjectiveContext(name="mlm_mask", vocab=VOCAB, input_length=LENGTH, model=None)
    return build_mlm_mask(MlmMaskConfig(ratio=ratio), ctx).transform({"encoder_input": ids}, g)


def discriminate(rtd: RTD, model: nn.Module, batch: dict[str, torch.Tensor], seed: int = 3):
    """modify → loss on the shared forward (one encode, of the embeddings gdes sets), as the
    runner does."""
    ctx = ctx_for(rtd, batch)  # counted before the modify, one context for both roles
    new, gen_out = rtd.modify(batch, model, rng(seed), ctx)
    return new, gen_out, rtd.loss(new, SharedForward(model, new, VOCAB.pad_id), ctx)


def test_every_logged_name_carries_the_instance_name():
    """Two RTD instances never share a metrics.jsonl key: the generator's loss, its
    z-loss and every metric are named after the instance (issue 24)."""
    model, batch = encoder_d(), masked_batch()
    rtd = build(model, name="detector", generator_z_loss=1e-4)
    _, gen_out, out = discriminate(rtd, model, batch)
    assert set(gen_out.aux_losses) == set(rtd.aux_counts(batch)) == {"detector_generator", "detector_generator_z"}
    assert set(gen_out.metrics) | set(out.metrics) == {k.replace("rtd/", "detector/") for k in METRICS}
    assert {r.reduce for r in [*gen_out.metrics.values(), *out.metrics.values()]} == {Reduce.MEAN}


# -- labels and sampling ---------------------------------------------------------------------


def test_labels_and_a_sample_equal_to_the_original_counts_as_original():
    model, batch = encoder_d(), masked_batch()
    rtd = build(model, embedding_sharing="none")
    with torch.no_grad():
        rtd.generator.output_bias[TOKEN] = 1e4  # every sample is TOKEN
    mask = batch["mlm_mask"]
    where = mask.nonzero()
    half = where[::2]
    batch["mlm_labels"][half[:, 0], half[:, 1]] = TOKEN  # these originals get sampled back
    new, gen_out, out = discriminate(rtd, model, batch)

    replaced = new["encoder_input"]
    assert (replaced[mask] == TOKEN).all()
    assert torch.equal(replaced[~mask], batch["encoder_input"][~mask])  # nothing else changes
    expected = mask & (batch["mlm_labels"] != TOKEN)
    assert torch.equal(new["rtd_labels"], expected)
    assert not new["rtd_labels"][batch["encoder_input"] == VOCAB.pad_id].any()
    n_masked, n_real = mask.sum(), (replaced != VOCAB.pad_id).sum()
    assert gen_out.metrics["rtd/generator_sampled_original"].value.item() == pytest.approx(len(half) / n_masked.item())
    assert out.metrics["rtd/replaced_fraction"].value.item() == pytest.approx(expected.sum().item() / n_real.item())
    assert set(gen_out.metrics) | set(out.metrics) == METRICS
    assert rtd.preview_fields(new)["rtd_labels"] is new["rtd_labels"]
    # Counts, known before modify, match what the losses sum over.
    assert rtd.count(batch) == out.loss.count == n_real
    assert rtd.aux_counts(batch)["rtd_generator"] == gen_out.aux_losses["rtd_generator"].count == n_masked


def test_samples_never_take_special_ids():
    model, batch = encoder_d(), masked_batch()
    rtd = build(model)
    with torch.no_grad():
        rtd.generator.output_bias[[VOCAB.pad_id, VOCAB.eos_id, VOCAB.mask_id, VOCAB.first_sentinel_id]] = 1e4
    new, _, _ = discriminate(rtd, model, batch)
    assert not VOCAB.is_special(new["encoder_input"][batch["mlm_mask"]]).any()


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_gumbel_max_follows_the_tempered_softmax(temperature: float):
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    n = 200_000
    samples = gumbel_max_sample(logits.expand(n, -1), temperature, rng(5))
    freq = torch.bincount(samples, minlength=5).double() / n
    p = torch.softmax(logits.double() / temperature, dim=0)
    assert ((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt()).all(), (freq, p)


def test_gumbel_max_runs_in_fp32_on_the_given_generator():
    logits = torch.randn(64, 300, generator=rng(1)) * 30
    low = logits.to(torch.bfloat16)
    # bf16 logits are upcast first: identical to sampling their fp32 value with the same noise.
    assert torch.equal(gumbel_max_sample(low, 1.3, rng(2)), gumbel_max_sample(low.float(), 1.3, rng(2)))
    torch.manual_seed(123)  # the global RNG plays no part
    a = gumbel_max_sample(logits, 1.0, rng(2))
    torch.manual_seed(456)
    assert torch.equal(a, gumbel_max_sample(logits, 1.0, rng(2)))
    assert not torch.equal(a, gumbel_max_sample(logits, 1.0, rng(3)))
    huge = torch.full((8, 10), 6e4, dtype=torch.float16)  # near fp16's max: no inf/NaN trouble
    assert ((gumbel_max_sample(huge, 1.0, rng(0)) >= 0) & (gumbel_max_sample(huge, 1.0, rng(0)) < 10)).all()
    assert torch.equal(gumbel_max_sample(logits, 0.0, rng(0)), logits.argmax(-1))  # T = 0: argmax
    banned = torch.zeros(300, dtype=torch.bool)
    banned[logits.argmax(-1)] = True
    assert not banned[gumbel_max_sample(logits, 0.0, rng(0), banned)].any()


def test_generator_logits_all_gives_the_same_loss_and_samples():
    model, batch = encoder_d(), masked_batch()
    masked = build(model, generator_logits="masked")
    full = build(model, generator_logits="all")
    full.load_state_dict(masked.state_dict())
    a, out_a = masked.modify(batch, model, rng(4), ctx_for(masked, batch))
    b, out_b = full.modify(batch, model, rng(4), ctx_for(full, batch))
    assert torch.equal(a["encoder_input"], b["encoder_input"])
    assert torch.allclose(out_a.aux_losses["rtd_generator"].total, out_b.aux_losses["rtd_generator"].total, atol=1e-4)


# -- gradients -------------------------------------------------------------------------------


def generator_only(rtd: RTD, model: nn.Module) -> dict[str, nn.Parameter]:
    shared = {id(p) for p in model.parameters()}
    return {n: p for n, p in rtd.generator.named_parameters() if id(p) not in shared}


@pytest.mark.parametrize("sharing", ["shared", "none", "gdes"])
def test_rtd_loss_sends_no_gradient_into_the_generator(sharing: str):
    model, batch = encoder_d(), masked_batch()
    rtd = build(model, embedding_sharing=sharing)
    new, gen_out, out = discriminate(rtd, model, batch)
    out.loss.total.backward()
    for name, param in generator_only(rtd, model).items():
        assert param.grad is None, name
    d_grad = model.token_embedding.weight.grad.clone()
    assert d_grad.abs().sum() > 0
    if sharing != "gdes":
        # The shared embedder's gradient is exactly D's own: nothing arrives through G.
        model.zero_grad(set_to_none=True)
        fresh = {**new, "encoder_input": new["encoder_input"].clone()}
        rtd.loss(fresh, SharedForward(model, fresh, VOCAB.pad_id), ctx_for(rtd, fresh)).loss.total.backward()
        assert torch.allclose(model.token_embedding.weight.grad, d_grad)
    else:
        expected = rtd.generator.token_embedding(new["encoder_input"]) + model.embed(new["encoder_input"])
        assert torch.allclose(new["encoder_embeds"], expected)

    # L_G trains G (and the shared embedder), never D's encoder.
    model.zero_grad(set_to_none=True)
    gen_out.aux_losses["rtd_generator"].total.backward()
    assert all(p.grad is not None for p in generator_only(rtd, model).values())
    assert all(p.grad is None for p in model.encoder.parameters())
    assert (model.token_embedding.weight.grad is not None) == (sharing == "shared")
    if sharing == "gdes":
        assert rtd.generator.embedding.weight.grad.abs().sum() > 0


def test_frozen_generator_gets_no_gradient_and_stays_in_eval(tmp_path: Path):
    model, batch = encoder_d(), masked_batch()
    source = build(model, embedding_sharing="none")
    torch.save(source.generator.state_dict(), tmp_path / "gen.pt")
    rtd = build(model, embedding_sharing="none", frozen=True, generator_checkpoint=str(tmp_path / "gen.pt"))
    assert not any(p.requires_grad for p in rtd.generator.parameters())
    rtd.train()
    assert not rtd.generator.training and rtd.head.training
    _, gen_out, out = discriminate(rtd, model, batch)
    term = gen_out.aux_losses["rtd_generator"]
    assert not term.total.requires_grad and rtd.loss_weights()["rtd_generator"] == 0.0  # logged, never trained
    out.loss.total.backward()
    assert all(p.grad is None for p in rtd.generator.parameters())
    assert rtd.head.dense.weight.grad is not None
    with pytest.raises(ValueError, match="frozen generator cannot share"):
        build(model, frozen=True, embedding_sharing="shared")


# -- frozen generator from checkpoints (Fast-ELECTRA) ------------------------------------------


def assert_same_generator(a: RTD, b: RTD) -> None:
    for key, value in a.generator.state_dict().items():
        assert torch.equal(b.generator.state_dict()[key], value), key


def test_frozen_generator_loads_from_a_dcp_directory(tmp_path: Path):
    model = encoder_d()
    source = build(model, embedding_sharing="none")
    with torch.no_grad():
        source.generator.output_bias.normal_()
    step_dir = tmp_path / "run" / "checkpoints" / "step_00000005"
    state = {"model": {f"objectives.rtd.generator.{k}": v for k, v in source.generator.state_dict().items()}}
    state["model"]["model.token_embedding.weight"] = model.token_embedding.weight.detach()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # single-process DCP
        dcp.save(state, checkpoint_id=step_dir / "dcp")
    (step_dir / "manifest.json").write_text(json.dumps({"step": 5}))
    for path in (tmp_path / "run", step_dir, step_dir / "dcp"):
        rtd = build(model, embedding_sharing="none", frozen=True, generator_checkpoint=str(path))
        assert_same_generator(source, rtd)


def test_electra_generator_head_through_a_dcp_checkpoint(tmp_path: Path):
    """generator.head: electra builds ELECTRA's dense → GELU → LayerNorm head, its weights
    travel through generator_checkpoint, and a linear generator refuses them by name."""
    model = encoder_d()
    source = build(model, {"head": "electra"}, embedding_sharing="none")
    assert source.generator.head_dense is not None and source.generator.proj_out is None
    with torch.no_grad():
        source.generator.head_norm.bias.normal_()
    step_dir = tmp_path / "checkpoints" / "step_00000003"
    state = {"model": {f"objectives.rtd.generator.{k}": v for k, v in source.generator.state_dict().items()}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # single-process DCP
        dcp.save(state, checkpoint_id=step_dir / "dcp")
    (step_dir / "manifest.json").write_text(json.dumps({"step": 3}))
    loaded = build(
        model, {"head": "electra"}, embedding_sharing="none", frozen=True,
        generator_checkpoint=str(tmp_path),
    )  # fmt: skip
    assert_same_generator(source, loaded)
    with pytest.raises(KeyError, match="generator.head: electra"):
        build(model, embedding_sharing="none", frozen=True, generator_checkpoint=str(tmp_path))
    with pytest.raises(ValueError, match="objectives.rtd.generator.head: 'mlp'"):
        build(model, {"head": "mlp"})


def test_frozen_generator_loads_from_a_runner_checkpoint_of_a_shared_run(tmp_path: Path):
    from spactor.train.checkpoint import Checkpointer

    model = encoder_d()
    source = build(model, embedding_sharing="shared")
    with torch.no_grad():
        source.generator.output_bias.normal_()
    modules = nn.Module()  # the runner's TrainModules layout: model + objectives
    modules.model = model
    modules.objectives = nn.ModuleDict({"rtd": source})
    Checkpointer(tmp_path / "run" / "checkpoints").save(
        3, modules, torch.optim.SGD(modules.parameters(), lr=0.1), shared={}, local={}
    )
    fresh_d = build_encoder(EncoderConfig(size="tiny", dropout=0.0), VOCAB.size)
    rtd = build(fresh_d, embedding_sharing="none", frozen=True, generator_checkpoint=str(tmp_path / "run"))
    # The shared-trained generator's embedding is the source run's D embedding.
    assert torch.equal(rtd.generator.token_embedding.weight, model.token_embedding.weight)
    batch = masked_batch()
    ids, attention = batch["encoder_input"], batch["encoder_input"] != VOCAB.pad_id
    expected = source.generator.masked_logits(ids, attention, batch["mlm_mask"])
    assert torch.allclose(rtd.generator.masked_logits(ids, attention, batch["mlm_mask"]), expected, atol=1e-5)


# -- knobs, release, metrics, config --------------------------------------------------------------


@pytest.mark.parametrize("knobs", [{"enabled": 0.0}, {"weight": 0.0, "generator_weight": 0.0}])
def test_disabled_is_identity(knobs: dict[str, float]):
    model, batch = encoder_d(), masked_batch()
    rtd = build(model)
    for knob, value in knobs.items():
        rtd.set_knob(knob, value)
    new, gen_out = rtd.modify(batch, model, rng(), ctx_for(rtd, batch))
    assert new is batch and not gen_out.aux_losses and not gen_out.metrics
    assert rtd.count(batch) is None and rtd.aux_counts(batch) == {}
    assert rtd.loss(batch, SharedForward(model, batch, VOCAB.pad_id), ctx_for(rtd, batch)).loss is None
    assert rtd.knobs() == {"weight": 0.0 if "weight" in knobs else 10.0,
                           "generator_weight": 0.0 if "generator_weight" in knobs else 1.0,
                           "temperature": 1.0, "enabled": float("enabled" not in knobs)}  # fmt: skip


def test_release_frees_generator_and_head():
    model, batch = encoder_d(), masked_batch()
    rtd = build(model)
    assert sum(p.numel() for p in rtd.parameters()) > 0
    rtd.release()
    assert rtd.generator is None and rtd.head is None
    assert list(rtd.parameters()) == [] and rtd.state_dict() == {}
    new, _ = rtd.modify(batch, model, rng(), ctx_for(rtd, batch))
    assert new is batch and rtd.count(batch) is None


def test_roc_auc_matches_pairwise_definition():
    g = rng(9)
    scores = torch.randint(0, 6, (300,), generator=g).float()  # many ties
    labels = torch.rand(300, generator=g) < 0.3
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()).mean()
    assert roc_auc(scores, labels).item() == pytest.approx(pairwise.item())
    assert roc_auc(torch.tensor([0.1, 0.9]), torch.tensor([False, True])).item() == 1.0
    assert roc_auc(torch.randn(5), torch.zeros(5, dtype=torch.bool)).item() == 0.5  # one class: 0.5
    assert roc_auc(torch.randn(5), torch.ones(5, dtype=torch.bool)).item() == 0.5
    assert roc_auc(torch.randn(0), torch.zeros(0, dtype=torch.bool)).item() == 0.5


def test_registered_and_defaults_follow_the_discriminator():
    load_plugins()
    model = encoder_d()
    entry = OBJECTIVES.get("rtd")
    ctx = ObjectiveContext(name="rtd", vocab=VOCAB, input_length=LENGTH, model=model)
    rtd = entry.factory(entry.config_cls(generator={"layers": 1, "d_ff": 32}), ctx)  # arch: encoder
    spec = rtd.generator.spec
    assert (spec.d_model, spec.num_heads, spec.d_kv, spec.max_positions) == (64, 4, 16, LENGTH)  # D's heads
    assert rtd.head.dense.out_features == 4 * 64
    assert RTD.KNOBS == ("weight", "generator_weight", "temperature", "enabled")
    with pytest.raises(ValueError, match="generator_logits"):
        build(model, generator_logits="some")


def test_spactor_step_on_t5():
    """SC → mlm_mask → rtd → one T5 encode → RTD and SC losses, all finite, D gets gradients."""
    torch.manual_seed(0)
    model = build_t5(T5Config(size="tiny"), VOCAB.size)
    ctx = ObjectiveContext(name="span_corruption", vocab=VOCAB, input_length=LENGTH, model=model)
    sc = build_span_corruption(SpanCorruptionConfig(), ctx)
    mlm_mask = build_mlm_mask(MlmMaskConfig(ratio=0.15), ObjectiveContext("mlm_mask", VOCAB, LENGTH, None))
    rtd = build(model)
    g = rng(0)
    original = torch.randint(3, VOCAB.last_sentinel_id, (4, sc.raw_length(LENGTH)), generator=g)
    batch = mlm_mask.transform(sc.transform({"original": original}, g), g)
    new, gen_out, out = discriminate(rtd, model, batch)
    sc_out = sc.loss(new, SharedForward(model, new, VOCAB.pad_id), ctx_for(sc, new))
    terms = [gen_out.aux_losses["rtd_generator"], out.loss, sc_out.loss]
    total = sum(t.total / t.count for t in terms)
    assert torch.isfinite(total)
    total.backward()
    assert model.token_embedding.weight.grad is not None and rtd.head.out.weight.grad is not None
    assert not VOCAB.is_special(new["encoder_input"][batch["mlm_mask"]]).any()


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_gumbel_max_with_counter_based_noise_follows_the_tempered_softmax(temperature: float):
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    rows, slots = 2000, 100
    seeds = torch.randint(0, 2**31 - 1, (rows,), generator=rng(7))
    uniform = counter_uniform(seeds, (slots, 5)).flatten(0, 1)
    samples = gumbel_max_sample(logits.expand(rows * slots, -1), temperature, None, uniform=uniform)
    n = rows * slots
    freq = torch.bincount(samples, minlength=5).double() / n
    p = torch.softmax(logits.double() / temperature, dim=0)
    assert ((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt()).all(), (freq, p)


def test_counter_uniform_depends_on_the_row_seed_and_position_only():
    seeds = torch.tensor([5, 17, 5, 2**31 - 2])
    u = counter_uniform(seeds, (3, 7))
    assert u.shape == (4, 3, 7) and u.dtype == torch.float32
    assert ((u > 0) & (u < 1)).all()
    assert torch.equal(u[0], u[2]) and not torch.equal(u[0], u[1])  # equal seeds, equal noise
    assert torch.equal(counter_uniform(seeds[1:2], (3, 7))[0], u[1])  # whatever the batch around it
    many = counter_uniform(torch.arange(64), (50, 20)).flatten()
    assert abs(many.mean().item() - 0.5) < 0.01 and abs(many.var().item() - 1 / 12) < 0.005


def test_roc_auc_over_a_mask_equals_roc_auc_of_the_kept_entries():
    g = rng(11)
    scores = torch.randint(0, 6, (300,), generator=g).float()  # many ties
    labels = torch.rand(300, generator=g) < 0.3
    valid = torch.rand(300, generator=g) < 0.7
    kept = roc_auc(scores[valid], labels[valid]).item()
    assert roc_auc(scores, labels, valid).item() == pytest.approx(kept)
