"""prefix_lm and UL2 on a decoder-only model: the layout (one sequence, bidirectional
prefix, loss on the rest / on the targets), the same corruption and counts as the
encoder-decoder form, and the one-line refusal of a model that has neither form."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spactor.architectures.encoder import EncoderConfig, EncoderModel
from spactor.architectures.llama import LlamaConfig, LlamaModel
from spactor.config import ConfigError
from spactor.objectives.base import ObjectiveContext, SharedForward, Vocab
from spactor.objectives.prefix_lm import PrefixLM, PrefixLMConfig, PrefixLMDecoder, build_prefix_lm
from spactor.objectives.ul2 import UL2, UL2Config, UL2Decoder, build_ul2

from roles import ctx_for  # tests/roles.py: tests/ is on sys.path (rootdir conftest)

VOCAB = Vocab(size=512, first_sentinel_id=499, mask_id=500)
LENGTH = 32


def llama() -> LlamaModel:
    torch.manual_seed(0)
    return LlamaModel(LlamaConfig(size="tiny"), VOCAB.size)


def chunks(obj, batch: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB.last_sentinel_id, (batch, obj.raw_length(LENGTH)), generator=g)


def test_prefix_lm_on_a_decoder_is_one_sequence_with_a_bidirectional_prefix():
    model = llama()
    obj = build_prefix_lm(PrefixLMConfig(), ObjectiveContext("prefix_lm", VOCAB, LENGTH, model))
    assert isinstance(obj, PrefixLMDecoder) and obj.raw_length(LENGTH) == LENGTH + 1
    original = chunks(obj)
    batch = obj.transform({"original": original, "encoder_input": original}, torch.Generator().manual_seed(1))
    prefix = batch["prefix_length"]
    assert batch["lm_input"].equal(original[:, :-1])
    for b in range(original.shape[0]):
        p = int(prefix[b])
        assert 1 <= p <= LENGTH
        assert (batch["lm_target"][b, : p - 1] == VOCAB.pad_id).all()  # no loss inside the prefix
        assert batch["lm_target"][b, p - 1 :].equal(original[b, p:])  # the rest, token by token
    assert int(obj.count(batch)) == int((LENGTH + 1 - prefix).sum())
    out = obj.loss(batch, SharedForward(model, batch, VOCAB.pad_id), ctx_for(obj, batch))
    logits = model(batch["lm_input"], prefix_length=prefix)
    expected = F.cross_entropy(logits.flatten(0, 1), batch["lm_target"].flatten(), ignore_index=0, reduction="sum")
    torch.testing.assert_close(out.loss.total, expected)


def test_ul2_on_a_decoder_packs_the_encoder_decoder_corruption():
    model = llama()
    cfg = UL2Config(z_loss=1e-4)
    dec = build_ul2(cfg, ObjectiveContext("ul2", VOCAB, LENGTH, model))
    encdec = UL2(UL2Config(), ObjectiveContext("ul2", VOCAB, LENGTH, None))
    assert isinstance(dec, UL2Decoder) and dec.raw_length(LENGTH) == encdec.raw_length(LENGTH)
    dec.round_robin = encdec.round_robin = True  # every denoiser, S included
    original = chunks(dec, batch=len(cfg.denoisers))
    raw = {"original": original, "encoder_input": original}
    a = dec.transform(raw, torch.Generator().manual_seed(3))
    b = encdec.transform(raw, torch.Generator().manual_seed(3))  # the same draws
    assert a["lm_input"].shape[1] == LENGTH + encdec.target_length - 1
    for row in range(original.shape[0]):
        inputs = b["encoder_input"][row][b["encoder_input"][row] != 0]
        targets = b["decoder_target"][row][b["decoder_target"][row] != 0]
        p = int(a["prefix_length"][row])
        assert p == len(inputs) and a["lm_input"][row, :p].equal(inputs)  # mode token first
        assert a["lm_input"][row, p : p + len(targets) - 1].equal(targets[:-1])
        assert a["lm_target"][row, p - 1 : p - 1 + len(targets)].equal(targets)  # loss on the targets only
        assert (a["lm_target"][row, : p - 1] == 0).all() and (a["lm_target"][row, p - 1 + len(targets) :] == 0).all()
    assert int(dec.count(a)) == int(encdec.count(b))
    out = dec.loss(a, SharedForward(model, a, VOCAB.pad_id), ctx_for(dec, a))
    assert torch.isfinite(out.loss.total) and "ul2_z" in out.aux_losses


@pytest.mark.parametrize("build, cfg", [(build_prefix_lm, PrefixLMConfig()), (build_ul2, UL2Config())])
def test_a_model_with_neither_form_is_refused_in_one_line(build, cfg):
    with torch.device("meta"):
        encoder = EncoderModel(EncoderConfig(size="tiny"), VOCAB.size)
    with pytest.raises(ConfigError, match="needs an encoder-decoder .* or a decoder with the 'prefix_lm' pass") as info:
        build(cfg, ObjectiveContext("x", VOCAB, LENGTH, encoder))
    assert "\n" not in str(info.value)


def test_an_encoder_decoder_keeps_its_form():
    obj = build_prefix_lm(PrefixLMConfig(), ObjectiveContext("prefix_lm", VOCAB, LENGTH, None))
    assert type(obj) is PrefixLM
