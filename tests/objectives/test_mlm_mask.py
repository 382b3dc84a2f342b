"""mlm_mask: exact counts, only real tokens, mode proportions, identity when off, seeding."""

from __future__ import annotations

import math

import pytest
import torch

from spactor.objectives.base import ObjectiveContext, Vocab
from spactor.objectives.mlm_mask import MlmMask, MlmMaskConfig
from spactor.objectives.span_corruption import span_corrupt
from spactor.registry import OBJECTIVES

VOCAB = Vocab(size=32128)


def build(**cfg) -> MlmMask:
    entry = OBJECTIVES.get("mlm_mask")
    ctx = ObjectiveContext(name="mlm_mask", vocab=VOCAB, input_length=512, model=None)
    return entry.factory(entry.config_cls(**cfg), ctx)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sc_batch(batch: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """A span-corrupted batch with every kind of special token: sentinels, EOS inside and
    at the end, padding of different lengths per row, and a few [M] already present."""
    g = gen(seed)
    original = torch.randint(3, 32000, (batch, 568), generator=g)
    original[:, 50::50] = VOCAB.eos_id
    enc = span_corrupt(original, 0.15, 3.0, VOCAB, g)["encoder_input"]
    enc = torch.nn.functional.pad(enc, (0, 40), value=VOCAB.pad_id)
    for i in range(batch):  # vary the number of real tokens per row
        enc[i, 512 - 7 * i :] = VOCAB.pad_id
    enc[:, 3] = VOCAB.mask_id
    return {"encoder_input": enc}


@pytest.mark.parametrize("mode", ["replace_all", "electra", "bert"])
@pytest.mark.parametrize("ratio", [0.15, 0.2, 0.5, 1.0])
def test_exact_count_and_only_real_tokens(mode: str, ratio: float) -> None:
    batch = sc_batch()
    ids = batch["encoder_input"]
    out = build(ratio=ratio, mode=mode).transform(batch, gen(1))
    chosen = out["mlm_mask"]
    real = ~VOCAB.is_special(ids)
    n = real.sum(1)
    assert len(set(n.tolist())) > 1  # rows really differ
    assert chosen.sum(1).tolist() == [round(ratio * int(k)) for k in n]
    assert not (chosen & ~real).any()  # never pad, EOS, sentinels or [M]
    new = out["encoder_input"]
    assert torch.equal(new[~chosen], ids[~chosen])  # nothing else changes
    assert torch.equal(out["mlm_labels"], torch.where(chosen, ids, VOCAB.pad_id))
    assert torch.equal(torch.where(chosen, out["mlm_labels"], new), ids)  # documented recipe for the original
    if mode == "replace_all":
        assert (new[chosen] == VOCAB.mask_id).all()


def test_choice_is_uniform_over_real_positions() -> None:
    # One fixed row repeated: every real position should be chosen with probability k/n.
    row = sc_batch(1)["encoder_input"][0]
    batch = {"encoder_input": row.expand(4000, -1).clone()}
    chosen = build(ratio=0.15).transform(batch, gen(2))["mlm_mask"]
    real = ~VOCAB.is_special(row)
    n = int(real.sum())
    k = round(0.15 * n)
    freq = chosen[:, real].float().mean(0)
    # Each position's count is Binomial(4000, k/n); Bonferroni over the n positions at 1e-3.
    p = k / n
    sd = math.sqrt(p * (1 - p) / 4000)
    assert (freq - p).abs().max() < 4.9 * sd
    assert (chosen[:, ~real] == 0).all()


@pytest.mark.parametrize(
    "mode,mask_p,random_p", [("replace_all", 1.0, 0.0), ("electra", 0.85, 0.0), ("bert", 0.8, 0.1)]
)
def test_mode_proportions(mode: str, mask_p: float, random_p: float) -> None:
    batch = sc_batch(64)
    ids = batch["encoder_input"]
    out = build(ratio=0.15, mode=mode).transform(batch, gen(3))
    chosen, new = out["mlm_mask"], out["encoder_input"]
    total = int(chosen.sum())  # ~4.4k positions
    masked = int((chosen & (new == VOCAB.mask_id)).sum())
    randomised = int((chosen & (new != VOCAB.mask_id) & (new != ids)).sum())
    kept = total - masked - randomised  # includes the ~1/32k of random draws equal to the original
    for observed, p in ((masked, mask_p), (randomised, random_p), (kept, 1 - mask_p - random_p)):
        tol = 5 * math.sqrt(p * (1 - p) / total) + 1e-3  # 5 binomial standard errors
        assert abs(observed / total - p) <= tol, (mode, observed / total, p)
    if random_p:
        drawn = new[chosen & (new != VOCAB.mask_id) & (new != ids)]
        assert not VOCAB.is_special(drawn).any()
        assert drawn.min() >= 3 and drawn.max() <= VOCAB.first_sentinel_id - VOCAB.num_sentinels


@pytest.mark.parametrize("cfg", [{"enabled": False}, {"ratio": 0.0}])
def test_off_is_identity(cfg: dict) -> None:
    batch = sc_batch()
    out = build(**cfg).transform(batch, gen(0))
    assert torch.equal(out["encoder_input"], batch["encoder_input"])
    assert out["mlm_mask"].shape == batch["encoder_input"].shape and not out["mlm_mask"].any()
    # Every field PROVIDES names is there, holding nothing chosen.
    assert set(out) == {"encoder_input", *type(build(**cfg)).PROVIDES}
    assert out["mlm_index"].shape == (batch["encoder_input"].shape[0], 0)  # nothing to gather
    assert (out["mlm_labels"] == VOCAB.pad_id).all()


def test_knobs() -> None:
    obj = build()
    assert obj.knobs() == {"ratio": 0.15, "enabled": 1.0}
    obj.set_knob("enabled", 0)
    assert obj.knob("enabled") is False and not obj.enabled
    assert obj.cfg.enabled is True  # runtime state: the config keeps what the YAML said
    assert not obj.transform(sc_batch(), gen(0))["mlm_mask"].any()
    obj.set_knob("enabled", 1)
    obj.set_knob("ratio", 0.3)
    batch = sc_batch()
    n = (~VOCAB.is_special(batch["encoder_input"])).sum(1)
    assert obj.transform(batch, gen(0))["mlm_mask"].sum(1).tolist() == [round(0.3 * int(k)) for k in n]
    assert obj.knob("ratio") == 0.3 and obj.cfg.ratio == 0.15
    with pytest.raises(ValueError, match="ratio"):  # the config's rule, when a schedule sets it
        obj.set_knob("ratio", 1.5)
    assert obj.knob("ratio") == 0.3


def test_seeded() -> None:
    batch = sc_batch()
    obj = build(mode="bert")
    a, b, c = (obj.transform(batch, gen(s)) for s in (5, 5, 6))
    for k in ("encoder_input", "mlm_mask", "mlm_labels"):
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a["mlm_mask"], c["mlm_mask"])


def test_preview_positions() -> None:
    obj = build()
    out = obj.transform(sc_batch(), gen(0))
    pos = obj.preview_fields(out)["mlm_positions"]
    for row, mask in zip(pos, out["mlm_mask"]):
        assert row[row >= 0].tolist() == mask.nonzero().squeeze(1).tolist()


def test_bad_config() -> None:
    assert OBJECTIVES.get("mlm_mask").config_cls is MlmMaskConfig
    with pytest.raises(ValueError, match="mode"):
        build(mode="span")
    with pytest.raises(ValueError, match="ratio"):
        build(ratio=-0.1)
