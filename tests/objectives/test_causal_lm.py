"""causal_lm: next-token targets over packed chunks, the summed loss on the shared causal
pass, counts, and the one-line refusal of a model without a causal pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spactor.architectures.llama import LlamaConfig, LlamaModel
from spactor.architectures.t5 import T5Config, T5Model
from spactor.config import ConfigError
from spactor.objectives.base import ObjectiveContext, SharedForward, Vocab
from spactor.objectives.causal_lm import CausalLM, CausalLMConfig

from roles import ctx_for  # tests/roles.py: tests/ is on sys.path (rootdir conftest)

VOCAB = Vocab(size=512, first_sentinel_id=499, mask_id=500)
LENGTH = 24


def build(model, **cfg) -> CausalLM:
    return CausalLM(CausalLMConfig(**cfg), ObjectiveContext("causal_lm", VOCAB, LENGTH, model))


def llama() -> LlamaModel:
    torch.manual_seed(0)
    return LlamaModel(LlamaConfig(size="tiny"), VOCAB.size)


def test_targets_are_the_next_tokens_of_a_chunk_one_longer():
    obj = build(llama())
    assert obj.raw_length(LENGTH) == LENGTH + 1
    original = torch.randint(3, 400, (3, LENGTH + 1))
    out = obj.transform({"original": original}, torch.Generator())
    assert out["lm_input"].equal(original[:, :-1]) and out["lm_target"].equal(original[:, 1:])
    assert int(obj.count(out)) == 3 * LENGTH


def test_loss_is_the_summed_next_token_cross_entropy_with_z_loss():
    model = llama()
    obj = build(model, z_loss=1e-4)
    original = torch.randint(3, 400, (2, LENGTH + 1))
    batch = obj.transform({"original": original}, torch.Generator())
    out = obj.loss(batch, SharedForward(model, batch, VOCAB.pad_id), ctx_for(obj, batch))
    logits = model(original[:, :-1])
    expected = F.cross_entropy(logits.flatten(0, 1), original[:, 1:].flatten(), reduction="sum")
    torch.testing.assert_close(out.loss.total, expected)
    assert int(out.loss.count) == 2 * LENGTH
    z = torch.logsumexp(logits.float(), dim=-1).square().sum() * 1e-4
    torch.testing.assert_close(out.aux_losses["causal_lm_z"].total, z)
    assert "causal_lm/accuracy" in out.metrics


def test_shared_forward_runs_the_causal_pass_once_per_view():
    model = llama()
    calls = []
    original_causal = model.causal
    model.causal = lambda *a, **k: calls.append(1) or original_causal(*a, **k)  # type: ignore[method-assign]
    batch = {"lm_input": torch.randint(3, 400, (2, 8)), "prefix_length": torch.tensor([2, 3])}
    forward = SharedForward(model, batch, VOCAB.pad_id)
    assert forward.causal() is forward.causal()
    forward.causal("lm_input", "prefix_length")
    assert len(calls) == 2


def test_a_model_without_a_causal_pass_is_refused_in_one_line():
    with torch.device("meta"):
        t5 = T5Model(T5Config(size="tiny"), VOCAB.size)
    with pytest.raises(ConfigError, match="objectives.causal_lm: needs a model with the 'causal_lm' pass") as info:
        build(t5)
    assert "\n" not in str(info.value)
