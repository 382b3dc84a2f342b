"""mlm: summed CE at masked positions / count == torch's mean CE; accuracy; registration."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spactor.architectures.encoder import EncoderConfig, build_encoder
from spactor.architectures.t5 import T5Config
from spactor.architectures.t5_plugin import build_t5
from spactor.objectives.base import ObjectiveContext, Reduce, SharedForward, Vocab
from spactor.objectives.mlm_mask import MlmMaskConfig, build_mlm_mask
from spactor.plugins import load_plugins
from spactor.registry import OBJECTIVES

from roles import ctx_for  # tests/roles.py: tests/ is on sys.path (rootdir conftest)

VOCAB = Vocab(size=512, first_sentinel_id=499, mask_id=500)
LENGTH = 24


def build_mlm(model, name: str = "mlm", **cfg):
    load_plugins()
    entry = OBJECTIVES.get("mlm")
    return entry.factory(entry.config_cls(**cfg), ObjectiveContext(name, VOCAB, LENGTH, model))


def masked_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB.last_sentinel_id, (3, LENGTH), generator=g)
    ids[1, 15:] = VOCAB.pad_id
    mask_objective = build_mlm_mask(
        MlmMaskConfig(ratio=0.3), ObjectiveContext("mlm_mask", VOCAB, LENGTH, None)
    )
    return mask_objective.transform({"encoder_input": ids}, g)


@pytest.mark.parametrize("arch", ["encoder", "t5"])
def test_loss_over_count_is_torch_mean_cross_entropy(arch: str):
    torch.manual_seed(0)
    if arch == "encoder":
        model = build_encoder(EncoderConfig(size="tiny", dropout=0.0), VOCAB.size)
    else:
        model = build_t5(T5Config(size="tiny"), VOCAB.size)
    batch = masked_batch()
    mlm = build_mlm(model)
    ids = batch["encoder_input"]
    forward = SharedForward(model, batch, VOCAB.pad_id)
    out = mlm.loss(batch, forward, ctx_for(mlm, batch))
    hidden = forward.encode()
    mask = batch["mlm_mask"]
    assert out.loss.count == mlm.count(batch) == mask.sum() > 0
    logits = model.lm_logits(hidden)
    expected = F.cross_entropy(logits[mask], batch["mlm_labels"][mask])
    assert torch.allclose(out.loss.total / out.loss.count, expected, atol=1e-5)
    accuracy = (logits[mask].argmax(-1) == batch["mlm_labels"][mask]).float().mean()
    assert out.metrics["mlm/accuracy"].value.item() == pytest.approx(accuracy.item())
    (out.loss.total / out.loss.count).backward()
    assert model.token_embedding.weight.grad is not None


def test_the_accuracy_is_named_after_the_instance():
    """``<instance>/accuracy``, a per-micro-batch ratio (Reduce.MEAN): issue 24."""
    torch.manual_seed(0)
    model = build_encoder(EncoderConfig(size="tiny", dropout=0.0), VOCAB.size)
    batch = masked_batch()
    mlm = build_mlm(model, name="masked_lm")
    out = mlm.loss(batch, SharedForward(model, batch, VOCAB.pad_id), ctx_for(mlm, batch))
    assert list(out.metrics) == ["masked_lm/accuracy"] and out.metrics["masked_lm/accuracy"].reduce is Reduce.MEAN


def test_knobs_and_missing_mask():
    model = build_encoder(EncoderConfig(size="tiny"), VOCAB.size)
    mlm = build_mlm(model, weight=2.5)
    assert mlm.knobs() == {"weight": 2.5} and mlm.weight == 2.5
    with pytest.raises(KeyError, match="mlm_mask"):
        mlm.count({"encoder_input": torch.zeros(1, 4, dtype=torch.long)})


def test_nothing_masked_gives_zero_loss():
    model = build_encoder(EncoderConfig(size="tiny", dropout=0.0), VOCAB.size)
    ids = torch.randint(3, 300, (2, LENGTH))
    batch = {"encoder_input": ids, "mlm_mask": torch.zeros_like(ids, dtype=torch.bool)}  # mlm_mask disabled
    mlm = build_mlm(model)
    out = mlm.loss(batch, SharedForward(model, batch, VOCAB.pad_id), ctx_for(mlm, batch))
    assert out.loss.count == 0 and out.loss.total.item() == 0.0
