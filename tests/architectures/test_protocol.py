"""Architectures are plugins: capabilities against objectives' needs (a one-line refusal
before any work), the protocol check of a built model, the spec the runner's tools read,
``model.arch=`` over a recipe for another architecture, and local ``plugins:`` files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from spactor.architectures.base import (
    CAUSAL_LM,
    CLASSIFICATION,
    DECODE,
    ENCODE,
    PREFIX_LM,
    TEXT_TO_TEXT,
    BaselineObjective,
    capability_problem,
    default_spec,
    spec_for,
    spec_of,
)
from spactor.cli import main
from spactor.config import ConfigError, load_config
from spactor.plugins import load_plugins
from spactor.registry import ARCHITECTURES, OBJECTIVES, factory_class
from spactor.train.loop import train

load_plugins()

EXAMPLE_ARCH = Path(__file__).parent.parent / "example_plugin" / "spactor_example_plugin" / "mini_encoder.py"


def error(recipe: str, overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(recipe, overrides)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_every_shipped_objective_declares_what_it_needs():
    needs = {e.name: factory_class(e).NEEDS for e in OBJECTIVES}  # type: ignore[union-attr]
    assert needs["span_corruption"] == (frozenset({ENCODE, DECODE}),)
    assert needs["mlm"] == needs["rtd"] == (frozenset({ENCODE}),)
    assert needs["mlm_mask"] == ()
    for name in ("prefix_lm", "ul2"):  # encoder-decoder at least; a decoder-only alternative may follow
        assert frozenset({ENCODE, DECODE}) in needs[name]
    assert all(isinstance(n, tuple) and all(isinstance(a, frozenset) for a in n) for n in needs.values())


def test_an_objective_the_architecture_cannot_serve_is_refused_in_one_line(capsys):
    msg = error("sc", ["model.arch=encoder"])
    assert msg == ("objectives.span_corruption: needs a bidirectional encoder and a decoder with "
                   "cross-attention (encode, decode); model.arch 'encoder' offers encode")
    assert main(["train", "spactor", "model.arch=encoder", "model.size=tiny"]) == 2  # before any work
    err = capsys.readouterr().err
    assert "objectives.span_corruption: needs" in err and "Traceback" not in err


def test_capability_problem_names_both_plugins_and_the_alternatives():
    needs = (frozenset({ENCODE}),)
    assert capability_problem("objectives.mlm", needs, "x", {CAUSAL_LM, PREFIX_LM}) == (
        "objectives.mlm: needs a bidirectional encoder (encode); model.arch 'x' offers causal_lm, prefix_lm")
    either = (frozenset({ENCODE, DECODE}), frozenset({PREFIX_LM}))
    assert capability_problem("objectives.ul2", either, "x", {PREFIX_LM}) is None
    assert " or a prefix-bidirectional decoder (prefix_lm); " in capability_problem("o", either, "x", {CAUSAL_LM})
    assert capability_problem("objectives.t", (), "x", set()) is None  # a transform needs nothing


def test_a_built_model_is_checked_against_its_protocol(tiny_overrides):
    from spactor.train.builders import build_model
    from spactor.train.flops.counting import count_vocab

    @dataclasses.dataclass
    class BrokenConfig:
        size: str = "tiny"

    class Broken(nn.Module):  # promises a decoder it does not have, and has no blocks()
        CAPABILITIES = frozenset({ENCODE, DECODE})
        hidden_size, vocab_size = 8, 16

        def __init__(self) -> None:
            super().__init__()
            self.token_embedding = nn.Embedding(16, 8)

        def embed(self, ids): return self.token_embedding(ids)  # noqa: E704
        def encode(self, ids, attention_mask=None, inputs_embeds=None): return self.embed(ids)  # noqa: E704
        def lm_logits(self, h): return h @ self.token_embedding.weight.T  # noqa: E704

    @ARCHITECTURES.register("broken_test_arch", BrokenConfig)
    def build_broken(cfg: BrokenConfig, vocab_size: int) -> Broken:
        return Broken()

    try:
        resolved = load_config("sc", [*tiny_overrides, "model.arch=broken_test_arch"])
        with pytest.raises(ConfigError) as err:
            build_model(resolved, count_vocab(resolved.cfg.data))
        assert str(err.value) == ("model.arch 'broken_test_arch': the built Broken lacks blocks, decode (every model "
                                  "has hidden_size, vocab_size, token_embedding, lm_logits, blocks; it declares "
                                  "CAPABILITIES encode, decode)")
    finally:
        ARCHITECTURES._entries.pop("broken_test_arch", None)


def test_the_spec_is_what_the_tools_read():
    t5, encoder = spec_for("t5"), spec_for("encoder")
    assert [b.type for b in t5.baseline] == ["span_corruption"] and t5.stacks == ("encoder", "decoder")
    assert t5.finetune == (TEXT_TO_TEXT,) and set(t5.exporters) == {"hf"}
    assert [(b.type, b.from_recipe, dict(b.settings)) for b in encoder.baseline] == [
        ("mlm_mask", ("ratio",), {"mode": "bert"}), ("mlm", (), {})]
    assert encoder.finetune == (CLASSIFICATION,) and not encoder.exporters
    # Without a spec at registration: the default of the capabilities.
    assert default_spec({CAUSAL_LM}).baseline == (BaselineObjective("causal_lm"),)
    assert default_spec({ENCODE, DECODE}).finetune == (TEXT_TO_TEXT,)


def test_t5_block_roles_give_the_decoders_cross_attention():
    from spactor.architectures.t5 import T5Config, T5Model

    model = T5Model(T5Config(size="tiny"), 128)
    assert spec_of(model) is spec_for("t5")
    wrapped = type("FSDPT5Model", (T5Model,), {})  # fully_shard's dynamic subclass
    model.__class__ = wrapped
    assert spec_of(model) is spec_for("t5")
    model.__class__ = T5Model
    roles = spec_of(model).roles(model)
    assert len(roles) == len(model.blocks())
    assert [r.target for r in roles] == [False] * len(model.encoder.blocks) + [True] * len(model.decoder.blocks)
    names = {n for n, _ in roles[-1].block.named_modules()}
    assert set(roles[-1].reads_source) <= names and "cross_attn.k" in roles[-1].reads_source


def test_model_arch_over_a_recipe_for_another_architecture_drops_its_keys(capsys):
    resolved = load_config("mlm", ["model.arch=t5", "model.size=tiny"])  # the recipe: encoder's positions, norm
    assert resolved.model.type == "t5" and resolved.model.config.size == "tiny"
    assert capsys.readouterr().err.strip() == (
        "note: model.arch=t5 over a recipe for 'encoder': dropped model.positions, model.norm (t5 has no such keys)")
    # A key given on the command line is the user's: still checked.
    assert error("mlm", ["model.arch=t5", "model.norm=rmsnorm"]).startswith("unknown config key 'model.norm'")
    assert "dropped model.positions (" in capsys.readouterr().err
    load_config("mlm", ["model.size=tiny"])  # no arch override: nothing dropped, no notice
    assert capsys.readouterr().err == ""


def test_a_local_plugin_file_named_by_the_recipe_registers_before_the_config_resolves(tmp_path):
    (tmp_path / "half_mlm.py").write_text(
        "from dataclasses import dataclass\n"
        "from spactor.objectives.mlm import MLM, MLMConfig\n"
        "from spactor.registry import OBJECTIVES\n"
        "@dataclass\n"
        "class HalfConfig(MLMConfig):\n"
        "    weight: float = 0.5\n"
        "@OBJECTIVES.register('half_mlm_local_test', HalfConfig)\n"
        "def build(cfg: HalfConfig, ctx) -> MLM:\n"
        "    return MLM(cfg, ctx)\n"
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text("base: mlm\nplugins: [half_mlm.py]\nobjectives:\n  mlm: null\n"
                      "  half_mlm_local_test: {}\n")
    resolved = load_config(str(recipe), ["model.size=tiny"])  # found beside the recipe
    assert resolved.objectives["half_mlm_local_test"].config.weight == 0.5
    assert resolved.cfg.plugins == [str((tmp_path / "half_mlm.py").resolve())]  # saved absolute
    # Imported once per process: loading the config again registers nothing twice.
    load_config(str(recipe), ["model.size=tiny"])


def test_a_local_plugin_that_cannot_be_imported_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.py").write_text("import not_a_module_anywhere\n")
    msg = error("quickstart", ["plugins=[broken.py]"])
    assert msg == (f"plugins: cannot import 'broken.py' ({tmp_path.resolve() / 'broken.py'}): "
                   "ModuleNotFoundError: No module named 'not_a_module_anywhere'")
    assert error("quickstart", ["plugins=[missing.py]"]).startswith("plugins: 'missing.py' does not exist (looked for")
    assert error("quickstart", ["plugins=[no_such.module]"]).startswith("plugins: cannot import module 'no_such.module'")
    assert main(["train", "quickstart", "plugins=[broken.py]"]) == 2
    assert "plugins: cannot import 'broken.py'" in capsys.readouterr().err


def test_an_architecture_from_a_local_file_trains_from_yaml(tmp_path, tiny_overrides):
    """The example plugin's architecture, named as a file (no install), under a recipe
    written for another architecture: its keys are dropped, MLM trains on it."""
    run = tmp_path / "run"
    resolved = load_config("mlm", [*tiny_overrides, f"plugins=[{EXAMPLE_ARCH}]", "model.arch=mini_encoder",
                                   "trainer.max_steps=3", f"run.dir={run}"])
    assert type(resolved.model.config).__name__ == "MiniEncoderConfig"
    train(resolved)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and "flops_normalized" in lines[0]  # FLOPs against its MLM baseline
    assert str(EXAMPLE_ARCH) in (run / "config.yaml").read_text()  # a resume imports it again
    # What it cannot do is refused before any work, naming both plugins.
    assert error("sc", [*tiny_overrides, f"plugins=[{EXAMPLE_ARCH}]", "model.arch=mini_encoder"]) == (
        "objectives.span_corruption: needs a bidirectional encoder and a decoder with cross-attention "
        "(encode, decode); model.arch 'mini_encoder' offers encode")
    model = ARCHITECTURES.get("mini_encoder").factory(resolved.model.config, 640)
    assert spec_of(model).stack_names(model) == ("layers",)
    assert model.encode(torch.tensor([[5, 6, 7]])).shape == (1, 3, 64)


def test_an_architecture_without_an_exporter_is_refused_in_one_line(tmp_path, tiny_overrides):
    from spactor.tools.export import ExportError, export_hf

    run = tmp_path / "run"
    train(load_config("mlm", [*tiny_overrides, "trainer.max_steps=1", f"run.dir={run}", "runtime.count_flops=false"]))
    with pytest.raises(ExportError) as err:
        export_hf(run, tmp_path / "out")
    assert str(err.value) == "model.arch=encoder: no --format hf export (it has no exporter)"


def test_the_spec_decides_meta_init_and_the_fine_tuning_adapter(tiny_overrides):
    from spactor.architectures.t5 import T5Config, T5Model
    from spactor.architectures.t5_plugin import T5_SPEC
    from spactor.evaluation.finetune import EvaluationError, choose_adapter
    from spactor.tasks import build_task
    from spactor.train.builders import build_on_meta
    from spactor.train.flops.counting import count_vocab

    @ARCHITECTURES.register("t5_eager_test", T5Config, spec=dataclasses.replace(T5_SPEC, meta_init=False))
    def build(cfg: T5Config, vocab_size: int) -> T5Model:
        return T5Model(cfg, vocab_size)

    try:
        for arch, on_meta in (("t5", True), ("t5_eager_test", False)):
            resolved = load_config("sc", [*tiny_overrides, f"model.arch={arch}"])
            model, _, program = build_on_meta(resolved, count_vocab(resolved.cfg.data))
            assert (program is not None) == on_meta and next(model.parameters()).is_meta == on_meta
    finally:
        ARCHITECTURES._entries.pop("t5_eager_test", None)
    generation, classification = build_task("pydoc_name"), build_task("pydoc_module")
    assert choose_adapter((CLASSIFICATION, TEXT_TO_TEXT), classification) == CLASSIFICATION
    assert choose_adapter((CLASSIFICATION, TEXT_TO_TEXT), generation) == TEXT_TO_TEXT
    with pytest.raises(EvaluationError, match="adapters are classification can only be fine-tuned on classification"):
        choose_adapter((CLASSIFICATION,), generation)
