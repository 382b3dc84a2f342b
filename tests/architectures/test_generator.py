"""RTD generator: embedding sharing, projections, masked-only logits (shape and FLOPs),
and locating its weights in saved state dicts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from spactor.architectures.generator import Generator, GeneratorConfig, load_generator_weights

V, D_MODEL = 211, 64


def embedding() -> nn.Embedding:
    torch.manual_seed(0)
    return nn.Embedding(V, D_MODEL)


def gen_cfg(**overrides) -> GeneratorConfig:
    base = {"num_layers": 1, "d_model": 32, "num_heads": 2, "d_ff": 64, "d_kv": 16}
    return GeneratorConfig(**{**base, **overrides})


def inputs(b: int = 3, length: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, V, (b, length), generator=g)
    attention = torch.ones(b, length, dtype=torch.bool)
    attention[1, 8:] = False
    positions = (torch.rand(b, length, generator=g) < 0.3) & attention
    return ids.masked_fill(~attention, 0), attention, positions


def test_shared_reads_the_discriminator_embedding_without_owning_it():
    emb = embedding()
    gen = Generator(gen_cfg(embedding_sharing="shared"), emb)
    assert gen.token_embedding is emb
    assert all(p is not emb.weight for p in gen.parameters())
    assert not any("embedding.weight" == k for k in gen.state_dict())
    before = emb.weight.clone()
    gen.init_weights()  # never re-initialises D's embedding
    assert torch.equal(emb.weight, before)


@pytest.mark.parametrize("sharing", ["none", "gdes"])
def test_own_embedding_has_the_discriminator_width(sharing: str):
    emb = embedding()
    gen = Generator(gen_cfg(embedding_sharing=sharing), emb)
    assert gen.token_embedding is not emb
    assert gen.token_embedding.weight.shape == emb.weight.shape
    assert "embedding.weight" in gen.state_dict()


def test_projections_only_where_widths_differ():
    narrow = Generator(gen_cfg(d_model=32), embedding())
    assert narrow.proj_in.weight.shape == (32, D_MODEL) and narrow.proj_out.weight.shape == (D_MODEL, 32)
    same = Generator(gen_cfg(d_model=D_MODEL, num_heads=4), embedding())
    assert same.proj_in is None and same.proj_out is None
    with pytest.raises(ValueError, match="embedding_sharing"):
        Generator(gen_cfg(embedding_sharing="tied"), embedding())


@pytest.mark.parametrize("norm,positions", [("rmsnorm", "relative"), ("layernorm", "learned")])
def test_masked_logits_are_the_masked_rows_of_all_logits(norm: str, positions: str):
    gen = Generator(gen_cfg(norm=norm, positions=positions), embedding())
    ids, attention, positions_mask = inputs()
    masked = gen.masked_logits(ids, attention, positions_mask)
    assert masked.shape == (int(positions_mask.sum()), V)
    full = gen.logits_all(ids, attention)
    assert full.shape == (*ids.shape, V)
    assert torch.allclose(masked, full[positions_mask], atol=1e-5)
    # O(1) initial logits (std-1 embedding here, like T5's): the tied head is scaled right.
    assert 0.3 < masked.std().item() < 2.0


@pytest.mark.parametrize("d_model", [32, D_MODEL])
def test_masked_path_skips_the_vocabulary_projection_elsewhere(d_model: int):
    gen = Generator(gen_cfg(d_model=d_model, num_heads=d_model // 16), embedding())
    ids, attention, positions_mask = inputs()
    flops = {}
    for path in ("masked", "all"):
        with FlopCounterMode(display=False) as counter:
            if path == "masked":
                gen.masked_logits(ids, attention, positions_mask)
            else:
                gen.logits_all(ids, attention)[positions_mask]
        flops[path] = counter.get_total_flops()
    skipped = ids.numel() - int(positions_mask.sum())
    per_row = D_MODEL * V + (d_model * D_MODEL if d_model != D_MODEL else 0)  # vocab + out-projection
    assert flops["all"] - flops["masked"] == 2 * skipped * per_row


# -- loading ---------------------------------------------------------------------------------


def test_load_from_local_and_prefixed_state_dicts(tmp_path: Path):
    src = Generator(gen_cfg(embedding_sharing="none"), embedding())
    with torch.no_grad():
        src.output_bias.normal_()
    local = tmp_path / "gen.pt"
    torch.save(src.state_dict(), local)
    run = tmp_path / "run.pt"  # a whole run's model state dict, wrapped like a checkpoint
    torch.save({"model": {f"objectives.rtd.generator.{k}": v for k, v in src.state_dict().items()}}, run)
    for path in (local, run):
        dst = Generator(gen_cfg(embedding_sharing="none"), embedding())
        load_generator_weights(dst, path)
        for key, value in src.state_dict().items():
            assert torch.equal(dst.state_dict()[key], value), key


def test_shared_trained_generator_takes_the_discriminator_embedding(tmp_path: Path):
    d_emb = embedding()
    src = Generator(gen_cfg(embedding_sharing="shared"), d_emb)
    state = {f"objectives.electra.generator.{k}": v for k, v in src.state_dict().items()}
    state["model.token_embedding.weight"] = d_emb.weight.detach()
    torch.save(state, tmp_path / "run.pt")
    dst = Generator(gen_cfg(embedding_sharing="none"), embedding())
    load_generator_weights(dst, tmp_path / "run.pt", objective_name="rtd")  # the name differs: still unique
    assert torch.equal(dst.token_embedding.weight, d_emb.weight)
    ids, attention, positions_mask = inputs()
    assert torch.allclose(
        dst.masked_logits(ids, attention, positions_mask), src.masked_logits(ids, attention, positions_mask)
    )


def test_load_errors_are_clear(tmp_path: Path):
    src = Generator(gen_cfg(embedding_sharing="none"), embedding())
    two = {f"objectives.{n}.generator.{k}": v for n in ("a", "b") for k, v in src.state_dict().items()}
    torch.save(two, tmp_path / "two.pt")
    dst = Generator(gen_cfg(embedding_sharing="none"), embedding())
    load_generator_weights(dst, tmp_path / "two.pt", objective_name="b")  # the name disambiguates
    with pytest.raises(KeyError, match="several"):
        load_generator_weights(dst, tmp_path / "two.pt", objective_name="c")
    bigger = Generator(gen_cfg(embedding_sharing="none", num_layers=2), embedding())
    with pytest.raises(KeyError, match="generator-like prefixes found: objectives.a.generator."):
        load_generator_weights(bigger, tmp_path / "two.pt")
    with pytest.raises(FileNotFoundError):
        load_generator_weights(dst, tmp_path)


# -- ELECTRA's head --------------------------------------------------------------------------


def electra_token_logits(
    hidden: torch.Tensor,
    dense_w: torch.Tensor,
    dense_b: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    table: torch.Tensor,
    bias: torch.Tensor,
) -> torch.Tensor:
    """ELECTRA's generator head, written from run_pretraining.py's _get_masked_lm_output:
    tf.layers.dense(units=embedding width, activation=gelu) with modeling.gelu's erf
    form, modeling.layer_norm (contrib layer_norm, epsilon 1e-12), then
    matmul(hidden, embedding_table, transpose_b=True) + output_bias."""
    x = hidden.double() @ dense_w.double().T + dense_b.double()
    x = x * 0.5 * (1.0 + torch.erf(x / 2.0**0.5))
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    x = (x - mean) / torch.sqrt(var + 1e-12) * gamma.double() + beta.double()
    return x @ table.double().T + bias.double()


@pytest.mark.parametrize("d_model", [32, D_MODEL])
def test_electra_head_is_electras_get_token_logits(d_model: int):
    emb = embedding()
    with torch.no_grad():
        emb.weight.mul_(0.02)  # BERT-style embedding scale: no T5 rescaling in the head
    gen = Generator(gen_cfg(d_model=d_model, num_heads=d_model // 16, norm="layernorm", head="electra"), emb)
    assert gen.proj_out is None  # the dense maps G's width to the embedding's itself
    assert gen.head_dense.weight.shape == (D_MODEL, d_model)
    with torch.no_grad():  # move every head parameter off its init so each one is exercised
        for p in (gen.head_norm.weight, gen.head_norm.bias, gen.head_dense.bias, gen.output_bias):
            p.normal_()
    ids, attention, positions_mask = inputs()
    hidden = gen.hidden_states(ids, attention)
    reference = electra_token_logits(
        hidden,
        gen.head_dense.weight,
        gen.head_dense.bias,
        gen.head_norm.weight,
        gen.head_norm.bias,
        emb.weight,
        gen.output_bias,
    )
    full = gen.logits_all(ids, attention)
    assert (full.double() - reference).abs().max().item() < 1e-5
    masked = gen.masked_logits(ids, attention, positions_mask)
    assert torch.allclose(masked.double(), reference[positions_mask], atol=1e-5)


def test_linear_head_is_the_tied_projection_alone():
    gen = Generator(gen_cfg(d_model=D_MODEL, num_heads=4, norm="layernorm"), embedding())
    assert gen.head_dense is None and gen.head_norm is None
    ids, attention, _ = inputs()
    hidden = gen.hidden_states(ids, attention)
    expected = hidden @ gen.token_embedding.weight.T + gen.output_bias
    assert torch.allclose(gen.logits_all(ids, attention), expected, atol=1e-5)
    with pytest.raises(ValueError, match="generator head"):
        Generator(gen_cfg(head="mlp"), embedding())


def test_electra_head_flops_are_its_dense_layer():
    """At equal widths the electra head adds exactly its dense layer's matmul per row."""
    ids, attention, positions_mask = inputs()
    flops = {}
    for head in ("linear", "electra"):
        gen = Generator(gen_cfg(d_model=D_MODEL, num_heads=4, head=head), embedding())
        with FlopCounterMode(display=False) as counter:
            gen.masked_logits(ids, attention, positions_mask)
        flops[head] = counter.get_total_flops()
    assert flops["electra"] - flops["linear"] == 2 * int(positions_mask.sum()) * D_MODEL * D_MODEL


