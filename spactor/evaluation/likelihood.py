"""Zero-shot sentence scores: a text's log-likelihood under a pre-trained model, each
architecture family scored the way it was trained to predict tokens (as BabyLM's
evaluation pipeline scores BLiMP's minimal pairs):

* a causal decoder (``CAUSAL_LM``): the sum of its next-token log-probabilities, the first
  token conditioned on a start token (BOS where the vocabulary has one, else EOS: the
  separator packed chunks put before a document);
* an encoder-decoder (``ENCODE`` + ``DECODE``): span-corruption pseudo-log-likelihood,
  each token in turn as the one noise span (``a b <s0> d e </s>`` → ``<s0> c <s1> </s>``,
  T5's layout for a single span), scored by the decoder at the token's place;
* an encoder with a trained MLM head (``ENCODE``): masked-LM pseudo-log-likelihood, each
  token in turn replaced by ``[M]`` and scored by ``lm_logits`` at its position.

Which family a model is comes from its declared capabilities, never its name. The score
is a sum over the text's tokens, so two sentences of the same words (a minimal pair made
by reordering) compare fairly. Batched: the PLL families build one row per token and
score them ``batch_rows`` at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from spactor.architectures.base import CAUSAL_LM, DECODE, ENCODE, capabilities_of
from spactor.vocab import Vocab

CAUSAL = "causal_lm"  # the family names a result records
SPAN_PLL = "span_corruption_pll"
MLM_PLL = "mlm_pll"


def likelihood_family(model: Any) -> str:
    """How ``model`` scores a text, from its capabilities."""
    caps = capabilities_of(model)
    if CAUSAL_LM in caps:
        return CAUSAL
    if {ENCODE, DECODE} <= caps:
        return SPAN_PLL
    if ENCODE in caps:
        return MLM_PLL
    raise ValueError(f"{type(model).__name__} offers none of the passes zero-shot scoring uses "
                     f"(causal_lm, encode + decode, encode); it declares {sorted(caps) or 'none'}")


@torch.no_grad()
def text_log_likelihoods(model: Any, vocab: Vocab, texts: Sequence[Sequence[int]], *,
                         batch_rows: int = 64, device: torch.device | str = "cpu",
                         family: str | None = None) -> list[float]:
    """The log-likelihood (nats, summed over tokens) of each token-id list in ``texts``."""
    family = family or likelihood_family(model)
    scorer: dict[str, Callable[..., list[float]]] = {CAUSAL: _causal, SPAN_PLL: _span_pll, MLM_PLL: _mlm_pll}
    if family not in scorer:
        raise ValueError(f"unknown likelihood family {family!r}; valid: {', '.join(scorer)}")
    was_training = model.training
    model.eval()
    try:
        return scorer[family](model, vocab, [list(t) for t in texts], batch_rows, torch.device(device))
    finally:
        model.train(was_training)


def _padded(rows: list[list[int]], pad: int, device: torch.device) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long, device=device)


def _gather_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _causal(model: Any, vocab: Vocab, texts: list[list[int]], batch_rows: int, device: torch.device) -> list[float]:
    start = getattr(vocab, "bos_id", None)
    start = vocab.eos_id if start is None else start
    out = []
    for i in range(0, len(texts), batch_rows):
        chunk = texts[i:i + batch_rows]
        ids = _padded([[start, *t] for t in chunk], vocab.pad_id, device)
        lengths = torch.tensor([len(t) for t in chunk], device=device)
        positions = torch.arange(ids.shape[1], device=device)
        real = positions[None, :] <= lengths[:, None]  # the start token and the text
        hidden = model.causal(ids, attention_mask=real)
        scores = _gather_log_probs(model.lm_logits(hidden[:, :-1]), ids[:, 1:])
        scores = scores.masked_fill(~real[:, 1:], 0.0)
        out.extend(scores.sum(dim=1).tolist())
    return out


def _rows_per_token(texts: list[list[int]]) -> list[tuple[int, int]]:
    """``(text index, token position)`` for every token of every text."""
    return [(t, p) for t, text in enumerate(texts) for p in range(len(text))]


def _sum_by_text(texts: list[list[int]], rows: list[tuple[int, int]], scores: list[float]) -> list[float]:
    totals = [0.0] * len(texts)
    for (t, _), s in zip(rows, scores):
        totals[t] += s
    return totals


def _span_pll(model: Any, vocab: Vocab, texts: list[list[int]], batch_rows: int, device: torch.device) -> list[float]:
    s0, s1 = vocab.sentinel_id(0), vocab.sentinel_id(1)
    rows = _rows_per_token(texts)
    scores: list[float] = []
    for i in range(0, len(rows), batch_rows):
        chunk = rows[i:i + batch_rows]
        enc, tgt = [], []
        for t, p in chunk:
            text = texts[t]
            enc.append([*text[:p], s0, *text[p + 1:], vocab.eos_id])
            tgt.append([s0, text[p], *([s1] if p + 1 < len(text) else []), vocab.eos_id])
        enc_ids, tgt_ids = _padded(enc, vocab.pad_id, device), _padded(tgt, vocab.pad_id, device)
        dec_in = F.pad(tgt_ids[:, :-1], (1, 0), value=vocab.pad_id)  # shifted right, as in training
        enc_mask = enc_ids != vocab.pad_id
        hidden = model.decode(dec_in, model.encode(enc_ids, attention_mask=enc_mask), enc_mask)
        logits = model.lm_logits(hidden[:, 1])  # the position that predicts the span's token
        scores.extend(_gather_log_probs(logits, tgt_ids[:, 1]).tolist())
    return _sum_by_text(texts, rows, scores)


def _mlm_pll(model: Any, vocab: Vocab, texts: list[list[int]], batch_rows: int, device: torch.device) -> list[float]:
    rows = _rows_per_token(texts)
    scores: list[float] = []
    for i in range(0, len(rows), batch_rows):
        chunk = rows[i:i + batch_rows]
        masked = []
        for t, p in chunk:
            text = list(texts[t])
            text[p] = vocab.mask_id
            masked.append(text)
        ids = _padded(masked, vocab.pad_id, device)
        hidden = model.encode(ids, attention_mask=ids != vocab.pad_id)
        positions = torch.tensor([p for _, p in chunk], device=device)
        at = hidden[torch.arange(len(chunk), device=device), positions]
        targets = torch.tensor([texts[t][p] for t, p in chunk], device=device)
        scores.extend(_gather_log_probs(model.lm_logits(at), targets).tolist())
    return _sum_by_text(texts, rows, scores)
