"""Activation checkpointing and per-block compile change speed and memory, not results."""

from __future__ import annotations

import pytest

from spactor.config import load_config
from spactor.plugins import load_plugins
from spactor.train.metrics import read_metrics
from spactor.train.loop import train

load_plugins()


def losses(overrides, run_dir, *extra) -> list[float]:
    resolved = load_config("spactor", [*overrides, f"run.dir={run_dir}", "trainer.max_steps=3",
                                       "lr_schedule.warmup_steps=100", "model.dropout=0.1",
                                       "runtime.count_flops=false", *extra])
    train(resolved)
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")]


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_gives_the_same_losses(tiny_overrides, tmp_path, mode):
    reference = losses(tiny_overrides, tmp_path / "none")
    checkpointed = losses(tiny_overrides, tmp_path / mode, f"runtime.activation_checkpointing={mode}")
    assert checkpointed == pytest.approx(reference, rel=1e-6)


def test_compiled_blocks_match_eager(tiny_overrides, tmp_path):
    reference = losses(tiny_overrides, tmp_path / "eager", "model.dropout=0.0")
    compiled = losses(tiny_overrides, tmp_path / "compiled", "model.dropout=0.0", "runtime.compile=true")
    assert compiled == pytest.approx(reference, rel=1e-4)


@pytest.mark.parametrize("compile_mode", ["blocks", "model"])
def test_selective_checkpointing_traces_under_compile(tiny_overrides, tmp_path, monkeypatch, compile_mode):
    """Dynamo traces the checkpoint's selective policy (a closure as ``context_fn`` made
    both compile modes fail). ``aot_eager``: the capture is the runtime's, the numerics eager's."""
    import functools

    import torch

    reference = losses(tiny_overrides, tmp_path / "eager", "model.dropout=0.0", "runtime.activation_checkpointing=selective")
    module_compile = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: module_compile(self, backend="aot_eager", **kw))
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    compiled = losses(tiny_overrides, tmp_path / compile_mode, "model.dropout=0.0",
                      "runtime.activation_checkpointing=selective", f"runtime.compile={compile_mode}")
    torch._dynamo.reset()
    assert compiled == pytest.approx(reference, rel=1e-6)


@pytest.mark.parametrize("kind", ["rotary", "t5"])
def test_selective_checkpointing_keeps_flex_attentions_mask(kind):
    """Eager selective checkpointing runs flex as SDPA on its dense mask: the rotary
    stacks' BlockMask (causal, padding) used to be dropped under SAC's dispatch mode, and
    torch cannot recompute T5's score_mod table; outputs and gradients stay flex's."""
    import torch

    from spactor.architectures.attention import AttentionSpec, MaskSpec, SelfAttention, build_mask
    from spactor.architectures.layers import Attention, BlockSpec, RelativePositionBias, attention_bias
    from spactor.train.parallel import apply_activation_checkpointing

    torch.manual_seed(0)
    x = torch.randn(2, 6, 32, requires_grad=True)
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[1, 4:] = False
    if kind == "rotary":
        block = SelfAttention(AttentionSpec(32, 4, 2, 8, backend="flex"))
        built = build_mask("flex", MaskSpec(causal=True, key_keep=keep), 6, 6, x.device)
        args, trained = (None, built.mask, built.is_causal), [x, *block.parameters()]
    else:
        block = Attention(BlockSpec(32, 64, 4, 8, attention="flex"))
        rel = RelativePositionBias(4, bidirectional=True)
        args = (attention_bias("flex", torch.float32, 6, 6, rel, keep),)
        trained = [x, *block.parameters(), *rel.parameters()]
    expected = block(x, *args)
    expected_grads = torch.autograd.grad(expected.square().sum(), trained)
    apply_activation_checkpointing([block], "selective")
    out = block(x, *args)
    grads = torch.autograd.grad(out.square().sum(), trained)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