def test_generator_head_travels_with_the_checkpoint(tmp_path: Path):
    src = Generator(gen_cfg(embedding_sharing="none", head="electra"), embedding())
    with torch.no_grad():
        src.head_norm.weight.normal_()
    run = tmp_path / "run.pt"
    torch.save({"model": {f"objectives.rtd.generator.{k}": v for k, v in src.state_dict().items()}}, run)
    dst = Generator(gen_cfg(embedding_sharing="none", head="electra"), embedding())
    load_generator_weights(dst, run)
    ids, attention, positions_mask = inputs()
    assert torch.equal(
        dst.masked_logits(ids, attention, positions_mask), src.masked_logits(ids, attention, positions_mask)
    )
    # A head mismatch is named, both ways, also where widths match and nothing else differs.
    for trained, here in (("electra", "linear"), ("linear", "electra")):
        for d_model in (32, D_MODEL):
            cfg = {"embedding_sharing": "none", "d_model": d_model, "num_heads": d_model // 16}
            state = Generator(gen_cfg(**cfg, head=trained), embedding()).state_dict()
            torch.save({f"objectives.rtd.generator.{k}": v for k, v in state.items()}, tmp_path / "g.pt")
            expected = f"trained with head {trained}.*generator.head: {trained}"
            with pytest.raises(KeyError, match=expected):
                load_generator_weights(Generator(gen_cfg(**cfg, head=here), embedding()), tmp_path / "g.pt")


# -- the generator's own config block (objectives.rtd.generator: {arch: encoder, ...}) ---------


def test_encoder_block_dimensions_follow_the_discriminator():
    from spactor.architectures.generator import EncoderGeneratorConfig

    dims = EncoderGeneratorConfig(layers=2, d_ff=96).dimensions(D_MODEL, 40, "none")
    assert (dims.num_layers, dims.d_model, dims.num_heads, dims.d_kv, dims.d_ff) == (2, D_MODEL, 1, 64, 96)
    assert (dims.max_positions, dims.embedding_sharing) == (40, "none")
    # ELECTRA's fraction of D's width: heads of ~64 dims, d_ff 4x the width; d_ff/d_model unused
    third = EncoderGeneratorConfig(hidden_fraction=1 / 3, d_model=8, d_ff=8).dimensions(768, 512, "shared")
    assert (third.d_model, third.num_heads, third.d_kv, third.d_ff) == (256, 4, 64, 1024)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"layers": 0}, "objectives.rtd.generator.layers: 0 — must be a positive integer"),
        ({"d_kv": -1}, "objectives.rtd.generator.d_kv: -1 — must be a positive integer"),
        ({"dropout": 1.0}, "objectives.rtd.generator.dropout: 1.0 — must be in [0, 1)"),
        ({"hidden_fraction": 0.0}, "objectives.rtd.generator.hidden_fraction: 0.0 — must be in (0, 1]"),
        ({"norm": "batchnorm"}, "objectives.rtd.generator.norm: 'batchnorm' — must be one of"),
        ({"positions": "rotary"}, "objectives.rtd.generator.positions: 'rotary' — must be one of"),
        ({"head": "mlp"}, "objectives.rtd.generator.head: 'mlp' — must be one of linear, electra"),
        ({"d_model": 128}, "objectives.rtd.generator.d_model: 128 — wider than the discriminator"),
        ({"d_model": 40}, "objectives.rtd.generator.d_model: 40 — the generator width 40 is not a multiple"),
        ({"d_kv": 48}, "objectives.rtd.generator.d_kv: 48 — the generator width 64 is not a multiple"),
    ],
)
def test_encoder_block_checks_itself_in_one_line(fields, message):
    from types import SimpleNamespace

    from spactor.architectures.generator import EncoderGeneratorConfig
    from spactor.config import ConfigError

    with pytest.raises(ConfigError) as e:
        block, d = EncoderGeneratorConfig(**fields), SimpleNamespace(hidden_size=D_MODEL)
        block.check("objectives.rtd.generator", d)
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


