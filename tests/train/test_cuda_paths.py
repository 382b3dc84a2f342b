"""CPU stand-ins for the runner's CUDA-only set-up paths: what a GPU run does differently
from a CPU one, exercised here with torch.cuda queries patched or with gloo for NCCL."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from spactor.config import load_config
from spactor.plugins import load_plugins
from spactor.train.loop import train
from spactor.train.metrics import read_metrics
from spactor.train.parallel import DistInfo, rank_device, shutdown_distributed

load_plugins()


def test_one_process_on_cuda_trains_on_an_indexed_device(monkeypatch):
    """``runtime.device=cuda`` (or auto) in one process resolves to a bare ``cuda``, which
    ``torch.cuda.set_device`` refuses; the runner sets the device it gets from ``rank_device``."""
    from torch.cuda._utils import _get_device_index  # what torch.cuda.set_device checks first

    with pytest.raises(ValueError, match="specified index"):
        _get_device_index(torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    device = rank_device(torch.device("cuda"), DistInfo())
    assert device == torch.device("cuda", 3) and _get_device_index(device) == 3
    assert rank_device(torch.device("cuda"), DistInfo(rank=1, world_size=2, local_rank=1)) == torch.device("cuda", 1)
    assert rank_device(torch.device("cpu"), DistInfo()) == torch.device("cpu")


def test_fsdp_in_one_process_without_torchrun_matches_the_plain_run(tiny_overrides, tmp_path, monkeypatch):
    """``runtime.fsdp=true`` in one process (validation allows it on CUDA): the runner makes
    a world of one (gloo here, NCCL on a GPU) instead of failing in torch's env://
    rendezvous, and the sharded gradients' norm is a plain tensor the metrics can read."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    common = [*tiny_overrides, "trainer.max_steps=3", "trainer.log_every=1", "runtime.count_flops=false",
              "model.dropout=0.0"]

    def losses(run_dir, fsdp: bool) -> list[float]:
        resolved = load_config("sc", [*common, f"run.dir={run_dir}"])
        resolved.cfg.runtime.fsdp = fsdp  # past validation, which refuses it on CPU only
        try:
            train(resolved)
        finally:
            shutdown_distributed()
        return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")]

    plain = losses(tmp_path / "plain", False)
    sharded = losses(tmp_path / "fsdp", True)
    assert not dist.is_initialized()
    assert len(sharded) == 3 and sharded == pytest.approx(plain, rel=1e-5)
    assert (tmp_path / "fsdp" / "checkpoints" / "step_00000003").is_dir()
