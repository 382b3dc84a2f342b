"""The RTD generator as its own architecture block (``objectives.rtd.generator: {arch:
encoder, ...}``): resolved like ``model:``, written back as a block, the old flat
``generator_*`` keys refused with their new place in a user's config and read in the new
layout from a run directory written before, and a differently shaped generator configured
without any new ``rtd`` key."""

from __future__ import annotations

import copy
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from spactor.architectures.encoder import EncoderConfig, build_encoder
from spactor.architectures.generator import EncoderGeneratorConfig, Generator
from spactor.config import ConfigError, Plugin, as_dict, load_config
from spactor.objectives.base import ObjectiveContext, SharedForward, Vocab
from spactor.objectives.rtd import MOVED_GENERATOR_FIELDS, RTDConfig, build_rtd
from spactor.plugins import load_plugins
from spactor.registry import GENERATORS

from roles import ctx_for  # tests/roles.py: tests/ is on sys.path (rootdir conftest)

load_plugins()

TINY = ["model.size=tiny"]
VOCAB = Vocab(size=512, first_sentinel_id=499, mask_id=500)
LENGTH = 32


# Fields added after the flat layout, at the defaults a config written without them reads.
NEWER_FIELDS = {"sizing": "spactor"}
NEWER_RTD_FIELDS = {"head_hidden_multiple": 4.0}
# What the recipes' generators were before they were sized from D (explicit values).
OLD_GENERATORS = {
    "spactor": ["layers=4", "d_ff=1024", "d_kv=64", "sizing=spactor"],
    "fast_electra": ["layers=12", "hidden_fraction=0.3333", "d_ff=1024", "d_kv=64", "sizing=spactor"],
}
OLD_HEADS = {"spactor": ["head_hidden=3072", "head_hidden_multiple=4.0"],
             "fast_electra": ["head_hidden=768", "head_hidden_multiple=4.0"]}  # fmt: skip


def old_recipe(recipe: str) -> list[str]:
    """Overrides giving ``recipe``'s config as a run saved before generators were sized from D."""
    return [*(f"objectives.rtd.generator.{v}" for v in OLD_GENERATORS[recipe]),
            *(f"objectives.rtd.{v}" for v in OLD_HEADS[recipe])]  # fmt: skip


def flat_layout(data: dict) -> dict:
    """A resolved config as spactor wrote it before the generator block: its shape fields
    as ``generator_<field>`` keys of ``rtd``, no ``arch``, none of the fields added since."""
    data = copy.deepcopy(data)
    for body in data["objectives"].values():
        if body.get("type") == "rtd":
            block = body.pop("generator")
            assert block.pop("arch") == "encoder"
            for fields, holder in ((NEWER_FIELDS, block), (NEWER_RTD_FIELDS, body)):
                for key, default in fields.items():
                    assert holder.pop(key) == default
            body.update({f"generator_{k}": v for k, v in block.items()})
    return data


def test_recipes_hold_the_generator_as_a_block_and_write_it_back_as_one(tmp_path: Path):
    for recipe, sizing, head in (("spactor", "spactor", "linear"), ("electra", "electra", "electra")):
        resolved = load_config(recipe, TINY)
        plugin = resolved.objectives["rtd"].config.generator
        assert isinstance(plugin, Plugin) and plugin.type == "encoder"
        assert isinstance(plugin.config, EncoderGeneratorConfig)
        assert (plugin.config.sizing, plugin.config.layers, plugin.config.head) == (sizing, None, head)
        written = as_dict(resolved)["objectives"]["rtd"]
        assert written["generator"]["arch"] == "encoder" and written["generator"]["sizing"] == sizing
        assert not [k for k in written if k.removeprefix("generator_") in MOVED_GENERATOR_FIELDS]
        saved = tmp_path / f"{recipe}.yaml"
        saved.write_text(resolved.to_yaml())
        assert as_dict(load_config(str(saved))) == as_dict(resolved)


@pytest.mark.parametrize("field", MOVED_GENERATOR_FIELDS)
def test_an_old_flat_key_names_its_new_place(field: str):
    value = {"norm": "layernorm", "positions": "learned", "head": "electra"}.get(field, 1)
    with pytest.raises(ConfigError) as e:
        load_config("spactor", [f"objectives.rtd.generator_{field}={value}"])
    assert str(e.value) == f"objectives.rtd.generator_{field}: moved to objectives.rtd.generator.{field}"


