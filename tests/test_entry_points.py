"""A plugin package from outside the repository, found through ``spactor.plugins``.

``tests/example_plugin`` is a separate distribution registering a ``token_deletion``
objective and a ``mini_encoder`` architecture by entry point. It is pip-installed into a temporary ``--target`` directory
(the copy it is built from is temporary too) and put on ``PYTHONPATH`` of subprocesses
only, so this environment never sees it: ``importlib.metadata`` finds its ``.dist-info``
there like any installed distribution's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parent / "example_plugin"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools", reason="building the example plugin offline needs setuptools")
    root = tmp_path_factory.mktemp("plugin")
    source = root / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = root / "site"
    done = subprocess.run(check=False, args=
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "--no-compile", "--no-index", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"pip install of the example plugin failed:\n{done.stderr}")
    assert list(target.glob("spactor_example_plugin-*.dist-info/entry_points.txt"))
    return target


def spactor(plugin_path: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(plugin_path), env.get("PYTHONPATH")) if p)
    return subprocess.run(check=False, args=
        [sys.executable, "-m", "spactor", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )


def test_not_visible_without_the_install():
    from importlib.metadata import entry_points

    assert not [ep for ep in entry_points(group="spactor.plugins") if ep.name == "token_deletion"]


def test_components_lists_the_plugin(plugin_path):
    done = spactor(plugin_path, "components", "objective")
    assert done.returncode == 0, done.stderr
    assert "token_deletion — BART-style token deletion" in done.stdout
    assert "ratio = 0.1" in done.stdout


def test_a_recipe_trains_with_the_plugin(plugin_path, tmp_path, tiny_overrides):
    recipe = tmp_path / "deletion.yaml"
    recipe.write_text(
        "base: quickstart\n"
        "objectives:\n"
        "  span_corruption: {}\n"
        "  token_deletion: {ratio: 0.2}\n"
        "schedules:\n"
        "  anneal:\n"
        "    knob: objectives.token_deletion.ratio\n"
        "    end_value: 0.0\n"
        "    end_step: 3\n"
    )
    run = tmp_path / "run"
    done = spactor(
        plugin_path, "train", str(recipe), *tiny_overrides, "trainer.max_steps=3", f"run.dir={run}"
    )
    assert done.returncode == 0, done.stderr
    metrics = (run / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 3
    assert '"knob/objectives.token_deletion.ratio": 0.2' in metrics[0]  # a knob like any built-in's
    assert "token_deletion:" in (run / "config.yaml").read_text()


def test_an_installed_architecture_trains_from_yaml(plugin_path, tmp_path, tiny_overrides):
    """The plugin's own architecture (``mini_encoder``), registered by its entry point,
    trains the MLM recipe; what it cannot do is refused in one line."""
    done = spactor(plugin_path, "components", "architecture")
    assert done.returncode == 0 and "mini_encoder" in done.stdout, done.stderr
    # over a recipe for the built-in encoder: its keys mini_encoder lacks are dropped
    run = tmp_path / "run"
    done = spactor(plugin_path, "train", "mlm", "model.arch=mini_encoder", *tiny_overrides, "trainer.max_steps=2",
                   f"run.dir={run}", "runtime.count_flops=false")
    assert done.returncode == 0, done.stderr
    assert "dropped model.positions, model.norm" in done.stderr
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    done = spactor(plugin_path, "train", "sc", "model.arch=mini_encoder", *tiny_overrides)
    assert done.returncode == 2
    assert done.stderr.strip().endswith("model.arch 'mini_encoder' offers encode"), done.stderr


def test_the_transform_deletes_ordinary_tokens_only(plugin_path):
    check = (
        "import torch\n"
        "from spactor.objectives.base import ObjectiveContext, Vocab\n"
        "from spactor_example_plugin.token_deletion import TokenDeletion, TokenDeletionConfig\n"
        "vocab = Vocab(size=256, first_sentinel_id=199, mask_id=200)\n"
        "obj = TokenDeletion(TokenDeletionConfig(ratio=0.25), ObjectiveContext('td', vocab, 12, None))\n"
        "ids = torch.tensor([[10, 11, 199, 12, 13, 14, 15, 198, 16, 17, 1, 0],\n"
        "                    [20, 21, 22, 23, 24, 25, 26, 27, 1, 0, 0, 0]])\n"
        "out = obj.transform({'encoder_input': ids}, torch.Generator().manual_seed(0))['encoder_input']\n"
        "assert out.shape == ids.shape\n"
        "for row, new in zip(ids.tolist(), out.tolist()):\n"
        "    kept = [t for t in new if t != 0]\n"
        "    ordinary = [t for t in row if t not in (0, 1, 198, 199)]\n"
        "    assert len(kept) == len([t for t in row if t != 0]) - round(0.25 * len(ordinary))\n"
        "    assert [t for t in kept if t in (1, 198, 199)] == [t for t in row if t in (1, 198, 199)]\n"
        "    it = iter(row); assert all(t in it for t in kept)  # order kept, a subsequence\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(plugin_path))
    done = subprocess.run(check=False, args=[sys.executable, "-c", check], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
