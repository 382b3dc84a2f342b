"""T5 v1.0 / v1.1 model: presets, gradients, SDPA vs eager, counts, causality, padding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spactor.architectures.base import Architecture
from spactor.architectures.layers import RelativePositionBias
from spactor.architectures.t5 import T5Config, T5Model, count_parameters, resolve_t5_dims
from spactor.architectures.t5_plugin import build_t5
from spactor.registry import ARCHITECTURES

VOCAB = 97


def tiny(version: str = "1.0", **overrides) -> T5Model:
    torch.manual_seed(0)
    return build_t5(T5Config(version=version, size="tiny", **overrides), VOCAB)


def batch(b: int = 2, length: int = 9, target: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    inputs = torch.randint(0, VOCAB, (b, length), generator=g)
    targets = torch.randint(0, VOCAB, (b, target), generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[-1, length // 2 :] = False
    return inputs, targets, mask


# --- config -----------------------------------------------------------------------------


def test_presets_resolve_and_overrides_apply():
    assert resolve_t5_dims(T5Config(version="1.1", size="small")) == {
        "d_model": 512, "d_ff": 1024, "num_heads": 6, "num_layers": 8, "num_decoder_layers": 8,
        "d_kv": 64, "ffn": "gated-gelu", "tie_embeddings": False,
    }  # fmt: skip
    dims = resolve_t5_dims(T5Config(size="large", num_layers=3, num_decoder_layers=1, d_ff=100))
    picked = (dims["d_model"], dims["d_ff"], dims["num_layers"], dims["num_decoder_layers"])
    assert picked == (1024, 100, 3, 1)
    assert dims["ffn"] == "relu" and dims["tie_embeddings"]


def test_yaml_float_version_is_accepted():
    assert resolve_t5_dims(T5Config(version=1.1, size="base"))["ffn"] == "gated-gelu"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [({"size": "huge"}, "size 'huge'"), ({"version": "2.0"}, "version '2.0'"), ({"d_model": 0}, "d_model")],
)
def test_bad_config_raises_clear_error(overrides, match):
    with pytest.raises(ValueError, match=match):
        resolve_t5_dims(T5Config(**overrides))


def test_registered_and_vocab_override():
    entry = ARCHITECTURES.get("t5")
    assert entry.config_cls is T5Config
    with torch.device("meta"):
        assert entry.factory(T5Config(size="tiny"), 50).vocab_size == 50
        model = entry.factory(T5Config(size="tiny", vocab_size=60), 50)
    assert model.vocab_size == 60 and model.token_embedding.num_embeddings == 60


def test_implements_architecture_protocol():
    model = tiny()
    assert isinstance(model, Architecture)
    assert model.has_decoder and model.hidden_size == 64 and model.vocab_size == VOCAB
    assert len(model.blocks()) == 4


# --- training step ----------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_forward_backward_every_parameter_gets_gradient(version):
    model = tiny(version)
    inputs, targets, mask = batch()
    logits = model(inputs, targets, mask)
    assert logits.shape == (2, 6, VOCAB)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    assert torch.isfinite(loss)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_v10_ties_head_and_scales_v11_does_not():
    v10, v11 = tiny("1.0"), tiny("1.1")
    assert v10.lm_head is None and v11.lm_head is not None and v11.lm_head.bias is None
    hidden = torch.randn(3, 64)
    expected = hidden * 64**-0.5 @ v10.token_embedding.weight.T
    torch.testing.assert_close(v10.lm_logits(hidden), expected)
    torch.testing.assert_close(v11.lm_logits(hidden), hidden @ v11.lm_head.weight.T)


def test_inputs_embeds_matches_input_ids():
    model = tiny()
    inputs, _, mask = batch()
    torch.testing.assert_close(
        model.encode(None, mask, inputs_embeds=model.embed(inputs)), model.encode(inputs, mask)
    )
    with pytest.raises(ValueError, match="exactly one"):
        model.encode(None)


# --- attention backends -----------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0", "1.1"])
@pytest.mark.parametrize("padded", [False, True])
def test_sdpa_and_eager_models_agree(version, padded):
    sdpa, eager = tiny(version, attention="sdpa"), tiny(version, attention="eager")
    eager.load_state_dict(sdpa.state_dict())
    inputs, targets, mask = batch()
    mask = mask if padded else None
    enc_s, enc_e = sdpa.encode(inputs, mask), eager.encode(inputs, mask)
    torch.testing.assert_close(enc_s, enc_e, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        sdpa.decode(targets, enc_s, mask), eager.decode(targets, enc_e, mask), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_relative_bias_table_gradients_match_eager(version):
    """The SDPA path takes the bias as a materialised (1, H, L, L) tensor; its gradient is
    reduced back into the 32 x heads table outside the attention kernel. It must equal
    the eager reference's, for both stacks."""
    sdpa, eager = tiny(version, attention="sdpa"), tiny(version, attention="eager")
    eager.load_state_dict(sdpa.state_dict())
    inputs, targets, mask = batch()
    for model in (sdpa, eager):
        model(inputs, targets, mask).float().square().mean().backward()
    grads = {n: p.grad for n, p in sdpa.named_parameters() if "relative" in n or "bias" in n}
    assert grads, "no relative-bias table found"
    reference = dict(eager.named_parameters())
    for name, grad in grads.items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, reference[name].grad, atol=1e-5, rtol=1e-4)


