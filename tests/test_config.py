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
