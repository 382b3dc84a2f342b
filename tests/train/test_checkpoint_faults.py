"""A checkpoint write that fails (full disk, permissions) says why in one line and never
costs the previous checkpoint."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

import spactor.train.checkpoint as checkpoint_module
from spactor.train.checkpoint import Checkpointer, CheckpointWriteError, verify


def _model_and_optimizer() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Linear(8, 4)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _fail_on_save(monkeypatch, error: BaseException) -> None:
    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(checkpoint_module.dcp, "save", failing)


def test_no_space_names_the_step_and_the_intact_checkpoint(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path / "checkpoints")
    model, opt = _model_and_optimizer()
    ckpt.save(2, model, opt, shared={}, local={"x": 1})
    # What DCP raises when a rank's write fails: a BaseException wrapping the OSError.
    full = OSError(errno.ENOSPC, "No space left on device")
    _fail_on_save(monkeypatch, CheckpointException("save failed", {0: (full, None)}))
    with pytest.raises(CheckpointWriteError) as info:
        ckpt.save(4, model, opt, shared={}, local={"x": 2})
    message = str(info.value)
    assert "\n" not in message
    assert "step 4" in message and "no space left on device" in message
    assert "the checkpoint of step 2 is intact" in message
    assert [p.name for p in ckpt.list()] == ["step_00000002"]
    assert verify(ckpt.list()[0]) is None
    assert not any(p.name.startswith(".tmp_step_") for p in ckpt.root.iterdir())  # the space is given back


def test_torch_zip_writer_error_on_a_full_disk_says_no_space(tmp_path, monkeypatch):
    # torch.save on a full disk: "[enforce fail at inline_container.cc:672] . unexpected pos"
    ckpt = Checkpointer(tmp_path / "checkpoints")
    model, opt = _model_and_optimizer()
    _fail_on_save(monkeypatch, RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"))
    monkeypatch.setattr(checkpoint_module, "_free_bytes", lambda path: 0)
    with pytest.raises(CheckpointWriteError, match="no space left on device.*no earlier checkpoint exists"):
        ckpt.save(1, model, opt, shared={}, local={})


def test_other_failures_keep_their_reason(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path / "checkpoints")
    model, opt = _model_and_optimizer()
    ckpt.save(1, model, opt, shared={}, local={})
    _fail_on_save(monkeypatch, OSError(errno.EACCES, "Permission denied", str(tmp_path / "checkpoints" / "x")))
    with pytest.raises(CheckpointWriteError, match="permission denied.*the checkpoint of step 1 is intact"):
        ckpt.save(2, model, opt, shared={}, local={})


def test_interrupt_during_a_save_is_not_translated(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path / "checkpoints")
    model, opt = _model_and_optimizer()
    _fail_on_save(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(1, model, opt, shared={}, local={})


def _small_tmpfs(path) -> bool:
    path.mkdir()
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path)],
                          capture_output=True, check=False)
    return done.returncode == 0


def test_a_real_full_disk_through_the_cli(tmp_path, tiny_overrides):
    """On a 16 MB tmpfs (needs root to mount; skipped otherwise): the run's second
    checkpoint does not fit; one line, exit 1, the first checkpoint intact."""
    disk = tmp_path / "disk"
    if not _small_tmpfs(disk):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    args = [sys.executable, "-m", "spactor", "train", "sc", *tiny_overrides, "runtime.count_flops=false",
            "trainer.max_steps=6", "trainer.checkpoint_every=2"]
    try:
        # One checkpoint's size, measured on a real disk: leave room for one and a half.
        probe = tmp_path / "probe"
        subprocess.run([*args, "trainer.max_steps=2", f"run.dir={probe}"], capture_output=True, check=True,
                       timeout=300)
        [first] = Checkpointer(probe / "checkpoints").list()
        size = sum(f.stat().st_size for f in first.rglob("*") if f.is_file())
        free = shutil.disk_usage(disk).free
        assert free > 2 * size, f"the 16 MB tmpfs cannot hold a {size}-byte checkpoint twice"
        (disk / "filler").write_bytes(b"\0" * (free - int(1.5 * size) - (256 << 10)))  # and the run's files
        run_dir = disk / "run"
        out = subprocess.run([*args, f"run.dir={run_dir}"], capture_output=True, text=True, check=False,
                             timeout=300)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 1, out.stderr
        assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
        assert "no space left on device" in lines[0] and "the checkpoint of step 2 is intact" in lines[0]
        kept = Checkpointer(run_dir / "checkpoints").list()
        assert [p.name for p in kept] == ["step_00000002"] and verify(kept[0]) is None
    finally:
        subprocess.run(["umount", str(disk)], check=False)
