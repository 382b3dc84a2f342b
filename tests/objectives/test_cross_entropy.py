"""The shared token cross-entropy and T5's z-loss: equal to torch's cross-entropy, to a
reference written from T5X's ``cross_entropy_with_logits`` (t5x/losses.py), chunked or
not; what it saves for backward; each objective's z_loss key and its logging."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import spactor.objectives.cross_entropy as cross_entropy
from spactor.architectures.t5 import T5Config
from spactor.architectures.t5_plugin import build_t5
from spactor.config import ConfigError, load_config
from spactor.objectives.base import ObjectiveContext, SharedForward, Vocab
from spactor.objectives.cross_entropy import token_cross_entropy
from spactor.objectives.mlm import MLM, MLMConfig
from spactor.objectives.span_corruption import SpanCorruption, SpanCorruptionConfig
from spactor.plugins import load_plugins

from roles import ctx_for  # tests/roles.py: tests/ is on sys.path (rootdir conftest)

load_plugins()


def t5x_cross_entropy_with_logits(
    logits: torch.Tensor, one_hot: torch.Tensor, z_loss: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """T5X's definition, per token: log_z = logsumexp(logits); loss = −Σ targets ·
    (logits − log_z) + z_loss · log_z²; also returns the z term alone."""
    log_z = torch.logsumexp(logits, dim=-1, keepdim=True)
    loss = -(one_hot * (logits - log_z)).sum(dim=-1)
    total_z_loss = z_loss * log_z.squeeze(-1).square()
    return loss + total_z_loss, total_z_loss


def _case(seed: int = 0, rows: int = 4, cols: int = 5, vocab: int = 37):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(rows, cols, vocab, generator=g, dtype=torch.float64)).requires_grad_()
    targets = torch.randint(0, vocab, (rows, cols), generator=g)
    targets[0, :2] = -100
    targets[-1, -1] = -100
    return logits, targets


@pytest.mark.parametrize("chunk_elements", [1 << 24, 3 * 37, 1])
def test_matches_torch_cross_entropy_and_its_gradient(monkeypatch, chunk_elements):
    monkeypatch.setattr(cross_entropy, "CHUNK_ELEMENTS", chunk_elements)  # one chunk, 3 rows, 1 row
    logits, targets = _case()
    out = token_cross_entropy(logits, targets, with_accuracy=True)
    ref = F.cross_entropy(logits.reshape(-1, 37), targets.reshape(-1), reduction="sum")
    torch.testing.assert_close(out.total, ref)
    (grad,) = torch.autograd.grad(out.total, logits)
    (ref_grad,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(grad, ref_grad)
    valid = targets != -100
    assert out.correct == ((logits.argmax(-1) == targets) & valid).sum()
    assert token_cross_entropy(logits, targets).correct is None  # accuracy only when asked


@pytest.mark.parametrize("chunk_elements", [1 << 24, 2 * 37])
def test_z_loss_matches_t5x_definition_with_gradients(monkeypatch, chunk_elements):
    monkeypatch.setattr(cross_entropy, "CHUNK_ELEMENTS", chunk_elements)
    z_loss = 1e-4 * 1000  # large enough that a wrong z gradient would show
    logits, targets = _case(seed=1)
    valid = targets != -100
    one_hot = F.one_hot(targets.clamp(min=0), 37).double()
    per_token, per_token_z = t5x_cross_entropy_with_logits(logits, one_hot, z_loss)
    ref_total = (per_token * valid).sum()  # T5X weights padding out, then sums
    out = token_cross_entropy(logits, targets)
    total = out.total + z_loss * out.z_total
    torch.testing.assert_close(total, ref_total)
    torch.testing.assert_close(z_loss * out.z_total, (per_token_z * valid).sum())
    (grad,) = torch.autograd.grad(total, logits)
    (ref_grad,) = torch.autograd.grad(ref_total, logits)
    torch.testing.assert_close(grad, ref_grad)


def test_gradcheck_in_float64():
    logits, targets = _case(rows=2, cols=3, vocab=7)
    targets = targets.clamp(max=6)

    def f(x: torch.Tensor) -> torch.Tensor:
        out = token_cross_entropy(x, targets)
        return out.total + 0.3 * out.z_total

    assert torch.autograd.gradcheck(f, (logits.detach().requires_grad_(),))


def test_bf16_logits_work_in_fp32():
    logits, targets = _case()
    low = logits.detach().bfloat16().requires_grad_()
    out = token_cross_entropy(low, targets)
    ref = F.cross_entropy(low.double().reshape(-1, 37), targets.reshape(-1), reduction="sum")
    assert out.total.dtype == torch.float32
    torch.testing.assert_close(out.total.double(), ref, rtol=1e-6, atol=1e-4)
    out.total.backward()
    assert low.grad.dtype == torch.bfloat16


# --- objectives ------------------------------------------------------------------------------

VOCAB = Vocab(size=97, num_sentinels=10, first_sentinel_id=96, mask_id=95)


def _t5(**overrides):
    torch.manual_seed(0)
    return build_t5(T5Config(size="tiny", **overrides), VOCAB.size)


def _sc(model, z_loss: float, weight: float = 1.0) -> SpanCorruption:
    ctx = ObjectiveContext(name="span_corruption", vocab=VOCAB, input_length=24, model=model)
    return SpanCorruption(SpanCorruptionConfig(z_loss=z_loss, weight=weight), ctx)


def _sc_batch(obj: SpanCorruption, batch_size: int = 3):
    g = torch.Generator().manual_seed(0)
    original = torch.randint(3, VOCAB.last_sentinel_id, (batch_size, obj.chunk_length), generator=g)
    return obj.transform({"original": original}, torch.Generator().manual_seed(1))


def _sc_logits(model, batch) -> torch.Tensor:
    mask = batch["encoder_input"] != VOCAB.pad_id
    encoded = model.encode(batch["encoder_input"], mask)
    return model.lm_logits(model.decode(batch["decoder_input"], encoded, mask))


def test_span_corruption_logs_z_loss_on_its_own():
    model = _t5()
    obj = _sc(model, z_loss=1e-4, weight=10.0)
    batch = _sc_batch(obj)
    out = obj.loss(batch, SharedForward(model, batch, VOCAB.pad_id), ctx_for(obj, batch))
    logits = _sc_logits(model, batch)
    target = batch["decoder_target"]
    plain = F.cross_entropy(
        logits.flatten(0, 1), target.flatten(), ignore_index=VOCAB.pad_id, reduction="sum"
    )
    torch.testing.assert_close(out.loss.total, plain)  # loss/span_corruption stays the plain CE
    z_term = out.aux_losses["span_corruption_z"]
    valid = target != VOCAB.pad_id
    expected_z = (1e-4 * torch.logsumexp(logits, -1).square() * valid).sum()
    torch.testing.assert_close(z_term.total, expected_z)
    assert obj.loss_weights()["span_corruption_z"] == 10.0  # weighted by λ like L_SC
    assert torch.equal(z_term.count, out.loss.count)
    assert obj.aux_counts(batch) == {"span_corruption_z": obj.count(batch)}
    # z_loss = 0: no aux loss at all, the losses of a run stay what they were.
    off = _sc(model, z_loss=0.0)
    assert off.aux_counts(batch) == {}
    assert off.loss(batch, SharedForward(model, batch, VOCAB.pad_id), ctx_for(off, batch)).aux_losses == {}


def test_mlm_z_loss():
    model = _t5()
    obj = MLM(MLMConfig(z_loss=1e-3), ObjectiveContext(name="mlm", vocab=VOCAB, input_length=8, model=model))
    ids = torch.randint(3, 90, (2, 8), generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, ::3] = True
    batch = {"encoder_input": ids, "mlm_mask": mask, "mlm_labels": ids}
    forward = SharedForward(model, batch, VOCAB.pad_id)
    out = obj.loss(batch, forward, ctx_for(obj, batch))
    hidden = forward.encode()
    logits = model.lm_logits(hidden[mask])
    torch.testing.assert_close(out.loss.total, F.cross_entropy(logits, ids[mask], reduction="sum"))
    expected_z = 1e-3 * torch.logsumexp(logits, -1).square().sum()
    torch.testing.assert_close(out.aux_losses["mlm_z"].total, expected_z)
    assert set(obj.aux_counts(batch)) == {"mlm_z"}


@pytest.mark.parametrize(
    "key",
    ["objectives.span_corruption.z_loss", "objectives.rtd.generator_z_loss"],
)
def test_negative_z_loss_is_a_one_line_config_error(key):
    with pytest.raises(ConfigError) as err:
        load_config("spactor", [f"{key}=-0.1"])
    assert str(err.value).startswith(f"{key}: -0.1 —") and "\n" not in str(err.value)


def test_objectives_refuse_negative_z_loss_when_built_directly():
    with pytest.raises(ValueError, match=r"^objectives\.span_corruption\.z_loss: -1\.0 — must be >= 0"):
        _sc(_t5(), z_loss=-1.0)


def test_t5_recipes_default_to_t5s_z_loss():
    for recipe in ("sc", "quickstart", "spactor", "spactor_large", "spactor_anneal"):
        objectives = load_config(recipe, ["model.size=tiny"]).objectives
        assert objectives["span_corruption"].config.z_loss == 1e-4, recipe
    assert load_config("spactor", []).objectives["rtd"].config.generator_z_loss == 1e-4
    assert load_config("electra", []).objectives["rtd"].config.generator_z_loss == 0.0  # BERT-style


# --- memory: what backward keeps -------------------------------------------------------------


def saved_tensors(fn):
    """Every tensor autograd saves for backward while ``fn`` runs (through the pack hook)."""
    seen: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return result, seen


def test_span_corruption_loss_saves_no_fp32_logits_under_bf16():
    model = _t5()
    obj = _sc(model, z_loss=1e-4)
    batch = _sc_batch(obj)
    batch_size, targets = batch["decoder_target"].shape
    logits_numel = batch_size * targets * VOCAB.size

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return obj.loss(batch, SharedForward(model, batch, VOCAB.pad_id), ctx_for(obj, batch))

    out, saved = saved_tensors(step)
    vocab_sized = [t for t in saved if t.numel() == logits_numel and t.shape[-1] == VOCAB.size]
    fp32_logits = [t for t in vocab_sized if t.dtype == torch.float32]
    assert not fp32_logits, "fp32 (B, T, V) logits saved for backward"
    storages = {t.untyped_storage().data_ptr() for t in vocab_sized}
    assert len(storages) == 1 and vocab_sized[0].dtype == torch.bfloat16  # the logits, once, in bf16
    # What the previous F.cross_entropy(logits.float()) kept: an fp32 (B·T, V) log-softmax.
    logits = _sc_logits(model, batch)
    targets_flat = batch["decoder_target"].flatten()
    _, before = saved_tensors(lambda: F.cross_entropy(logits.float().flatten(0, 1), targets_flat))
    assert any(t.dtype == torch.float32 and t.numel() == logits_numel for t in before)
    (out.loss.total + out.aux_losses["span_corruption_z"].total).backward()
    assert model.token_embedding.weight.grad is not None