# --- parameter counts (Hugging Face T5ForConditionalGeneration, 32,128 rows) ------------


def meta_count(version: str, size: str) -> int:
    with torch.device("meta"):
        return count_parameters(build_t5(T5Config(version=version, size=size), 32128))


def test_parameter_counts_match_hugging_face_v10():
    assert meta_count("1.0", "base") == 222_903_552
    assert meta_count("1.0", "large") == 737_668_096


def test_parameter_count_v11_base_untied():
    d, ff, h, dkv, layers, vocab = 768, 2048, 12, 64, 12, 32128
    attn = 4 * d * h * dkv
    ffn = 3 * d * ff  # wi_0, wi_1, wo
    encoder = layers * (attn + ffn + 2 * d) + d + 32 * h  # blocks, final norm, bias table
    decoder = layers * (2 * attn + ffn + 3 * d) + d + 32 * h
    expected = 2 * vocab * d + encoder + decoder  # untied: embedding + lm_head
    assert expected == 247_577_856  # also what HF reports for google/t5-v1_1-base
    assert meta_count("1.1", "base") == expected


def test_count_parameters_counts_tied_weight_once():
    model = tiny("1.0")
    model.extra_head = torch.nn.Linear(64, VOCAB, bias=False)
    model.extra_head.weight = model.token_embedding.weight
    assert count_parameters(model) == count_parameters(tiny("1.0"))


# --- masking ----------------------------------------------------------------------------


def test_decoder_is_causal():
    model = tiny("1.1")
    inputs, targets, mask = batch()
    encoded = model.encode(inputs, mask)
    changed = targets.clone()
    changed[:, 4] = (changed[:, 4] + 1) % VOCAB
    before, after = model.decode(targets, encoded, mask), model.decode(changed, encoded, mask)
    torch.testing.assert_close(before[:, :4], after[:, :4])
    assert not torch.allclose(before[:, 4:], after[:, 4:])


def test_padded_encoder_tokens_do_not_leak():
    model = tiny("1.0")
    inputs, targets, mask = batch()
    changed = inputs.clone()
    changed[~mask] = (changed[~mask] + 1) % VOCAB
    enc, enc_changed = model.encode(inputs, mask), model.encode(changed, mask)
    torch.testing.assert_close(enc[mask], enc_changed[mask])
    torch.testing.assert_close(model.decode(targets, enc, mask), model.decode(targets, enc_changed, mask))


def test_fully_padded_row_is_finite_in_bf16_autocast():
    model = tiny("1.1")
    inputs, targets, mask = batch()
    mask[0] = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(inputs, targets, mask)
    assert torch.isfinite(logits.float()).all()


# --- structure and initialisation -------------------------------------------------------


def test_one_relative_bias_table_per_stack_none_in_cross_attention():
    model = tiny("1.0")
    tables = {name: m for name, m in model.named_modules() if isinstance(m, RelativePositionBias)}
    assert set(tables) == {"encoder.rel_bias", "decoder.rel_bias"}
    assert tables["encoder.rel_bias"].bidirectional and not tables["decoder.rel_bias"].bidirectional
    assert tables["encoder.rel_bias"].embedding.weight.shape == (32, 4)
    for block in model.blocks():  # layers hold no table of their own; the stack passes it in
        assert not any(isinstance(m, RelativePositionBias) for m in block.modules())
    cross = model.decoder.blocks[0].cross_attn
    assert [n for n, _ in cross.named_parameters()] == ["q.weight", "k.weight", "v.weight", "o.weight"]


def test_no_linear_has_bias():
    for version in ("1.0", "1.1"):
        for module in tiny(version).modules():
            if isinstance(module, torch.nn.Linear):
                assert module.bias is None


