"""The checkpoint layout has one home, ``spactor.checkpoint_layout``: the checkpointer
writes by it, and every reader (resume, fine-tuning, export, the Fast-ELECTRA generator
loader, studies) finds a step's manifest, DCP folder and key prefixes through it."""

from __future__ import annotations

import ast
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn

from spactor import checkpoint_layout as layout
from spactor.train.checkpoint import Checkpointer
from spactor.train.step import TrainModules

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / "spactor" / "checkpoint_layout.py"
# Names only the layout module spells: a file or folder of a checkpoint, or a key prefix.
SPELLED = {
    layout.MANIFEST, layout.DCP, layout.DCP_METADATA, layout.DISCRIMINATOR_PREFIX, layout.OPTIM_STATE_PREFIX,
}
# Spelled elsewhere as a word (a study's `checkpoints:` key), never joined to a path.
JOINED = {layout.CHECKPOINTS}


def spellings(path: Path, root: Path = ROOT) -> list[str]:
    """Where ``path`` spells the layout: a string constant in ``SPELLED`` (docstrings and
    messages that mention them inside longer text do not count), or ``x / "checkpoints"``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Constant) and node.value in SPELLED:
            found.append(f"{path.relative_to(root)}:{node.lineno}: {node.value!r}")
        if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
                and isinstance(node.right, ast.Constant) and node.right.value in JOINED):
            found.append(f"{path.relative_to(root)}:{node.lineno}: / {node.right.value!r}")
    return found


def test_no_module_but_the_layout_spells_the_checkpoint_layout():
    modules = [path for path in sorted((ROOT / "spactor").rglob("*.py")) if path != HOME]
    found = [hit for path in modules for hit in spellings(path)]
    assert not found, "spell these through spactor.checkpoint_layout:\n" + "\n".join(found)


def test_the_spelling_check_sees_a_path_join_and_a_constant(tmp_path):
    module = tmp_path / "spactor" / "m.py"
    module.parent.mkdir()
    module.write_text(
        '"""About manifest.json."""\nA = run / "checkpoints" / "step_1" / "manifest.json"\nB = "dcp"\n'
    )
    hits = [hit.split(": ", 1)[1] for hit in spellings(module, tmp_path)]
    assert sorted(hits) == sorted(["'manifest.json'", "/ 'checkpoints'", "'dcp'"])


def test_what_the_checkpointer_writes_is_what_the_layout_reads(tmp_path):
    """A saved step is found, read and keyed by the layout's functions alone."""
    torch.manual_seed(0)
    modules = TrainModules(nn.Linear(3, 2), {"rtd": nn.Linear(2, 1)}, 0)  # type: ignore[dict-item]
    optimizer = torch.optim.SGD(modules.parameters(), lr=0.1, momentum=0.9)
    root = layout.checkpoints_dir(tmp_path / "run")
    saved = Checkpointer(root).save(7, modules, optimizer, shared={"stage": 1}, local={})

    assert saved == layout.step_dir(root, 7) and layout.step_dirs(root) == [saved]
    assert layout.step_of(saved) == 7 and layout.step_of(tmp_path) is None
    assert layout.is_checkpoint_dir(saved) and layout.has_weights(saved)
    assert layout.is_dcp_dir(layout.dcp_dir(saved)) and layout.step_dir_of(layout.dcp_dir(saved)) == saved
    assert layout.step_dir_of(tmp_path / "elsewhere" / "dcp") is None
    assert layout.manifest_step(saved) == 7 and layout.manifest_shared(saved) == {"stage": 1}

    keys = set(dcp.FileSystemReader(str(layout.dcp_dir(saved))).read_metadata().state_dict_metadata)
    model_keys = {k for k in keys if k.startswith(layout.MODEL_STATE + ".")}
    assert {k for k in model_keys if k.startswith(layout.DISCRIMINATOR_PREFIX)} == {
        layout.DISCRIMINATOR_PREFIX + "weight", layout.DISCRIMINATOR_PREFIX + "bias"}
    rtd = f"{layout.MODEL_STATE}.{layout.objective_key('rtd')}"
    assert {k for k in model_keys if k.startswith(rtd)} == {rtd + "weight", rtd + "bias"}
    # TrainModules' own state dict: the prefixes a whole run's ``.pt`` carries
    assert set(modules.state_dict()) == {
        f"{layout.DISCRIMINATOR_KEY}weight", f"{layout.DISCRIMINATOR_KEY}bias",
        f"{layout.objective_key('rtd')}weight", f"{layout.objective_key('rtd')}bias"}


def test_an_unfinished_step_is_not_a_checkpoint(tmp_path):
    root = layout.checkpoints_dir(tmp_path)
    half = layout.step_dir(root, 3)
    layout.dcp_dir(half).mkdir(parents=True)
    (root / layout.tmp_dir_name(4)).mkdir()
    assert layout.step_dirs(root) == [half]
    assert not layout.is_checkpoint_dir(half) and not layout.has_weights(half)
    assert layout.is_stale_dir(root / layout.tmp_dir_name(4))
    assert layout.is_stale_dir(root / layout.old_dir_name(4))
    assert not layout.is_stale_dir(half)
