"""The token cross-entropy every vocabulary loss uses (span corruption, the RTD
generator, ``mlm``), with T5's z-loss, in one pass and lean on memory.

``F.cross_entropy(logits.float(), ...)`` keeps an fp32 copy of the ``(N, V)`` log-softmax
for its backward: at T5-Base's 114 targets × 32,128 pieces that is 14.6 MB per sequence,
twice what the bf16 logits themselves take. :func:`token_cross_entropy` instead saves
only the logits as they are (in the compute dtype: the one ``(N, V)`` tensor that exists
anyway) and one fp32 log-partition per row. Its forward and backward walk the rows in
chunks of about 64 MiB of fp32, so the fp32 softmax never exists for more than a chunk;
accumulation is in fp32 whatever the logits' dtype. No logits are recomputed, so the
step's FLOPs do not change.

z-loss (Mesh TensorFlow / T5X, ``cross_entropy_with_logits`` in t5x/losses.py) adds
``z_loss · log_z²`` per token, ``log_z = logsumexp(logits)``, pushing the partition
function towards 1 for stability in bf16 at scale. The log-partition is already computed
for the cross-entropy, so the z term costs a square and a sum. It is returned unweighted
(Σ log_z²) so that objectives log it as its own loss and ``loss/<name>`` stays the plain
cross-entropy that papers report.

Accuracy (argmax hits) costs an extra pass over the logits; it is computed only when the
caller asks (``with_accuracy``, on logging steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from spactor.overrides import overridable

IGNORE_INDEX = -100  # torch's default: targets with this id contribute nothing
CHUNK_ELEMENTS = 1 << 24  # fp32 elements per chunk of rows (64 MiB)


@dataclass
class CrossEntropy:
    """Sums over the targets that are not ignored (fp32 scalars)."""

    total: torch.Tensor  # Σ −log softmax(logits)[target]
    z_total: torch.Tensor  # Σ logsumexp(logits)²; the z-loss is z_loss × this
    correct: torch.Tensor | None = None  # Σ [argmax == target], only when asked


def _working_dtype(logits: torch.Tensor) -> torch.dtype:
    # fp32 for bf16/fp16/fp32 logits; fp64 stays fp64 (gradient checks).
    return torch.promote_types(logits.dtype, torch.float32)


def _chunk_rows(vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(vocab, 1))


class _TokenCrossEntropy(torch.autograd.Function):
    """(Σ CE, Σ log_z²) of ``(N, V)`` logits; saves the logits, not an fp32 copy."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        work = _working_dtype(logits)
        rows = _chunk_rows(logits.shape[1])
        # One fused log-softmax per chunk (a single pass, where logsumexp is max, sub, exp,
        # sum, log, each over the chunk). −log p_t is the cross-entropy, and
        # log_z = x_t − log p_t the log-partition the z-loss and the backward need.
        neg_log_p = torch.cat([
            -torch.log_softmax(chunk.to(work), dim=-1).gather(1, chunk_targets[:, None]).squeeze(1)
            for chunk, chunk_targets in zip(logits.split(rows), targets.split(rows))
        ])
        picked = logits.gather(1, targets[:, None]).squeeze(1).to(work)
        log_z = picked + neg_log_p
        weights = valid.to(work)
        ce = (neg_log_p * weights).sum()
        z = (log_z.square() * weights).sum()
        ctx.save_for_backward(logits, targets, weights, log_z)
        return ce, z

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_ce: torch.Tensor | None, grad_z: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, None, None]:
        logits, targets, weights, log_z = ctx.saved_tensors
        work = log_z.dtype
        grad_ce = torch.zeros((), dtype=work, device=logits.device) if grad_ce is None else grad_ce.to(work)
        grad_z = torch.zeros((), dtype=work, device=logits.device) if grad_z is None else grad_z.to(work)
        # d/dlogits of w·(log_z − x_t) + w·g_z·log_z² (per row): softmax·w·(g_ce + 2 g_z log_z)
        # minus w·g_ce at the target.
        softmax_scale = weights * (grad_ce + 2.0 * grad_z * log_z)
        at_target = -(weights * grad_ce)
        grad = torch.empty_like(logits)
        rows = _chunk_rows(logits.shape[1])
        for start in range(0, logits.shape[0], rows):
            end = min(start + rows, logits.shape[0])
            # softmax = exp(x − log_z), computed in place: straight into the gradient when
            # it has the working dtype, else in one fp32 chunk cast on the way out. (On CPU
            # every fresh chunk-sized tensor costs its page faults: the out-of-place form,
            # three temporaries per chunk, made this backward 4x slower.)
            direct = grad.dtype == work
            part = grad[start:end] if direct else logits.new_empty((end - start, logits.shape[1]), dtype=work)
            torch.sub(logits[start:end], log_z[start:end, None], out=part)
            part.exp_().mul_(softmax_scale[start:end, None])
            part.scatter_add_(1, targets[start:end, None], at_target[start:end, None])
            if not direct:
                grad[start:end] = part
        return grad, None, None


@overridable  # a tracer that cannot see autograd Functions takes the unfused form below
def token_cross_entropy_sums(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ (log_z − logit[target]) and Σ log_z² over the ``valid`` rows of ``logits``
    ``(N, V)`` (``targets`` ``(N,)``, in range on every row), by the chunked autograd
    Function (the memory the module docstring describes)."""
    return _TokenCrossEntropy.apply(logits, targets, valid)


def unfused_token_cross_entropy_sums(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_cross_entropy_sums`' math in plain ops (autograd differentiates it,
    keeping fp32 ``(N, V)`` copies): what an op-level tracer such as fvcore can record."""
    work = _working_dtype(logits)
    log_z = torch.logsumexp(logits.to(work), dim=-1)
    picked = logits.gather(1, targets[:, None]).squeeze(1).to(work)
    weights = valid.to(work)
    return ((log_z - picked) * weights).sum(), (log_z.square() * weights).sum()


def token_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    with_accuracy: bool = False,
) -> CrossEntropy:
    """Summed token cross-entropy and Σ log_z² of ``logits`` ``(..., V)`` (any float dtype;
    the math is fp32) against ``targets`` ``(...)``; targets equal to ``ignore_index``
    count nothing. Backward saves ``logits`` and one fp32 value per row, nothing of size
    ``(N, V)`` in fp32."""
    flat = logits.reshape(-1, logits.shape[-1])
    flat_targets = targets.reshape(-1)
    valid = flat_targets != ignore_index
    safe_targets = torch.where(valid, flat_targets, torch.zeros_like(flat_targets))
    total, z_total = token_cross_entropy_sums(flat, safe_targets, valid)
    correct = None
    if with_accuracy:
        with torch.no_grad():
            correct = ((flat.argmax(dim=-1) == flat_targets) & valid).sum()
    return CrossEntropy(total, z_total, correct)