def test_encoder_block_defaults_pass_and_heads_lift_the_d_kv_rule():
    from types import SimpleNamespace

    from spactor.architectures.generator import EncoderGeneratorConfig

    for block in (EncoderGeneratorConfig(), EncoderGeneratorConfig(d_kv=48, heads=4)):
        block.check("objectives.rtd.generator", SimpleNamespace(hidden_size=D_MODEL))
    EncoderGeneratorConfig(d_model=4096).check("objectives.rtd.generator", None)  # D's width unknown yet


def test_encoder_is_a_registered_generator_built_from_its_block():
    from spactor.architectures.generator import EncoderGeneratorConfig
    from spactor.registry import GENERATORS

    entry = GENERATORS.get("encoder")
    assert entry.config_cls is EncoderGeneratorConfig
    emb = embedding()
    block = EncoderGeneratorConfig(layers=1, d_model=32, heads=2, d_kv=16, d_ff=64, head="electra")
    built = entry.factory(block, emb, hidden_size=D_MODEL, input_length=12, embedding_sharing="shared")
    torch.manual_seed(0)
    direct = Generator(gen_cfg(head="electra", max_positions=12), emb)
    assert built.config == direct.config and built.token_embedding is emb


# -- sized from the discriminator (generator.sizing) -------------------------------------------


