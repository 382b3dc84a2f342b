"""Checkpoint integrity: atomic saves, verification on load, fallback to the previous
valid checkpoint, keep-last-K pruning, exact round trips."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

from spactor.train.checkpoint import MANIFEST, Checkpointer, verify


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(5, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def make(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = Tiny()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def train_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    model(torch.randn(4, 6)).pow(2).mean().backward()
    opt.step()


def snapshot(model: nn.Module, opt: torch.optim.Optimizer, local: dict) -> dict:
    """Deep copies of every weight and optimizer-state tensor, keyed by name, plus the
    per-rank state saved beside them."""
    out = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    out.update({f"local.{k}": v for k, v in local.items()})
    names = {id(p): n for n, p in model.named_parameters()}
    for p, state in opt.state.items():
        for k, v in state.items():
            out[f"optim.{names[id(p)]}.{k}"] = v.detach().clone() if torch.is_tensor(v) else v
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, value in a.items():
        if torch.is_tensor(value):
            assert torch.equal(value, b[k]), k
        else:
            assert value == b[k], k


@pytest.fixture
def three(tmp_path):
    """Checkpoints at steps 1, 2, 3 (a training step between each); each one's state and
    the RNG state saved with it."""
    model, opt = make(0)
    ckpt = Checkpointer(tmp_path / "checkpoints", keep=3)
    states = {}
    for step in (1, 2, 3):
        train_step(model, opt)
        local = {"rng": torch.get_rng_state(), "data": {"index": step}}
        ckpt.save(step, model, opt, shared={"step": step, "stage": 1}, local=local)
        states[step] = snapshot(model, opt, local)
    return ckpt, states


def load_fresh(ckpt: Checkpointer, **kw):
    model, opt = make(123)
    loaded = Checkpointer(ckpt.root, keep=ckpt.keep, **kw).load(model, opt)
    return loaded, model, opt


def test_round_trip_restores_weights_and_optimizer_state_exactly(three):
    ckpt, states = three
    model, opt = make(123)
    train_step(model, opt)  # different weights and optimizer moments to overwrite
    assert not torch.equal(model.a.weight, states[3]["model.a.weight"])
    loaded = Checkpointer(ckpt.root, keep=3).load(model, opt)
    assert loaded is not None and loaded.step == 3 and loaded.skipped == []
    assert loaded.path.name == "step_00000003"
    assert loaded.shared == {"step": 3, "stage": 1}
    assert_same(snapshot(model, opt, loaded.local), states[3])
    assert all(verify(p) is None for p in ckpt.list())


def test_truncated_file_in_newest_falls_back_to_previous(three):
    ckpt, states = three
    shard = next((ckpt.root / "step_00000003" / "dcp").glob("*.distcp"))
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # a write cut short
    loaded, model, opt = load_fresh(ckpt)
    assert loaded.step == 2 and loaded.path.name == "step_00000002"
    assert len(loaded.skipped) == 1
    assert loaded.skipped[0].startswith("step_00000003:") and "truncated" in loaded.skipped[0]
    assert_same(snapshot(model, opt, loaded.local), states[2])


def test_missing_manifest_falls_back_to_previous(three):
    ckpt, states = three
    (ckpt.root / "step_00000003" / MANIFEST).unlink()
    loaded, model, opt = load_fresh(ckpt)
    assert loaded.step == 2
    assert loaded.skipped == ["step_00000003: no manifest (incomplete write)"]
    assert_same(snapshot(model, opt, loaded.local), states[2])


@pytest.mark.parametrize("checksums", [True, False])
def test_corrupt_dcp_metadata_falls_back_to_previous(three, checksums):
    ckpt, states = three
    meta = ckpt.root / "step_00000003" / "dcp" / ".metadata"
    meta.write_bytes(b"\x00" * meta.stat().st_size)  # same size: only reading it can tell
    loaded, model, opt = load_fresh(ckpt, checksums=checksums)
    assert loaded.step == 2
    assert len(loaded.skipped) == 1 and "unreadable DCP metadata" in loaded.skipped[0]
    assert_same(snapshot(model, opt, loaded.local), states[2])


def test_flipped_bits_fail_the_checksum(three):
    ckpt, states = three
    shard = next((ckpt.root / "step_00000003" / "dcp").glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, same metadata: only the checksum can tell
    shard.write_bytes(bytes(data))
    loaded, model, opt = load_fresh(ckpt)
    assert loaded.step == 2
    assert "fails its checksum" in loaded.skipped[0]
    assert_same(snapshot(model, opt, loaded.local), states[2])


def test_dcp_index_pointing_past_a_shard_is_caught(three):
    """Even with the manifest rewritten to match a cut shard (and no checksums), the DCP
    index still says how many bytes must be there."""
    ckpt, _ = three
    step = ckpt.root / "step_00000003"
    shard = next((step / "dcp").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:100])
    manifest = json.loads((step / MANIFEST).read_text())
    manifest["files"][str(shard.relative_to(step))] = 100
    manifest.pop("crc32")
    (step / MANIFEST).write_text(json.dumps(manifest))
    problem = verify(step)
    assert problem is not None and "its index needs" in problem


def test_several_bad_newest_fall_back_further_and_all_bad_gives_none(three):
    ckpt, states = three
    (ckpt.root / "step_00000003" / MANIFEST).unlink()
    (ckpt.root / "step_00000002" / "local_rank00000.pt").unlink()
    loaded, model, opt = load_fresh(ckpt)
    assert loaded.step == 1 and [s.split(":")[0] for s in loaded.skipped] == [
        "step_00000003",
        "step_00000002",
    ]
    assert "missing file local_rank00000.pt" in loaded.skipped[1]
    assert_same(snapshot(model, opt, loaded.local), states[1])

    (ckpt.root / "step_00000001" / MANIFEST).write_text("{not json")
    path, skipped = Checkpointer(ckpt.root).latest_valid()
    assert path is None and len(skipped) == 3 and "unreadable manifest" in skipped[2]
    model, opt = make(1)
    assert Checkpointer(ckpt.root).load(model, opt) is None


def test_explicit_path_that_fails_verification_raises(three):
    ckpt, _ = three
    (ckpt.root / "step_00000003" / MANIFEST).unlink()
    model, opt = make(1)
    with pytest.raises(RuntimeError, match="step_00000003 is unusable: no manifest"):
        ckpt.load(model, opt, ckpt.root / "step_00000003")


def test_verification_notices_changes_after_an_earlier_verdict(three):
    ckpt, _ = three
    newest = ckpt.root / "step_00000003"
    assert ckpt.latest_valid() == (newest, [])
    shard = next((newest / "dcp").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-1])
    path, skipped = ckpt.latest_valid()  # same Checkpointer: its cached verdict is stale
    assert path.name == "step_00000002" and len(skipped) == 1


def test_keep_last_k(tmp_path):
    model, opt = make(0)
    ckpt = Checkpointer(tmp_path / "ck", keep=3)
    for step in range(1, 6):
        train_step(model, opt)
        ckpt.save(step * 10, model, opt, shared={}, local={})
    assert [p.name for p in ckpt.list()] == ["step_00000030", "step_00000040", "step_00000050"]
    with pytest.raises(ValueError):
        Checkpointer(tmp_path / "ck", keep=0)


def test_leftover_tmp_directory_is_never_picked_up(three):
    """A crash mid-save leaves ``.tmp_step_*``; even a complete-looking one (manifest and
    all) is not a checkpoint, and the next save removes it."""
    ckpt, _ = three
    leftover = ckpt.root / ".tmp_step_00000009"
    shutil.copytree(ckpt.root / "step_00000003", leftover)
    (ckpt.root / ".tmp_step_00000010").mkdir()  # an empty one, crashed earlier still
    assert [p.name for p in ckpt.list()] == ["step_00000001", "step_00000002", "step_00000003"]
    loaded, model, opt = load_fresh(ckpt)
    assert loaded.step == 3 and loaded.skipped == []

    model, opt = make(0)
    ckpt.save(4, model, opt, shared={}, local={})
    assert not leftover.exists() and not (ckpt.root / ".tmp_step_00000010").exists()
    assert [p.name for p in ckpt.list()] == ["step_00000002", "step_00000003", "step_00000004"]


def test_resaving_a_step_replaces_it_completely(tmp_path):
    model, opt = make(0)
    ckpt = Checkpointer(tmp_path / "ck", keep=2)
    ckpt.save(5, model, opt, shared={"v": 1}, local={})
    train_step(model, opt)
    ckpt.save(5, model, opt, shared={"v": 2}, local={})
    expected = snapshot(model, opt, {})
    assert [p.name for p in ckpt.list()] == ["step_00000005"]
    assert not any(p.name.startswith(".") for p in ckpt.root.iterdir())
    loaded, model2, opt2 = load_fresh(ckpt)
    assert loaded.shared == {"v": 2}
    assert_same(snapshot(model2, opt2, loaded.local), expected)
