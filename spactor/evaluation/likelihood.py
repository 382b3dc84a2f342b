"""Zero-shot sentence scores: a text's log-likelihood under a pre-trained model, each
architecture family scored the way it was trained to predict tokens (as BabyLM's
evaluation pipeline scores BLiMP's minimal pairs):

* a causal decoder (``CAUSAL_LM``): the sum of its next-token log-probabilities, the first
  token conditioned on a start token (BOS where the vocabulary has one, else EOS: the
  separator packed chunks put before a document);
* an encoder-decoder (``ENCODE`` + ``DECODE``): span-corruption pseudo-log-likelihood,
  each word in turn as the one noise span (``a b <s0> d e </s>`` → ``<s0> c <s1> </s>``,
  T5's layout for a single span), its tokens scored by the decoder;
* an encoder with a trained MLM head (``ENCODE``): masked-LM pseudo-log-likelihood, each
  word's tokens in turn replaced by ``[M]`` and scored by ``lm_logits`` at their positions;
* an ELECTRA-style discriminator (``ENCODE`` and a replaced-token-detection head, whose
  language-model head was never trained): the sum over the text's tokens of
  log P(original), read in one pass over the unmasked text (``token_scorer``: the
  run's RTD head, ``spactor.evaluation.zero_shot`` finds it).

The pseudo-log-likelihood families hide whole words (``spans``, :func:`word_spans`) where
the caller gives them, else single tokens. Measured on a tiny T5 after 1,000 SC steps
(600 ``pydoc_pairs``): whole words 0.655 against random inits' 0.49 and 0.51; single
tokens 0.583 against 0.548 and 0.472 — a hidden subword beside its visible siblings is
nearly free to predict in a good and a bad sentence alike.

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
DISCRIMINATOR = "discriminator_original"

# hidden states (B, L, D) -> log P(original) per position (B, L): an RTD head's scores
TokenScorer = Callable[[torch.Tensor], torch.Tensor]


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
                         family: str | None = None, spans: Sequence[Sequence[tuple[int, int]]] | None = None,
                         token_scorer: TokenScorer | None = None) -> list[float]:
    """The log-likelihood (nats, summed over tokens) of each token-id list in ``texts``.
    ``spans``: per text, the ``[start, end)`` token ranges the pseudo-log-likelihood
    families hide one at a time (:func:`word_spans`: whole words); default: each token.
    A causal model reads every token in order and ignores them. ``token_scorer`` (an RTD
    head's log P(original)) selects the discriminator family for an encoder."""
    family = family or (DISCRIMINATOR if token_scorer is not None else likelihood_family(model))
    if family == DISCRIMINATOR and token_scorer is None:
        raise ValueError("the discriminator family needs a token_scorer (the run's RTD head)")
    scorer: dict[str, Callable[..., list[float]]] = {CAUSAL: _causal, SPAN_PLL: _span_pll, MLM_PLL: _mlm_pll,
                                                     DISCRIMINATOR: _discriminator}
    if family not in scorer:
        raise ValueError(f"unknown likelihood family {family!r}; valid: {', '.join(scorer)}")
    was_training = model.training
    model.eval()
    try:
        texts = [list(t) for t in texts]
        if family == CAUSAL:
            return _causal(model, vocab, texts, batch_rows, torch.device(device))
        if family == DISCRIMINATOR:
            return _discriminator(model, vocab, texts, batch_rows, torch.device(device), token_scorer)
        return scorer[family](model, vocab, texts, batch_rows, torch.device(device), spans)
    finally:
        model.train(was_training)


def word_spans(ids: Sequence[int], starts_word: Callable[[int], bool]) -> list[tuple[int, int]]:
    """``[start, end)`` ranges of whole words in ``ids``; ``starts_word(id)``: the piece
    opens a word (SentencePiece's ``▁``). Hiding one subword of a word while its other
    pieces stay visible makes the hidden piece nearly free to predict, in a good sentence
    and a bad one alike; hiding the whole word scores what the sentence says (the
    word-level PLL of Kauf & Ivanova, 2023)."""
    spans: list[tuple[int, int]] = []
    for p, token in enumerate(ids):
        if p == 0 or starts_word(token):
            spans.append((p, p + 1))
        else:
            spans[-1] = (spans[-1][0], p + 1)
    return spans


def _padded(rows: list[list[int]], pad: int, device: torch.device) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long, device=device)


