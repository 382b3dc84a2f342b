"""Encoder-only discriminator: presets, protocol, both layouts, padding, SDPA vs eager."""

from __future__ import annotations

import pytest
import torch

from spactor.architectures.base import Architecture
from spactor.architectures.encoder import EncoderConfig, EncoderModel, build_encoder, resolve_encoder_spec
from spactor.plugins import load_plugins
from spactor.registry import ARCHITECTURES

VOCAB = 97
LAYOUTS = [
    ("layernorm", "learned"),
    ("layernorm", "relative"),
    ("rmsnorm", "relative"),
    ("rmsnorm", "learned"),
]


def tiny(norm: str = "layernorm", positions: str = "learned", **overrides) -> EncoderModel:
    torch.manual_seed(0)
    cfg = EncoderConfig(size="tiny", norm=norm, positions=positions, dropout=0.0, **overrides)
    return build_encoder(cfg, VOCAB)


def inputs(b: int = 3, length: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, VOCAB, (b, length), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[1, 6:] = False
    mask[2, 3:] = False
    return ids.masked_fill(~mask, 0), mask


def test_presets_and_overrides():
    small = resolve_encoder_spec(EncoderConfig(size="small"))
    assert (small.d_model, small.num_heads, small.num_layers, small.d_ff, small.d_kv) == (
        256,
        4,
        12,
        1024,
        64,
    )
    large = resolve_encoder_spec(EncoderConfig(size="large"))
    assert (large.d_model, large.num_heads, large.num_layers, large.d_ff, large.d_kv) == (
        1024,
        16,
        24,
        4096,
        64,
    )
    spec = resolve_encoder_spec(EncoderConfig(size="base", num_layers=3, d_kv=32))
    assert (spec.d_model, spec.num_layers, spec.d_kv) == (768, 3, 32)
    for bad in (
        {"size": "huge"},
        {"norm": "batchnorm"},
        {"positions": "rotary"},
        {"d_model": 70, "num_heads": 4},
    ):
        with pytest.raises(ValueError):
            resolve_encoder_spec(EncoderConfig(**bad))


def test_registered_and_implements_protocol():
    load_plugins()
    entry = ARCHITECTURES.get("encoder")
    model = entry.factory(entry.config_cls(size="tiny", vocab_size=50), VOCAB)
    assert isinstance(model, Architecture)
    assert model.has_decoder is False
    assert (model.hidden_size, model.vocab_size, model.token_embedding.num_embeddings) == (64, 50, 50)
    assert len(model.blocks()) == 2
    with pytest.raises(RuntimeError, match="no decoder"):
        model.decode(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 3, 64))


@pytest.mark.parametrize("norm,positions", LAYOUTS)
def test_forward_backward(norm: str, positions: str):
    model = tiny(norm, positions)
    ids, mask = inputs()
    hidden = model.encode(ids, mask)
    assert hidden.shape == (3, 10, 64)
    logits = model.lm_logits(hidden)
    assert logits.shape == (3, 10, VOCAB)
    # Initial logits stay O(1) in both layouts (T5-style scaling of the tied head).
    assert logits.std() < 3.0
    logits.logsumexp(-1).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    # The head is tied: the token embedding gets gradient from the output projection too.
    assert model.token_embedding.weight.grad[1].abs().sum() > 0  # id 1 is never an input


@pytest.mark.parametrize("norm,positions", LAYOUTS)
def test_padding_does_not_leak(norm: str, positions: str):
    model = tiny(norm, positions)
    ids, mask = inputs()
    padded = model.encode(ids, mask)
    # Garbage in the padded positions changes nothing at the real ones.
    garbage = torch.where(mask, ids, torch.randint(3, VOCAB, ids.shape))
    assert torch.allclose(model.encode(garbage, mask)[mask], padded[mask], atol=1e-5)
    # And each row equals the same row run alone without padding (right padding keeps positions).
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        alone = model.encode(ids[row : row + 1, :n])
        assert torch.allclose(alone[0], padded[row, :n], atol=1e-5)


@pytest.mark.parametrize("norm,positions", LAYOUTS)
def test_sdpa_matches_eager(norm: str, positions: str):
    ids, mask = inputs()
    sdpa = tiny(norm, positions).encode(ids, mask)
    eager = tiny(norm, positions, attention="eager").encode(ids, mask)
    assert torch.allclose(sdpa, eager, atol=1e-5)


def test_inputs_embeds_equals_ids_and_exactly_one_required():
    model = tiny()
    ids, mask = inputs()
    assert torch.allclose(model.encode(None, mask, inputs_embeds=model.embed(ids)), model.encode(ids, mask))
    with pytest.raises(ValueError, match="exactly one"):
        model.encode(ids, mask, inputs_embeds=model.embed(ids))


def test_too_long_for_learned_positions():
    model = tiny(max_positions=8)
    with pytest.raises(ValueError, match="max_positions"):
        model.encode(torch.zeros(1, 9, dtype=torch.long))


def test_init_follows_the_layout():
    bert = tiny("layernorm", "learned", d_model=256, num_heads=4)
    assert abs(bert.token_embedding.weight.std().item() - 0.02) < 0.002
    assert abs(bert.encoder.blocks[0].ffn_in.weight.std().item() - 0.02) < 0.002
    assert bert.encoder.blocks[0].self_attn.q.bias.abs().sum() == 0
    t5 = tiny("rmsnorm", "relative", d_model=256, num_heads=4)
    assert abs(t5.token_embedding.weight.std().item() - 1.0) < 0.02
    assert all(
        p.dim() > 1 or "norm" in n or "mlm_head" in n for n, p in t5.encoder.named_parameters()
    )  # no biases


@pytest.mark.parametrize("norm,positions", LAYOUTS)
def test_flex_matches_sdpa_and_eager_with_gradients(norm: str, positions: str):
    """Outputs and (with relative positions) the bias table's gradient agree across the
    three backends, padding included."""
    ids, mask = inputs()
    results = {}
    for backend in ("sdpa", "eager", "flex"):
        model = tiny(norm, positions, attention=backend)
        out = model.encode(ids, mask)
        out.square().mean().backward()
        table = model.encoder.rel_bias
        results[backend] = (out.detach(), None if table is None else table.embedding.weight.grad)
    ref_out, ref_grad = results["eager"]
    for backend in ("sdpa", "flex"):
        out, grad = results[backend]
        torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
        if positions == "relative":
            assert grad is not None and grad.abs().sum() > 0
            torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-4)


def test_flex_refuses_dropout():
    with pytest.raises(ValueError, match="no attention-probability dropout"):
        resolve_encoder_spec(EncoderConfig(size="tiny", attention="flex", dropout=0.1))
