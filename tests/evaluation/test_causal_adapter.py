"""The ``causal_text`` fine-tuning adapter of decoder-only models: the loss counts the
target tokens only, and the batched greedy continuation on one padded buffer gives what
row-by-row generation on unpadded sequences gives — with a causal model and with one
whose input is bidirectional (``prefix_lm``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spactor.architectures.base import CAUSAL_LM, CAUSAL_TEXT, PREFIX_LM, ArchitectureSpec
from spactor.evaluation.finetune import FinetuneConfig, Finetuner
from spactor.tasks.base import Example, Task

V, D = 512 + 128, 32


class TinyDecoder(nn.Module):
    """One attention layer; with ``prefix`` positions before ``prefix_length`` see the
    whole prefix."""

    def __init__(self, prefix: bool) -> None:
        super().__init__()
        self.CAPABILITIES = frozenset({CAUSAL_LM, PREFIX_LM} if prefix else {CAUSAL_LM})
        self.hidden_size, self.vocab_size = D, V
        self.token_embedding = nn.Embedding(V, D)
        self.positions = nn.Embedding(128, D)
        self.qkv, self.out = nn.Linear(D, 3 * D), nn.Linear(D, D)

    def causal(self, ids, attention_mask=None, prefix_length=None):
        length = ids.shape[1]
        x = self.token_embedding(ids) + self.positions.weight[:length]
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        i = torch.arange(length)
        allowed = (i[None, :] <= i[:, None])[None]  # (1, L, L)
        if prefix_length is not None:
            both = (i[None, None, :] < prefix_length[:, None, None]) & (i[None, :, None] < prefix_length[:, None, None])
            allowed = allowed | both
        return x + self.out(F.scaled_dot_product_attention(q, k, v, attn_mask=allowed))

    def lm_logits(self, hidden):
        return hidden @ self.token_embedding.weight.T

    def blocks(self):
        return []


def tuner(small_tokenizer, prefix: bool, steps: int = 4) -> Finetuner:
    torch.manual_seed(0)
    examples = [Example(f"is {w} a word", "yes" if len(w) % 2 else "no")
                for w in ("print", "len", "list", "module", "class", "import", "yield", "await")]
    task = Task("toy", "classification", "accuracy", examples[:6], examples[6:])
    cfg = FinetuneConfig(steps=steps, batch_size=4, max_input_length=16, max_target_length=5, lr=3e-3)
    spec = ArchitectureSpec(finetune=(CAUSAL_TEXT,))
    return Finetuner(TinyDecoder(prefix), task, small_tokenizer, cfg, torch.device("cpu"), 0, spec=spec)


@pytest.mark.parametrize("prefix", [False, True])
def test_loss_counts_the_target_tokens_only(small_tokenizer, prefix):
    t = tuner(small_tokenizer, prefix)
    inputs, targets = [[5, 6, 7, 1], [8, 1]], [[9, 10, 1], [11, 1]]
    expected, count = 0.0, 0
    for a, b in zip(inputs, targets):  # one unpadded row at a time
        seq = torch.tensor([a + b])
        prefix_length = torch.tensor([len(a)]) if prefix else None
        logits = t.model.lm_logits(t.model.causal(seq[:, :-1], None, prefix_length))[0]
        expected += F.cross_entropy(logits[len(a) - 1:], seq[0, len(a):], reduction="sum").item()
        count += len(b)
    assert t.causal_loss(inputs, targets).item() == pytest.approx(expected / count, rel=1e-5)


@pytest.mark.parametrize("prefix", [False, True])
def test_batched_greedy_continuation_is_row_by_row_generation(small_tokenizer, prefix):
    t = tuner(small_tokenizer, prefix)
    t.model.eval()
    inputs = [[5, 6, 7, 8, 9, 1], [10, 1], [11, 12, 13, 1]]
    with torch.no_grad():
        got = t.continue_greedily(inputs)
        for row, text in zip(inputs, got):
            seq = list(row)
            for _ in range(t.cfg.max_target_length):
                prefix_length = torch.tensor([len(row)]) if prefix else None
                hidden = t.model.causal(torch.tensor([seq]), None, prefix_length)[0, -1]
                seq.append(int(t.model.lm_logits(hidden).argmax()))
            new = seq[len(row):]
            new = new[: new.index(t.eos)] if t.eos in new else new
            assert text == small_tokenizer.decode(new).strip()


def test_a_decoder_only_model_fine_tunes_and_predicts(small_tokenizer):
    t = tuner(small_tokenizer, prefix=False, steps=20)
    losses = t.train()
    assert losses[-1] < losses[0]
    predictions = t.predict()
    assert len(predictions) == 2 and all(isinstance(p, str) for p in predictions)