def _gather_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _discriminator(model: Any, vocab: Vocab, texts: list[list[int]], batch_rows: int, device: torch.device,
                   token_scorer: TokenScorer) -> list[float]:
    out = []
    for i in range(0, len(texts), batch_rows):
        ids = _padded(texts[i:i + batch_rows], vocab.pad_id, device)
        real = ids != vocab.pad_id
        scores = token_scorer(model.encode(ids, attention_mask=real)).float().masked_fill(~real, 0.0)
        out.extend(scores.sum(dim=1).tolist())
    return out


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


Spans = Sequence[Sequence[tuple[int, int]]]


def _rows(texts: list[list[int]], spans: Spans | None) -> list[tuple[int, int, int]]:
    """``(text index, start, end)`` for every span of every text (default: each token)."""
    if spans is None:
        return [(t, p, p + 1) for t, text in enumerate(texts) for p in range(len(text))]
    return [(t, start, end) for t, text_spans in enumerate(spans) for start, end in text_spans]


def _sum_by_text(texts: list[list[int]], rows: list[tuple[int, int, int]], scores: list[float]) -> list[float]:
    totals = [0.0] * len(texts)
    for (t, _, _), s in zip(rows, scores):
        totals[t] += s
    return totals


def _span_pll(model: Any, vocab: Vocab, texts: list[list[int]], batch_rows: int, device: torch.device,
              spans: Spans | None = None) -> list[float]:
    s0, s1 = vocab.sentinel_id(0), vocab.sentinel_id(1)
    rows = _rows(texts, spans)
    scores: list[float] = []
    for i in range(0, len(rows), batch_rows):
        chunk = rows[i:i + batch_rows]
        enc, tgt = [], []
        for t, start, end in chunk:
            text = texts[t]
            enc.append([*text[:start], s0, *text[end:], vocab.eos_id])
            tgt.append([s0, *text[start:end], *([s1] if end < len(text) else []), vocab.eos_id])
        enc_ids, tgt_ids = _padded(enc, vocab.pad_id, device), _padded(tgt, vocab.pad_id, device)
        dec_in = F.pad(tgt_ids[:, :-1], (1, 0), value=vocab.pad_id)  # shifted right, as in training
        enc_mask = enc_ids != vocab.pad_id
        hidden = model.decode(dec_in, model.encode(enc_ids, attention_mask=enc_mask), enc_mask)
        width = max(end - start for _, start, end in chunk)
        # Positions 1..width predict the span's tokens (position 0 predicts its sentinel).
        log_probs = _gather_log_probs(model.lm_logits(hidden[:, 1:1 + width]), tgt_ids[:, 1:1 + width])
        lengths = torch.tensor([end - start for _, start, end in chunk], device=device)
        inside = torch.arange(width, device=device)[None, :] < lengths[:, None]
        scores.extend(log_probs.masked_fill(~inside, 0.0).sum(dim=1).tolist())
    return _sum_by_text(texts, rows, scores)


def _mlm_pll(model: Any, vocab: Vocab, texts: list[list[int]], batch_rows: int, device: torch.device,
             spans: Spans | None = None) -> list[float]:
    rows = _rows(texts, spans)
    scores: list[float] = []
    for i in range(0, len(rows), batch_rows):
        chunk = rows[i:i + batch_rows]
        masked = []
        for t, start, end in chunk:
            text = list(texts[t])
            text[start:end] = [vocab.mask_id] * (end - start)
            masked.append(text)
        ids = _padded(masked, vocab.pad_id, device)
        log_probs = F.log_softmax(model.lm_logits(model.encode(ids, attention_mask=ids != vocab.pad_id)).float(), -1)
        for r, (t, start, end) in enumerate(chunk):
            positions = torch.arange(start, end, device=device)
            targets = torch.tensor(texts[t][start:end], device=device)
            scores.append(log_probs[r, positions, targets].sum().item())
    return _sum_by_text(texts, rows, scores)