def test_an_old_flat_key_in_a_recipe_is_one_line_and_exit_2(tmp_path: Path):
    recipe = tmp_path / "old.yaml"
    recipe.write_text("base: spactor\nobjectives:\n  rtd:\n    generator_layers: 2\n")
    out = subprocess.run([sys.executable, "-m", "spactor", "train", str(recipe), "model.size=tiny"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "spactor: error: objectives.rtd.generator_layers: moved to objectives.rtd.generator.layers"
    ], out.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["objectives.rtd.generator.layer=2"], "unknown config key 'objectives.rtd.generator.layer'"),
        (["objectives.rtd.generator.arch=bert"], "objectives.rtd.generator.arch: unknown generator 'bert'"),
        (["objectives.rtd.generator.layers=two"], "objectives.rtd.generator.layers: bad value 'two'"),
        (["objectives.rtd.generator.heads=0"], "objectives.rtd.generator.heads: 0 — must be a positive"),
        (["objectives.rtd.generator=4"], "objectives.rtd.generator must be a mapping"),
        (["objectives.rtd.generator.d_model=100"], "objectives.rtd.generator.d_model: 100 — wider than"),
    ],
)
def test_the_block_is_checked_by_its_own_config(overrides: list[str], message: str):
    with pytest.raises(ConfigError) as e:
        load_config("spactor", [*TINY, *overrides])
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


def test_a_saved_config_of_the_flat_layout_loads_in_the_new_one(tmp_path: Path):
    from spactor.train.run_dir import (
        compare_configs,
        flatten,
        identity_differences,
        identity_of,
        read_saved_config,
    )

    for recipe in ("spactor", "fast_electra"):
        resolved = load_config(recipe, [*TINY, *old_recipe(recipe)])
        old = flat_layout(as_dict(resolved))
        saved = tmp_path / recipe / "config.yaml"
        saved.parent.mkdir()
        saved.write_text(yaml.safe_dump(old, sort_keys=False))
        with pytest.raises(ConfigError, match="moved to objectives.rtd.generator"):
            load_config(str(saved))  # a user's config: refused
        assert as_dict(load_config(str(saved), saved_run=True)) == as_dict(resolved)  # a run's: read
        # the resume check: fields added since (sizing, head_hidden_multiple) read their defaults
        applied, refused = compare_configs(read_saved_config(saved.parent), resolved)
        assert not [c for c in applied + refused if c.startswith("objectives")], (applied, refused)
        identity = identity_of(resolved, "sha", 160)
        identity["config"] = {k: v for k, v in flatten(old).items() if k in identity["config"]
                              or k.startswith("objectives.rtd.generator_")}  # fmt: skip
        assert any(k.startswith("objectives.rtd.generator_") for k in identity["config"])
        assert identity_differences(identity, resolved) == []
        changed = load_config(recipe, [*TINY, *old_recipe(recipe), "objectives.rtd.generator.layers=3"])
        layers = resolved.objectives["rtd"].config.generator.config.layers
        assert identity_differences(identity, changed) == [f"objectives.rtd.generator.layers {layers} -> 3"]


# -- the block in Python ---------------------------------------------------------------------


def encoder_d() -> nn.Module:
    torch.manual_seed(0)
    return build_encoder(EncoderConfig(size="tiny", dropout=0.0), VOCAB.size)


def ctx(model: nn.Module) -> ObjectiveContext:
    return ObjectiveContext(name="rtd", vocab=VOCAB, input_length=LENGTH, model=model)


def test_a_mapping_and_a_config_object_build_the_same_generator():
    model = encoder_d()
    shape = {"layers": 1, "d_model": 32, "heads": 2, "d_ff": 64, "d_kv": 16, "head": "electra"}
    built = []
    for block in ({"arch": "encoder", **shape}, shape, EncoderGeneratorConfig(**shape)):
        torch.manual_seed(1)
        built.append(build_rtd(RTDConfig(generator=block), ctx(model)))
    for rtd in built[1:]:
        assert rtd.cfg.generator == built[0].cfg.generator
        assert rtd.generator.state_dict().keys() == built[0].generator.state_dict().keys()
        for key, value in built[0].generator.state_dict().items():
            assert torch.equal(rtd.generator.state_dict()[key], value), key
    assert isinstance(built[0].generator, Generator) and built[0].generator.head_dense is not None