def test_initialisation_follows_mesh_tf():
    factor, d, ff, h, dkv = 0.5, 256, 512, 4, 32
    torch.manual_seed(0)
    model = build_t5(
        T5Config(version="1.1", size="tiny", d_model=d, d_ff=ff, num_heads=h, d_kv=dkv, init_std=factor), 2000
    )
    block = model.encoder.blocks[0]
    expected = {
        "token_embedding": (model.token_embedding.weight, factor),
        "lm_head": (model.lm_head.weight, factor * d**-0.5),
        "q": (block.self_attn.q.weight, factor * (d * dkv) ** -0.5),
        "k": (block.self_attn.k.weight, factor * d**-0.5),
        "v": (block.self_attn.v.weight, factor * d**-0.5),
        "o": (block.self_attn.o.weight, factor * (h * dkv) ** -0.5),
        "wi_0": (block.ffn.wi_0.weight, factor * d**-0.5),
        "wo": (block.ffn.wo.weight, factor * ff**-0.5),
    }
    for name, (weight, std) in expected.items():
        assert weight.std().item() == pytest.approx(std, rel=0.05), name
    assert (block.self_attn_norm.weight == 1).all() and (model.encoder.final_norm.weight == 1).all()


def test_init_weights_after_meta_to_empty():
    with torch.device("meta"):
        model = build_t5(T5Config(size="tiny"), VOCAB)
    model.to_empty(device="cpu")
    model.init_weights()
    inputs, targets, mask = batch()
    assert torch.isfinite(model(inputs, targets, mask)).all()
    assert (model.decoder.final_norm.weight == 1).all()


# --- flex attention and the once-per-stack bias -------------------------------------------

BACKENDS = ("sdpa", "eager", "flex")


def _stack_outputs_and_table_grads(model: T5Model, padded: bool):
    inputs, targets, mask = batch(b=3, length=11, target=7)
    mask = mask if padded else None
    encoded = model.encode(inputs, mask)
    decoded = model.decode(targets, encoded, mask)
    (encoded.square().mean() + decoded.square().mean()).backward()
    grads = {
        "encoder": model.encoder.rel_bias.embedding.weight.grad.clone(),
        "decoder": model.decoder.rel_bias.embedding.weight.grad.clone(),
    }
    return encoded.detach(), decoded.detach(), grads


@pytest.mark.parametrize("version", ["1.0", "1.1"])
@pytest.mark.parametrize("padded", [False, True])
def test_sdpa_eager_and_flex_agree_on_outputs_and_bias_table_gradients(version, padded):
    """Encoder self-attention (relative + padding), decoder causal self-attention
    (relative + causal) and cross-attention (padding): the same outputs and the same
    gradient for both relative-bias tables from all three backends, in fp32."""
    models = {name: tiny(version, attention=name) for name in BACKENDS}
    for model in models.values():
        model.load_state_dict(models["sdpa"].state_dict())
    results = {name: _stack_outputs_and_table_grads(model, padded) for name, model in models.items()}
    enc_ref, dec_ref, grads_ref = results["eager"]
    for name in ("sdpa", "flex"):
        enc, dec, grads = results[name]
        torch.testing.assert_close(enc, enc_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(dec, dec_ref, atol=1e-5, rtol=1e-5)
        for stack, grad in grads.items():
            assert grad.abs().sum() > 0, (name, stack)
            torch.testing.assert_close(grad, grads_ref[stack], atol=1e-5, rtol=1e-4)


def test_flex_inference_on_cpu_uses_the_public_kernel_and_agrees():
    sdpa, flex = tiny(attention="sdpa"), tiny(attention="flex")
    flex.load_state_dict(sdpa.state_dict())
    inputs, targets, mask = batch()
    with torch.no_grad():
        expected = sdpa(inputs, targets, mask)
        torch.testing.assert_close(flex(inputs, targets, mask), expected, atol=1e-5, rtol=1e-5)


def test_flex_refuses_attention_dropout():
    with pytest.raises(ValueError, match="attention 'flex' has no attention-probability dropout"):
        resolve_t5_dims(T5Config(attention="flex", dropout=0.1))


def test_bias_is_built_once_per_stack_in_the_compute_dtype():
    """Under bf16 autocast every layer's SDPA gets the same bf16 bias object, of the
    smallest shape its masks need: (B, H, L, L) for the encoder (position + padding),
    (1, H, T, T) for causal self-attention, (B, 1, 1, L) for cross-attention."""
    model = tiny()
    seen: list[torch.Tensor] = []
    original = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        seen.append(attn_mask)
        return original(q, k, v, attn_mask=attn_mask, **kwargs)

    inputs, targets, mask = batch(b=3, length=11, target=7)
    F.scaled_dot_product_attention = spy
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(inputs, targets, mask)
    finally:
        F.scaled_dot_product_attention = original
    layers = model.dims["num_layers"]
    encoder, decoder = seen[:layers], seen[layers:]
    self_biases, cross_biases = decoder[0::2], decoder[1::2]
    heads = model.dims["num_heads"]
    expected = ((encoder, (3, heads, 11, 11)), (self_biases, (1, heads, 7, 7)), (cross_biases, (3, 1, 1, 11)))
    for group, shape in expected:
        assert all(b is group[0] for b in group), "the bias must be built once per stack, not per layer"
        assert group[0].dtype == torch.bfloat16 and tuple(group[0].shape) == shape
