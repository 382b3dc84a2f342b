"""``llama``: config checks, the causal / prefix passes, and Hugging Face interop with
``LlamaForCausalLM`` in both directions (random weights built locally, no download)."""

from __future__ import annotations

import json

import pytest
import torch

from spactor.architectures.base import CAUSAL_LM, PREFIX_LM, capabilities_of
from spactor.architectures.llama import LLAMA_SIZES, LlamaConfig, LlamaModel, resolve_llama_dims
from spactor.architectures.llama_hf import (
    hf_to_spactor_key,
    load_llama_hf_weights,
    save_llama_pretrained,
    spactor_to_hf_key,
)
from spactor.architectures.t5 import count_parameters
from spactor.checks import CheckContext
from spactor.config import ConfigError

VOCAB = 300


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers", reason="pip install -e '.[test]' for the HF interop tests")


def random_model(seed: int = 0, **overrides) -> LlamaModel:
    torch.manual_seed(seed)
    model = LlamaModel(LlamaConfig(**{"size": "tiny", **overrides}), VOCAB)
    with torch.no_grad():  # large enough weights that a misplaced norm or rotation shows
        for name, p in model.named_parameters():
            p.uniform_(0.5, 1.5) if "norm" in name else p.normal_(0.0, 0.2)
    return model.eval()


def test_presets_resolve_and_parameter_counts():
    expected = {"tiny": 4.21e6, "small": 124.87e6, "base": 348.96e6, "1b": 1038.94e6}  # the docstring's table
    for size in LLAMA_SIZES:
        with torch.device("meta"):
            model = LlamaModel(LlamaConfig(size=size), 32128)
        assert count_parameters(model) == pytest.approx(expected[size], rel=1e-3)
    dims = resolve_llama_dims(LlamaConfig(size="tiny", num_heads=8))
    assert dims["num_kv_heads"] == 8 and dims["head_dim"] == 8  # heads alone: plain multi-head


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"num_heads": 5}, "must divide d_model"),
        ({"num_kv_heads": 3}, "must divide num_heads"),
        ({"head_dim": 7}, "even"),
        ({"size": "huge"}, "model.size"),
        ({"rope_theta": 0.0}, "rope_theta"),
        ({"attention": "flash"}, "attention"),
        ({"init_from": "/not/hf"}, "hf:PATH"),
    ],
)
def test_config_check_one_line(overrides, match):
    with pytest.raises(ConfigError, match=match) as info:
        LlamaConfig(**{"size": "tiny", **overrides}).check("model", CheckContext(input_length=16))
    assert "\n" not in str(info.value)


def test_capabilities_and_blocks():
    model = random_model()
    assert capabilities_of(model) == {CAUSAL_LM, PREFIX_LM}
    assert model.blocks() == list(model.layers) and len(model.blocks()) == 2
    assert not model.has_decoder


def test_causal_pass_sees_only_the_past():
    model = random_model()
    ids = torch.randint(3, VOCAB, (1, 10))
    changed = ids.clone()
    changed[0, 6] = (ids[0, 6] + 1) % VOCAB
    with torch.no_grad():
        a, b = model.causal(ids), model.causal(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_prefix_is_bidirectional_and_the_rest_causal():
    model = random_model()
    ids = torch.randint(3, VOCAB, (2, 10))
    prefix = torch.tensor([5, 0])
    with torch.no_grad():
        base = model.causal(ids, prefix_length=prefix)
        changed = ids.clone()
        changed[:, 4] = (ids[:, 4] + 1) % VOCAB  # inside row 0's prefix
        out = model.causal(changed, prefix_length=prefix)
        # Row 0: position 0 sees position 4 (same prefix); row 1 (no prefix): it does not.
        assert not torch.allclose(out[0, 0], base[0, 0])
        torch.testing.assert_close(out[1, :4], base[1, :4])
        changed = ids.clone()
        changed[:, 5] = (ids[:, 5] + 1) % VOCAB  # the first token after row 0's prefix
        out = model.causal(changed, prefix_length=prefix)
        torch.testing.assert_close(out[0, :5], base[0, :5])  # the prefix does not see the rest
        # prefix_length 0 is exactly the causal pass
        torch.testing.assert_close(base[1], model.causal(ids)[1])


def test_every_parameter_gets_a_gradient():
    model = random_model().train()
    ids = torch.randint(0, VOCAB, (2, 8))
    model(ids, prefix_length=torch.tensor([3, 1])).float().pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_tied_head_shares_the_embedding():
    model = random_model(tie_embeddings=True)
    assert model.lm_head is None
    hidden = torch.randn(2, 64)
    torch.testing.assert_close(model.lm_logits(hidden), hidden @ model.token_embedding.weight.T)


def test_meta_build_then_init_weights_matches_eager_statistics():
    with torch.device("meta"):
        model = LlamaModel(LlamaConfig(size="tiny"), VOCAB)
    model.to_empty(device="cpu")
    model.init_weights()
    assert model.layers[0].attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.equal(model.final_norm.weight, torch.ones(64))


def test_key_names_round_trip():
    model = random_model()
    for key in model.state_dict():
        assert hf_to_spactor_key(spactor_to_hf_key(key)) == key
    assert spactor_to_hf_key("layers.1.ffn.gate_proj.weight") == "model.layers.1.mlp.gate_proj.weight"


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_export_loads_in_llama_for_causal_lm_with_same_logits(transformers, tmp_path, tied):
    model = random_model(tie_embeddings=tied, rope_theta=5e5)
    save_llama_pretrained(model, tmp_path)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert hf.config.num_key_value_heads == 2 and hf.config.tie_word_embeddings is tied
    ids = torch.randint(0, VOCAB, (2, 19))
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-4


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_init_from_hf_llama_gives_same_logits(transformers, tmp_path, tied):
    torch.manual_seed(1)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=tied, rope_theta=10000.0,
    )  # fmt: skip
    hf = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.uniform_(0.5, 1.5) if "norm" in name else p.normal_(0.0, 0.2)
    hf.save_pretrained(tmp_path)
    cfg = LlamaConfig(size="tiny", num_heads=8, num_kv_heads=2, d_ff=96, tie_embeddings=tied,
                      init_from=f"hf:{tmp_path}")
    from spactor.architectures.llama_plugin import build_llama

    model = build_llama(cfg, VOCAB).eval()
    ids = torch.randint(0, VOCAB, (2, 23))
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_init_from_a_different_shape_is_one_line(tmp_path):
    save_llama_pretrained(random_model(), tmp_path)
    model = LlamaModel(LlamaConfig(size="tiny", num_kv_heads=4), VOCAB)
    with pytest.raises(ConfigError, match="num_key_value_heads: checkpoint 2, model 4") as info:
        load_llama_hf_weights(model, f"hf:{tmp_path}")
    assert "\n" not in str(info.value)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    with pytest.raises(ConfigError, match="not llama"):
        load_llama_hf_weights(LlamaModel(LlamaConfig(size="tiny"), VOCAB), f"hf:{tmp_path}")