# -- a generator of another shape, configured with no new rtd key ---------------------------


@dataclass
class WindowGeneratorConfig:
    width: int = 1  # tokens seen on each side


class WindowGenerator(nn.Module):
    """A convolution over D's token embeddings, tied output projection: no attention, no
    blocks, nothing like the encoder generator."""

    def __init__(self, cfg: WindowGeneratorConfig, embedding: nn.Embedding) -> None:
        super().__init__()
        self._borrowed = (embedding,)
        d = embedding.embedding_dim
        self.mix = nn.Conv1d(d, d, 2 * cfg.width + 1, padding=cfg.width)
        self.bias = nn.Parameter(torch.zeros(embedding.num_embeddings))

    @property
    def token_embedding(self) -> nn.Embedding:
        return self._borrowed[0]

    def _hidden(self, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(ids) * attention[..., None]
        return self.mix(x.transpose(1, 2)).transpose(1, 2)

    def masked_logits(self, ids, attention, at) -> torch.Tensor:
        return F.linear(self._hidden(ids, attention)[at], self.token_embedding.weight, self.bias)

    def logits_all(self, ids, attention) -> torch.Tensor:
        return F.linear(self._hidden(ids, attention), self.token_embedding.weight, self.bias)

    def blocks(self) -> list[nn.Module]:
        return []


@pytest.fixture
def window_generator():
    @GENERATORS.register("window", WindowGeneratorConfig)
    def build_window(cfg, embedding, *, hidden_size, input_length, embedding_sharing) -> WindowGenerator:
        assert embedding_sharing == "shared" and hidden_size == embedding.embedding_dim
        return WindowGenerator(cfg, embedding)

    yield
    GENERATORS._entries.pop("window")  # the registry is global: leave it as it was


def test_a_differently_shaped_generator_is_a_registry_entry_not_new_rtd_keys(window_generator, tmp_path):
    data = as_dict(load_config("spactor", TINY))
    data["objectives"]["rtd"]["generator"] = {"arch": "window", "width": 2}
    recipe = tmp_path / "window.yaml"
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    resolved = load_config(str(recipe))
    assert resolved.objectives["rtd"].config.generator == Plugin("window", "window", WindowGeneratorConfig(2))
    assert as_dict(resolved)["objectives"]["rtd"]["generator"] == {"arch": "window", "width": 2}
    with pytest.raises(ConfigError, match="unknown config key 'objectives.rtd.generator.layers'"):
        load_config(str(recipe), ["objectives.rtd.generator.layers=2"])  # the encoder's keys are not its

    model = encoder_d()
    rtd = build_rtd(resolved.objectives["rtd"].config, ctx(model))
    assert isinstance(rtd.generator, WindowGenerator) and rtd.generator.mix.kernel_size == (5,)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB.last_sentinel_id, (2, LENGTH), generator=g)
    mask = torch.rand(2, LENGTH, generator=g) < 0.3
    batch = {"encoder_input": ids.masked_fill(mask, VOCAB.mask_id), "mlm_mask": mask, "mlm_labels": ids}
    new, gen_out = rtd.modify(batch, model, g, ctx_for(rtd, batch))
    out = rtd.loss(new, SharedForward(model, new, VOCAB.pad_id), ctx_for(rtd, new))
    (gen_out.aux_losses["rtd_generator"].total + out.loss.total).backward()
    assert rtd.generator.mix.weight.grad is not None and rtd.head.out.weight.grad is not None
    assert not VOCAB.is_special(new["encoder_input"][mask]).any()


