"""``t5gemma``: config checks, the encoder-decoder passes, and Hugging Face interop with
``T5GemmaForConditionalGeneration`` in both directions (random weights built locally, no
download; HF's T5Gemma runs its eager attention, ours SDPA unless said otherwise)."""

from __future__ import annotations

import json

import pytest
import torch

from spactor.architectures.base import DECODE, ENCODE, capabilities_of, protocol_problem, spec_of
from spactor.architectures.t5 import count_parameters
from spactor.architectures.t5gemma import T5GEMMA_SIZES, T5GemmaConfig, T5GemmaModel, resolve_t5gemma_dims
from spactor.architectures.t5gemma_hf import load_t5gemma_hf_weights, save_t5gemma_pretrained
from spactor.checks import CheckContext
from spactor.config import ConfigError

VOCAB = 300


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers", reason="pip install -e '.[test]' for the HF interop tests")


def random_model(seed: int = 0, **overrides) -> T5GemmaModel:
    torch.manual_seed(seed)
    model = T5GemmaModel(T5GemmaConfig(**{"size": "tiny", **overrides}), VOCAB)
    with torch.no_grad():  # norms away from 0 and weights large enough that a misplaced norm shows
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.3) if "norm" in name else p.normal_(0.0, 0.2)
    return model.eval()


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (2, 13), generator=g)
    dec = torch.randint(3, VOCAB, (2, 7), generator=g)
    dec[:, 0] = 0  # the decoder starts from pad, as span corruption's decoder_input
    mask = torch.ones(2, 13, dtype=torch.bool)
    mask[1, 9:] = False  # one padded row: the padding masks of both stacks matter
    return ids, dec, mask


def hf_logits(hf, ids, dec, mask) -> torch.Tensor:
    # HF derives a decoder mask from pad ids when given none (masking the start token): say all real.
    return hf(input_ids=ids, attention_mask=mask.long(), decoder_input_ids=dec,
              decoder_attention_mask=torch.ones_like(dec)).logits


def test_presets_resolve_and_parameter_counts():
    expected = {"tiny": 2.2296e6, "small": 58.95e6, "base": 215.87e6, "large": 712.62e6}  # the docstring's table
    for size in T5GEMMA_SIZES:
        with torch.device("meta"):
            model = T5GemmaModel(T5GemmaConfig(size=size), 32128)
        assert count_parameters(model) == pytest.approx(expected[size], rel=1e-3)
    dims = resolve_t5gemma_dims(T5GemmaConfig(size="tiny", num_heads=8, num_decoder_layers=3))
    assert dims["num_kv_heads"] == 8 and dims["head_dim"] == 8 and dims["num_decoder_layers"] == 3


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"num_heads": 5}, "must divide d_model"),
        ({"num_kv_heads": 3}, "must divide num_heads"),
        ({"head_dim": 7}, "even"),
        ({"size": "huge"}, "model.size"),
        ({"rope_theta": 0.0}, "rope_theta"),
        ({"attn_logit_softcapping": -1.0}, "attn_logit_softcapping"),
        ({"sliding_window": 0}, "sliding_window"),
        ({"attention": "flex", "attn_logit_softcapping": 50.0}, "no flex path"),
        ({"attention": "flash"}, "attention"),
        ({"init_from": "/not/hf"}, "hf:PATH"),
    ],
)
def test_config_check_one_line(overrides, match):
    with pytest.raises(ConfigError, match=match) as info:
        T5GemmaConfig(**{"size": "tiny", **overrides}).check("model", CheckContext(input_length=16))
    assert "\n" not in str(info.value)


def test_capabilities_protocol_and_spec():
    from spactor.plugins import load_plugins

    load_plugins()
    model = random_model()
    assert capabilities_of(model) == {ENCODE, DECODE} and model.has_decoder
    assert protocol_problem(model, "t5gemma") is None
    assert model.blocks() == [*model.encoder.layers, *model.decoder.layers]
    spec = spec_of(model)
    assert "hf" in spec.exporters and spec.baseline[0].type == "span_corruption"
    roles = spec.roles(model)
    assert [r.target for r in roles] == [False, False, True, True]
    assert model.model_shape.d_kv == 16 and T5GemmaConfig(size="tiny").shape() == model.model_shape


def test_meta_build_then_init_weights_matches_eager_statistics():
    with torch.device("meta"):
        model = T5GemmaModel(T5GemmaConfig(size="tiny"), VOCAB)
    model.to_empty(device="cpu")
    model.init_weights()
    assert model.encoder.layers[0].self_attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.equal(model.decoder.norm.weight, torch.zeros(64))  # Gemma's norm scales by 1 + weight


def test_decoder_is_causal_and_padding_is_masked():
    model = random_model()
    ids, dec, mask = inputs()
    with torch.no_grad():
        base = model(ids, dec, mask)
        later = dec.clone()
        later[:, 5] = 7
        assert torch.allclose(model(ids, later, mask)[:, :5], base[:, :5], atol=1e-6)
        padded = ids.clone()
        padded[1, 10] = 5  # a padded position's token changes nothing real
        assert torch.allclose(model(padded, dec, mask)[1], base[1], atol=1e-6)