def t5_shape(size: str):
    from spactor.architectures.t5 import T5Config

    return T5Config(version="1.0", size=size).shape()


def encoder_shape(size: str):
    from spactor.architectures.encoder import EncoderConfig

    return EncoderConfig(size=size).shape()


def sized(block, shape):
    """(layers, d_model, heads, d_kv, d_ff) of ``block`` beside a D of ``shape``."""
    g = block.dimensions(shape.d_model, 512, "shared", shape)
    return g.num_layers, g.d_model, g.num_heads, g.d_kv, g.d_ff


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ("tiny", (1, 64, 4, 16, 88)),  # Base's proportions: 1/3 of 2 layers, 4/3 of 64 (to a multiple of 8)
        ("small", (2, 512, 8, 64, 680)),
        ("base", (4, 768, 12, 64, 1024)),  # SpacTor's Table 5
        ("large", (6, 1024, 16, 64, 2048)),  # SpacTor's Table 5
    ],
)
def test_spactor_sizing_keeps_table_5_proportions_at_every_t5_size(size, expected):
    from spactor.architectures.generator import EncoderGeneratorConfig

    assert sized(EncoderGeneratorConfig(sizing="spactor"), t5_shape(size)) == expected


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ("tiny", (2, 16, 1, 16, 64)),  # ELECTRA-Small's 1/4 of D's width, heads and d_ff
        ("small", (12, 64, 1, 64, 256)),  # ELECTRA-Small: 1/4
        ("base", (12, 256, 4, 64, 1024)),  # ELECTRA-Base: 1/3
        ("large", (24, 256, 4, 64, 1024)),  # ELECTRA-Large: 1/4
    ],
)
def test_electra_sizing_keeps_d_s_depth_and_a_quarter_to_a_third_of_its_width(size, expected):
    from spactor.architectures.generator import EncoderGeneratorConfig

    assert sized(EncoderGeneratorConfig(sizing="electra"), encoder_shape(size)) == expected


