"""A ``t5gemma`` span-corruption training step runs every attention in SDPA with no
``(L, L)`` tensor outside the kernel: no position bias, no mask for an unpadded encoder
input, ``is_causal`` in the decoder, cross-attention unmasked. Counted with a dispatch
mode over a whole step (forward, backward, update) at input length 192, as
``/work/shared/tools/attnprobe`` counts a run; T5's step is the contrast (its relative
position bias is such a tensor in every layer)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from spactor.config import load_config
from spactor.plugins import load_plugins
from spactor.registry import OPTIMIZERS
from spactor.train.batches import build_data
from spactor.train.builders import build_model, build_objectives, raw_length_for, seeded_generator
from spactor.train.parallel import DistInfo
from spactor.train.stages import trainable_parameters
from spactor.train.step import StepContext, TrainModules, train_step

LENGTH = 192


class AttentionProbe(TorchDispatchMode):
    """Counts SDPA kernels and ops whose output ends in an ``(L, L)`` block."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self.length = length
        self.sdpa: dict[str, int] = {}
        self.square: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if "scaled_dot_product" in name or "flash_attention" in name or "efficient_attention" in name:
            self.sdpa[name] = self.sdpa.get(name, 0) + 1
        result = func(*args, **(kwargs or {}))
        for t in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-2:] == (self.length, self.length):
                self.square[name] = self.square.get(name, 0) + 1
                break
        return result


def probe_step(arch_overrides: list[str], tiny_overrides: list[str], tmp_path) -> AttentionProbe:
    load_plugins()
    resolved = load_config("sc", [*tiny_overrides, f"run.dir={tmp_path}", "runtime.count_flops=false",
                                  "trainer.batch_size=2", f"data.input_length={LENGTH}", *arch_overrides])
    cpu = torch.device("cpu")
    data = build_data(resolved, cpu, None)
    torch.manual_seed(0)
    model = build_model(resolved, data.vocab)
    objectives = build_objectives(resolved, data.vocab, model)
    data.start(raw_length_for(objectives, LENGTH), batch_size=2)
    modules = TrainModules(model, objectives, data.vocab.pad_id)
    optimizer = OPTIMIZERS.get(resolved.optimizer.type).factory(resolved.optimizer.config,
                                                                trainable_parameters(modules))
    ctx = StepContext(DistInfo(), seeded_generator(1, cpu), seeded_generator(2, cpu),
                      clip_grad_norm=resolved.cfg.trainer.clip_grad_norm)
    batches = iter(data.train_batches())
    train_step(modules, optimizer, next(batches), ctx, with_metrics=False)
    probe = AttentionProbe(LENGTH)
    with probe:
        out = train_step(modules, optimizer, next(batches), ctx, with_metrics=False)
    assert out.applied
    return probe


def test_t5gemma_sc_step_has_no_square_tensor_outside_sdpa(tiny_overrides, tmp_path):
    probe = probe_step(["model.arch=t5gemma"], tiny_overrides, tmp_path)
    assert probe.square == {}, probe.square
    # forward: 2 encoder + 2 decoder self + 2 cross attentions; backward: as many
    assert sum(n for name, n in probe.sdpa.items() if "backward" not in name) == 6, probe.sdpa
    assert sum(n for name, n in probe.sdpa.items() if "backward" in name) == 6, probe.sdpa


def test_t5_sc_step_is_the_contrast(tiny_overrides, tmp_path):
    probe = probe_step([], tiny_overrides, tmp_path)
    assert sum(probe.square.values()) > 10, probe.square  # relative buckets, bias, its gradient


def test_a_transform_that_rewrites_the_input_drops_the_unpadded_marker():
    from types import SimpleNamespace

    from spactor.objectives.base import unpadded_key, unpadded_marker
    from spactor.train.step import apply_transforms

    key = unpadded_key("encoder_input")

    def sets(batch, rng):
        return {**batch, "encoder_input": batch["original"], key: unpadded_marker(2, torch.device("cpu"))}

    def rewrites(batch, rng):  # a UL2-like transform: may pad, says nothing
        return {**batch, "encoder_input": torch.zeros(2, 5, dtype=torch.long)}

    first = SimpleNamespace(transform=sets, PROVIDES=("encoder_input",), KEEPS_PADDING=False)
    masking = SimpleNamespace(transform=rewrites, PROVIDES=("encoder_input",), KEEPS_PADDING=True)
    padding = SimpleNamespace(transform=rewrites, PROVIDES=("encoder_input",), KEEPS_PADDING=False)
    batch = {"original": torch.ones(2, 5, dtype=torch.long)}
    assert key in apply_transforms({"a": first, "b": masking}, batch, None)
    assert key not in apply_transforms({"a": first, "b": padding}, batch, None)
