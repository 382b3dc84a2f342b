"""Config loading, overrides and validation."""

from __future__ import annotations

import pytest

from spactor.config import ConfigError, load_config, recipe_names
from spactor.plugins import load_plugins

load_plugins()


def test_recipe_and_overrides_resolve_to_typed_configs():
    r = load_config("sc", ["model.size=tiny", "trainer.max_steps=7", "objectives.span_corruption.noise_density=0.2"])
    assert r.model.type == "t5" and r.model.config.size == "tiny" and r.model.config.version == "1.0"
    assert r.cfg.trainer.max_steps == 7
    assert r.objectives["span_corruption"].config.noise_density == pytest.approx(0.2)
    assert r.optimizer.type == "adafactor"


def test_resolved_yaml_round_trips(tmp_path):
    r = load_config("sc", ["model.size=tiny"])
    path = tmp_path / "config.yaml"
    path.write_text(r.to_yaml())
    again = load_config(str(path))
    assert again.to_yaml() == r.to_yaml()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("trainer.max_step=5", "unknown config key 'trainer.max_step'; valid keys at trainer: batch_size"),
        ("trainer.max_step=5", "did you mean 'max_steps'?"),
        ("model.sise=tiny", "unknown config key 'model.sise'"),
        ("model.sise=tiny", "did you mean 'size'?"),
        ("objectives.span_corruption.noise_dens=0.2", "did you mean 'noise_density'?"),
        ("trainr.max_steps=3", "valid keys at top level: data, lr_schedule, model"),
        ("optimizer.type=adamm", "unknown optimizer 'adamm'; valid: adafactor, adamw; did you mean 'adamw'?"),
        ("objectives.span_corruptoin.weight=1", "unknown objective 'span_corruptoin'"),
        ("trainer.max_steps=many", "trainer.max_steps: bad value 'many'"),
    ],
)
def test_config_errors_name_the_key(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config("sc", [override])
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_recipe_suggests_the_closest():
    with pytest.raises(ConfigError, match="unknown recipe 'sk'.*recipes: .*sc"):
        load_config("sk")


def test_every_shipped_recipe_resolves():
    for name in recipe_names():
        load_config(name)


def test_base_resolves_beside_the_recipe_that_names_it(tmp_path, monkeypatch):
    recipes = tmp_path / "recipes"
    (recipes / "sub").mkdir(parents=True)
    (recipes / "parent.yaml").write_text("base: sc\ntrainer:\n  max_steps: 7\n  seed: 3\n")
    (recipes / "child.yaml").write_text("base: parent.yaml\ntrainer:\n  max_steps: 9\n")
    (recipes / "sub" / "grandchild.yaml").write_text("base: ../child.yaml\ntrainer:\n  batch_size: 4\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # neither the recipes' folder nor the repository
    resolved = load_config(str(recipes / "sub" / "grandchild.yaml"))
    trainer = resolved.cfg.trainer
    assert (trainer.max_steps, trainer.seed, trainer.batch_size) == (9, 3, 4)
    assert "span_corruption" in resolved.objectives  # from sc, the built-in recipe parent.yaml names


def test_a_missing_base_names_the_recipe_that_asked(tmp_path, monkeypatch):
    (tmp_path / "child.yaml").write_text("base: parent.yaml\n")
    monkeypatch.chdir(tmp_path.parent)
    with pytest.raises(ConfigError) as err:
        load_config(str(tmp_path / "child.yaml"))
    message = str(err.value)
    assert f"recipe '{tmp_path / 'child.yaml'}'" in message and "base 'parent.yaml' does not exist" in message
    assert str(tmp_path / "parent.yaml") in message and "\n" not in message
    (tmp_path / "child.yaml").write_text("base: no_such_recipe\n")
    with pytest.raises(ConfigError, match=r"recipe '.*child.yaml': base: unknown recipe 'no_such_recipe'"):
        load_config(str(tmp_path / "child.yaml"))


def test_a_recipe_that_inherits_from_itself_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        load_config(str(tmp_path / "a.yaml"))


def test_a_saved_config_reads_back_equal_to_the_one_that_wrote_it():
    """AdamW's ``betas`` is a tuple in the dataclass and a list in YAML: the resolved
    config as data must hold lists, or a resume compares [0.9, 0.999] with (0.9, 0.999)."""
    from omegaconf import OmegaConf

    from spactor.config import as_dict, load_config

    resolved = load_config("electra", ["model.size=tiny"])
    data = as_dict(resolved)
    assert data["optimizer"]["betas"] == [0.9, 0.999]
    assert OmegaConf.to_container(OmegaConf.create(resolved.to_yaml())) == data


# Each shipped recipe's objectives, in the order they run (issue 23: a child recipe's own
# order now wins over its base's; no shipped recipe may change order with it).
SHIPPED_OBJECTIVE_ORDER = {
    "causal_lm": ["causal_lm"],
    "electra": ["mlm_mask", "rtd"],
    "fast_electra": ["mlm_mask", "rtd"],
    "mlm": ["mlm_mask", "mlm"],
    "quickstart": ["span_corruption"],
    "sc": ["span_corruption"],
    "spactor": ["span_corruption", "mlm_mask", "rtd"],
    "spactor_adaptive": ["span_corruption", "mlm_mask", "rtd"],
    "spactor_anneal": ["span_corruption", "mlm_mask", "rtd"],
    "spactor_frozen": ["span_corruption", "mlm_mask", "rtd"],
    "spactor_large": ["span_corruption", "mlm_mask", "rtd"],
    "spactor_mask_curriculum": ["span_corruption", "mlm_mask", "rtd"],
    "spactor_three_stage": ["span_corruption", "mlm_mask", "rtd"],
    "spactor_ul2_sc": ["span_corruption", "mlm_mask", "rtd", "ul2"],
    "ul2": ["ul2"],
    "ul2_decoder": ["ul2"],
    "ul2_rtd": ["ul2", "mlm_mask", "rtd"],
}


def test_every_shipped_recipe_keeps_its_objective_order():
    assert sorted(SHIPPED_OBJECTIVE_ORDER) == recipe_names()
    for name, order in SHIPPED_OBJECTIVE_ORDER.items():
        assert list(load_config(name).objectives) == order, name


def test_a_child_recipe_listing_every_objective_runs_them_in_its_own_order(tmp_path):
    from spactor.config import load_recipe

    reordered = (
        "objectives:\n"
        "  mlm_mask: {ratio: 0.15}\n"
        "  span_corruption: {noise_density: 0.15, weight: '${trainer.eval_batches}'}\n"
        "  rtd: {weight: 10.0}\n"
    )
    (tmp_path / "child.yaml").write_text("base: spactor\n" + reordered)
    raw = load_recipe(str(tmp_path / "child.yaml"))
    assert list(raw.objectives) == ["mlm_mask", "span_corruption", "rtd"]
    assert raw.objectives.span_corruption.weight == 20  # an interpolation survives the reordering
    assert raw.objectives.rtd.generator.sizing == "spactor"  # the base's options of each objective are kept
    # ... and the order is checked as in a recipe without base: (before, it ran in the base's order)
    flat = reordered.replace("{ratio: 0.15}", "{ratio: 0.15, mode: replace_all}").replace("'${trainer.eval_batches}'", "1")
    (tmp_path / "flat.yaml").write_text("model: {arch: t5}\n" + flat)
    messages = []
    for recipe in ("child.yaml", "flat.yaml"):
        with pytest.raises(ConfigError) as err:
            load_config(str(tmp_path / recipe))
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "put span_corruption before mlm_mask" in messages[0]


def test_a_child_recipe_listing_some_objectives_out_of_order_is_told_how_to_reorder(tmp_path):
    (tmp_path / "child.yaml").write_text(
        "base: spactor\nobjectives:\n  mlm_mask: {ratio: 0.2}\n  span_corruption: {noise_density: 0.2}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(str(tmp_path / "child.yaml"))
    message = str(err.value)
    assert "lists objectives mlm_mask, span_corruption in an order its base 'spactor'" in message
    assert "list every objective it runs (span_corruption, mlm_mask, rtd)" in message and "\n" not in message
    # options of a few objectives in the base's order, or a new one after them, merge as before
    (tmp_path / "child.yaml").write_text("base: spactor\nobjectives:\n  mlm_mask: {ratio: 0.2}\n  rtd: {weight: 1.0}\n")
    assert list(load_config(str(tmp_path / "child.yaml")).objectives) == ["span_corruption", "mlm_mask", "rtd"]