def test_an_explicit_generator_value_wins_over_the_sizing_rule():
    from spactor.architectures.generator import EncoderGeneratorConfig

    base = t5_shape("base")
    assert sized(EncoderGeneratorConfig(layers=2), base) == (2, 768, 12, 64, 1024)
    assert sized(EncoderGeneratorConfig(d_ff=512), base) == (4, 768, 12, 64, 512)
    assert sized(EncoderGeneratorConfig(d_model=384), base) == (4, 384, 6, 64, 1024)  # heads of D's d_kv
    assert sized(EncoderGeneratorConfig(d_model=384, heads=4), base) == (4, 384, 4, 64, 1024)
    assert sized(EncoderGeneratorConfig(sizing="electra", layers=3, d_ff=256), encoder_shape("base")) == (
        3, 256, 4, 64, 256,
    )  # fmt: skip


def test_a_generator_saved_with_explicit_sizes_keeps_its_shape():
    """Runs saved before ``sizing`` hold every size explicitly (the old defaults: layers 4,
    d_ff 1024, d_kv 64; electra's hidden_fraction 0.3333 with layers 12): they resume and
    their frozen generators load with the shapes they were trained with."""
    from spactor.architectures.generator import EncoderGeneratorConfig

    old_spactor = EncoderGeneratorConfig(layers=4, d_ff=1024, d_kv=64)
    assert sized(old_spactor, t5_shape("tiny")) == (4, 64, 1, 64, 1024)
    old_electra = EncoderGeneratorConfig(layers=12, hidden_fraction=0.3333, d_ff=1024, d_kv=64)
    assert sized(old_electra, encoder_shape("tiny")) == (12, 21, 1, 21, 84)
    assert sized(old_electra, encoder_shape("base")) == (12, 256, 4, 64, 1024)


def test_without_d_s_shape_the_generator_assumes_base_proportions_at_d_s_width():
    from spactor.architectures.generator import EncoderGeneratorConfig

    g = EncoderGeneratorConfig().dimensions(768, 512, "shared")  # an architecture without shape()
    assert (g.num_layers, g.d_model, g.num_heads, g.d_kv, g.d_ff) == (4, 768, 12, 64, 1024)


def test_the_sizing_rule_is_checked_in_one_line():
    from spactor.architectures.generator import EncoderGeneratorConfig
    from spactor.config import ConfigError

    message = r"^objectives.rtd.generator.sizing: 'bert' — must be one of spactor, electra$"
    with pytest.raises(ConfigError, match=message):
        EncoderGeneratorConfig(sizing="bert").check("objectives.rtd.generator", None)


def test_one_shape_dataclass_for_d_and_g():
    """Item 3 of issue 24: G's built config is its encoder stack's EncoderSpec (not a copy
    of its fields), and the sizing rule gives a ModelShape (not a dataclass of its own)."""
    from spactor.architectures.encoder import EncoderSpec
    from spactor.architectures.generator import sized_by_rule
    from spactor.checks import ModelShape

    cfg = gen_cfg(norm="layernorm", positions="learned", max_positions=40)
    generator = Generator(cfg, embedding())
    assert isinstance(cfg, EncoderSpec) and generator.spec is cfg
    d = ModelShape("base", 768, 3072, 12, 12, 64)
    assert sized_by_rule("spactor", d) == ModelShape(None, 768, 1024, 4, 12, 64)  # SpacTor Table 5
    assert sized_by_rule("electra", d) == ModelShape(None, 256, 1024, 12, 4, 64)  # ELECTRA Base: 1/3
    with pytest.raises(ValueError, match="norm"):
        gen_cfg(norm="batchnorm")  # EncoderSpec's own check, at construction