def test_the_generator_s_spec_gives_its_sharing_modes_and_its_loader(window_generator, tmp_path):
    """rtd checks ``embedding_sharing`` against, and loads a generator through, its
    ``GENERATORS`` entry's GeneratorSpec (architectures.base); a generator registered
    without a loader cannot take ``generator_checkpoint``: one line naming the key."""
    import dataclasses

    from spactor.architectures.base import SHARING_MODES, GeneratorSpec, generator_spec_for

    encoder = generator_spec_for("encoder")
    assert encoder.sharing_modes == SHARING_MODES and encoder.load_weights and encoder.check_checkpoint
    assert generator_spec_for("window") == GeneratorSpec()  # registered without one: the default

    model = encoder_d()
    weights = tmp_path / "g.pt"
    torch.save({}, weights)
    with pytest.raises(ConfigError) as e:
        build_rtd(RTDConfig(generator={"arch": "window"}, generator_checkpoint=str(weights)), ctx(model))
    assert str(e.value).startswith(f"objectives.rtd.generator_checkpoint: '{weights}' — generator 'window' "
                                   "cannot be loaded from a trained run") and "\n" not in str(e.value)

    entry = GENERATORS.get("window")
    GENERATORS._entries["window"] = dataclasses.replace(entry, spec=GeneratorSpec(sharing_modes=("shared",)))
    with pytest.raises(ConfigError) as e:
        build_rtd(RTDConfig(generator={"arch": "window"}, embedding_sharing="none"), ctx(model))
    assert str(e.value) == "objectives.rtd.embedding_sharing: 'none' — must be one of shared"
    with pytest.raises(ConfigError) as e:  # the encoder's modes: every one (the message rtd always gave)
        build_rtd(RTDConfig(embedding_sharing="tied"), ctx(model))
    assert str(e.value) == "objectives.rtd.embedding_sharing: 'tied' — must be one of shared, none, gdes"


# -- generator and head sized from the discriminator -------------------------------------------


def built_sizes(recipe: str, *overrides: str) -> dict:
    """The generator and RTD head ``recipe`` configures (``RTDConfig.sizes``) beside its D."""
    from spactor.validation import check_model, model_shape

    resolved = load_config(recipe, list(overrides))
    hidden = check_model(resolved.model, resolved.cfg.data.input_length)
    return resolved.objectives["rtd"].config.sizes(hidden, model_shape(resolved.model))


TABLE_5 = {  # SpacTor's Table 5: generator layers / width / heads / MLP, RTD head MLP
    "base": ({"layers": 4, "d_model": 768, "heads": 12, "d_ff": 1024}, 3072),
    "large": ({"layers": 6, "d_model": 1024, "heads": 16, "d_ff": 2048}, 4096),
}


@pytest.mark.parametrize(
    ("recipe", "size"),
    [("spactor", "base"), ("spactor", "large"), ("spactor_large", "large"), ("ul2_rtd", "base"),
     ("spactor_frozen", "base"), ("spactor_three_stage", "large")],
)  # fmt: skip
def test_spactor_recipes_build_table_5_generators_and_heads_at_base_and_large(recipe, size):
    generator, head = TABLE_5[size]
    assert built_sizes(recipe, f"model.size={size}") == {"generator": generator, "head_hidden": head}


@pytest.mark.parametrize("recipe", ["electra", "fast_electra"])
def test_electra_recipes_build_electra_s_generator_and_head(recipe):
    base = built_sizes(recipe)  # ELECTRA-Base: 1/3 of D's width, heads and d_ff; D's 12 layers; head 768
    assert base == {"generator": {"layers": 12, "d_model": 256, "heads": 4, "d_ff": 1024}, "head_hidden": 768}
    small = built_sizes(recipe, "model.size=small")  # ELECTRA-Small: 1/4
    assert small == {"generator": {"layers": 12, "d_model": 64, "heads": 1, "d_ff": 256}, "head_hidden": 256}


def test_the_built_objective_has_the_sized_generator_and_an_explicit_value_wins():
    from spactor.train.builders import build_model, build_objectives
    from spactor.train.flops.counting import count_vocab

    for overrides, layers, d_ff, head in (
        ((), 1, 88, 256),  # tiny: Base's proportions of a 2-layer, 64-wide T5; head 4 x 64
        (("objectives.rtd.generator.layers=3", "objectives.rtd.generator.d_ff=32",
          "objectives.rtd.head_hidden=48"), 3, 32, 48),
    ):  # fmt: skip
        resolved = load_config("spactor", [*TINY, "data.tokenizer_vocab_size=512", *overrides])
        vocab = count_vocab(resolved.cfg.data)
        model = build_model(resolved, vocab)
        rtd = build_objectives(resolved, vocab, model)["rtd"]
        g = rtd.generator.config
        assert (g.num_layers, g.d_model, g.num_heads, g.d_kv, g.d_ff) == (layers, 64, 4, 16, d_ff)
        assert rtd.head.dense.out_features == head
        sizes = built_sizes("spactor", *TINY, *overrides)
        assert sizes["generator"]["layers"] == layers and sizes["head_hidden"] == head
