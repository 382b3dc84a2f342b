"""The start-up memory estimate: its parts, its check, and its activations against what
autograd really keeps."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import spactor.train.memory as memory
from spactor.config import ConfigError, load_config
from spactor.plugins import load_plugins
from spactor.train.batches import build_data
from spactor.train.step import TrainModules, apply_transforms
from spactor.train.builders import build_model, build_objectives, raw_length_for

load_plugins()
CPU = torch.device("cpu")


def built(overrides):
    resolved = load_config("sc", overrides)
    data = build_data(resolved, CPU, None)
    torch.manual_seed(0)
    model = build_model(resolved, data.vocab)
    objectives = build_objectives(resolved, data.vocab, model)
    raw = raw_length_for(objectives, resolved.cfg.data.input_length)
    return resolved, TrainModules(model, objectives, data.vocab.pad_id), objectives, raw, data.vocab.size


def test_optimizer_state_adafactor_factored_adamw_two_moments(tiny_overrides):
    for optimizer in ("adafactor", "adamw"):
        resolved, modules, objectives, raw, vocab = built([*tiny_overrides, f"optimizer.type={optimizer}"])
        est = memory.estimate(resolved, modules, objectives, raw, vocab, CPU, world_size=1, fsdp=False)
        params = [p for p in modules.parameters() if p.requires_grad]
        n = sum(p.numel() for p in params)
        assert est.parameters == est.gradients == 4 * n
        if optimizer == "adamw":
            assert est.optimizer == 8 * n
        else:
            assert est.optimizer == 4 * sum(sum(p.shape) if p.dim() == 2 else p.numel() for p in params)
            assert est.optimizer < n  # factored: far below one float per element
        # FSDP over 4 ranks shards the states, not the activations
        sharded = memory.estimate(resolved, modules, objectives, raw, vocab, CPU, world_size=4, fsdp=True)
        assert sharded.parameters == est.parameters // 4 and sharded.micro_batch == est.micro_batch // 4


@pytest.mark.parametrize("arch", ["t5", "t5gemma"])
def test_activations_track_what_autograd_saves(tiny_overrides, arch):
    """Sum the bytes of the tensors autograd keeps for one forward of a micro-batch; the
    formula's forward part (everything but the CPU backward temporaries and the logits'
    gradient) lands within 35 % of it."""
    overrides = [*tiny_overrides, "trainer.batch_size=8", "data.input_length=256", f"model.arch={arch}"]
    resolved, modules, objectives, raw, vocab = built(overrides)
    gen = torch.Generator().manual_seed(0)
    batch = apply_transforms(objectives, {"original": torch.randint(3, vocab - 200, (8, raw), generator=gen)}, gen)
    storages: dict[int, int] = {}

    def pack(t):
        storages.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        modules(batch, gen, modules.context(batch, with_metrics=True))
    saved = sum(storages.values()) - sum(p.numel() * 4 for p in modules.parameters())
    est = memory.estimate(resolved, modules, objectives, raw, vocab, CPU, world_size=1, fsdp=False)
    enc, dec = est.lengths
    heads = 4  # model.size=tiny
    # the CPU attention backward's temporaries (T5's masked attention only), the logits' gradient
    backward_only = (3 * 8 * heads * enc * enc * 4 if arch == "t5" else 0) + 8 * dec * vocab * 4
    forward = est.activations - backward_only
    assert 0.65 * saved < forward < 1.35 * saved, (forward, saved)


def test_cpu_run_that_cannot_fit_is_refused_in_one_line(tiny_overrides, monkeypatch):
    resolved, modules, objectives, raw, vocab = built(tiny_overrides)
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 1 << 20)  # 1 MB free
    with pytest.raises(ConfigError, match="trainer.grad_accum_steps.*trainer.batch_size") as info:
        memory.check_memory(resolved, modules, objectives, raw, vocab, CPU, 1, False)
    assert "\n" not in str(info.value) and "1.0 MB" not in str(info.value)
    off, *_ = built([*tiny_overrides, "runtime.memory_check=false"])
    assert memory.check_memory(off, modules, objectives, raw, vocab, CPU, 1, False) is None
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 1 << 40)
    assert memory.check_memory(resolved, modules, objectives, raw, vocab, CPU, 1, False) is not None


def test_the_cli_refuses_a_batch_no_machine_holds(tiny_data, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "spactor", "train", "sc", *tiny_data, "model.size=small", "trainer.batch_size=65536",
         "runtime.count_flops=false", f"run.dir={tmp_path / 'r'}"],
        capture_output=True, text=True, check=False, timeout=600,
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert "GB of memory is available" in lines[0] and "trainer.grad_accum_steps" in lines[0]
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_memory_check_must_be_a_boolean(tiny_overrides):
    with pytest.raises(ConfigError, match="runtime.memory_check"):
        load_config("sc", [*tiny_overrides, "runtime.memory_check=maybe"])