def test_every_parameter_gets_a_gradient():
    model = random_model().train()
    ids, dec, mask = inputs()
    model(ids, dec, mask).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


OPTIONS = {
    "default": {},
    "softcaps": {"attn_logit_softcapping": 5.0, "final_logit_softcapping": 3.0},
    "sliding": {"sliding_window": 3, "num_layers": 3, "num_decoder_layers": 4},
    "gqa_scale_theta": {"query_pre_attn_scalar": 24, "num_kv_heads": 1, "rope_theta": 500.0},
    "eager_sliding": {"attention": "eager", "sliding_window": 2},
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_export_loads_in_t5gemma_with_same_logits(transformers, tmp_path, name):
    model = random_model(**OPTIONS[name])
    save_t5gemma_pretrained(model, tmp_path)
    hf = transformers.T5GemmaForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager")
    ids, dec, mask = inputs()
    with torch.no_grad():
        ours, theirs = model(ids, dec, mask), hf_logits(hf.eval(), ids, dec, mask)
    assert (ours - theirs).abs().max().item() <= 1e-4


def _hf_random(transformers, **module):
    torch.manual_seed(1)
    base = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, final_logit_softcapping=None,
                attn_logit_softcapping=None, sliding_window=4096, layer_types=["full_attention"] * 2,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                pad_token_id=0, eos_token_id=1, bos_token_id=0)
    base.update(module)
    config = transformers.T5GemmaConfig(encoder=dict(base), decoder=dict(base), vocab_size=VOCAB,
                                        tie_word_embeddings=True)
    hf = transformers.T5GemmaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.normal_(0.0, 0.3) if "norm" in name else p.normal_(0.0, 0.2)
        # spactor has one embedding table: T5Gemma's encoder, decoder and head share it
        hf.model.encoder.embed_tokens.weight.copy_(hf.model.decoder.embed_tokens.weight)
    return hf


@pytest.mark.parametrize("softcaps", [False, True], ids=["plain", "softcaps"])
def test_init_from_hf_t5gemma_gives_same_logits(transformers, tmp_path, softcaps):
    caps = {"attn_logit_softcapping": 20.0, "final_logit_softcapping": 10.0} if softcaps else {}
    hf = _hf_random(transformers, **caps)
    hf.config._attn_implementation = "eager"
    hf.save_pretrained(tmp_path)
    from spactor.architectures.t5gemma_plugin import build_t5gemma

    model = build_t5gemma(T5GemmaConfig(size="tiny", d_ff=96, init_from=f"hf:{tmp_path}", **caps), VOCAB).eval()
    ids, dec, mask = inputs(3)
    with torch.no_grad():
        ours, theirs = model(ids, dec, mask), hf_logits(hf, ids, dec, mask)
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_init_from_a_different_shape_is_one_line(tmp_path):
    save_t5gemma_pretrained(random_model(), tmp_path)
    model = T5GemmaModel(T5GemmaConfig(size="tiny", num_kv_heads=4), VOCAB)
    with pytest.raises(ConfigError, match="encoder.num_key_value_heads: checkpoint 2, model 4") as info:
        load_t5gemma_hf_weights(model, f"hf:{tmp_path}")
    assert "\n" not in str(info.value)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    with pytest.raises(ConfigError, match="not t5gemma"):
        load_t5gemma_hf_weights(T5GemmaModel(T5GemmaConfig(size="tiny"), VOCAB), f"hf:{tmp_path}")


def test_untied_embeddings_are_refused_in_one_line(transformers, tmp_path):
    hf = _hf_random(transformers)
    with torch.no_grad():
        hf.model.encoder.embed_tokens.weight.add_(1.0)
    hf.save_pretrained(tmp_path)
    model = T5GemmaModel(T5GemmaConfig(size="tiny", d_ff=96), VOCAB)
    with pytest.raises(ConfigError, match="ties all three") as info:
        load_t5gemma_hf_weights(model, f"hf:{tmp_path}")
    assert "\n" not in str(info.value)


def test_slow_paths_are_announced_once(capsys):
    T5GemmaModel(T5GemmaConfig(size="tiny"), VOCAB)
    assert "t5gemma off the fused attention path" not in capsys.readouterr().err
    for _ in range(2):
        T5GemmaModel(T5GemmaConfig(size="tiny", attn_logit_softcapping=41.0, sliding_window=5), VOCAB)
    err = capsys.readouterr().err
    assert err.count("t5gemma off the fused attention path") == 1
    assert "attn_logit_softcapping=41.0" in err and "sliding_window=5" in err


@pytest.mark.parametrize("attention", ["eager", "flex"])
def test_attention_backends_agree_with_sdpa_on_a_padded_batch(attention):
    """Every backend masks the same keys: padded encoder keys in self- and cross-attention
    (no query keeps a padded key at its own index in cross-attention), causal decoder."""
    ids, dec, mask = inputs()
    mask[1, 4:] = False  # padded keys at indices the decoder's queries (0..6) have too
    sdpa = random_model(sliding_window=4)
    other = random_model(sliding_window=4, attention=attention)
    other.load_state_dict(sdpa.state_dict())
    with torch.no_grad():
        assert (sdpa(ids, dec, mask) - other(ids, dec, mask)).abs().max().item() <= 1e-4
