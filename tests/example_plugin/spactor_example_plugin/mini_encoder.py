"""``mini_encoder``: an architecture of its own, in one file, as a third-party plugin.

A small pre-LayerNorm bidirectional encoder — learned absolute positions, GELU feed-forward,
PyTorch's fused ``scaled_dot_product_attention``, a final LayerNorm and an output layer
tied to the token embedding — written against spactor's model protocol
(``spactor.architectures.base``) and nothing else of spactor's model code:

* ``CAPABILITIES = {ENCODE}``: it offers a bidirectional ``encode``; the config check
  refuses objectives that need more (span corruption's decoder) in one line.
* the protocol's members: ``embed``, ``encode``, ``lm_logits``, ``token_embedding``,
  ``hidden_size``, ``vocab_size``, ``blocks()`` (FSDP units, activation checkpointing,
  per-block compile).
* an :class:`ArchitectureSpec` at registration: what the runner's tools read (its FLOPs
  baseline is BERT's MLM, derived from ENCODE; the breakdown's stack is ``layers``;
  fine-tuning puts a classification head on it).

    spactor train mlm model.arch=mini_encoder model.size=tiny
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from spactor.architectures.base import CLASSIFICATION, ENCODE, ArchitectureSpec
from spactor.checks import CheckContext, fail, one_of
from spactor.registry import ARCHITECTURES

SIZES = {"tiny": (64, 2, 2, 256), "small": (256, 4, 4, 1024)}  # d_model, heads, layers, d_ff


@dataclass
class MiniEncoderConfig:
    size: str = "tiny"  # tiny | small
    dropout: float = 0.0
    max_positions: int = 512
    vocab_size: int | None = None  # None: the tokenizer's size

    def check(self, where: str, ctx: CheckContext) -> None:
        one_of(f"{where}.size", self.size, list(SIZES))
        if self.max_positions < ctx.input_length:
            fail(f"{where}.max_positions", self.max_positions, f"must be at least data.input_length ({ctx.input_length})")

    def hidden_size(self) -> int:
        return SIZES[self.size][0]


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads, self.d_kv, self.dropout = num_heads, d_model // num_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.num_heads, self.d_kv).permute(2, 0, 3, 1, 4)
        # mask: (B, 1, 1, L) bool, True = attend; None when there is no padding (fused kernels)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.out(out.transpose(1, 2).reshape(b, length, d))


class Block(nn.Module):
    def __init__(self, d_model: int, num_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, num_heads, dropout)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), mask))
        return x + self.drop(self.ffn(self.ffn_norm(x)))


class MiniEncoder(nn.Module):
    CAPABILITIES = frozenset({ENCODE})

    def __init__(self, cfg: MiniEncoderConfig, vocab_size: int) -> None:
        super().__init__()
        d_model, heads, layers, d_ff = SIZES[cfg.size]
        self.config, self.hidden_size, self.vocab_size = cfg, d_model, vocab_size
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(cfg.max_positions, d_model)
        self.layers = nn.ModuleList(Block(d_model, heads, d_ff, cfg.dropout) for _ in range(layers))
        self.final_norm = nn.LayerNorm(d_model)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        # Only nn.init calls, so the runner can build it on the meta device and replay them.
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(ids)

    def encode(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None = None,
               inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        x = x + self.position_embedding.weight[: x.shape[1]]
        mask = None if attention_mask is None else attention_mask[:, None, None, :]
        for block in self.layers:
            x = block(x, mask)
        return self.final_norm(x)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.token_embedding.weight)

    def blocks(self) -> list[nn.Module]:
        return list(self.layers)


# What the runner's tools read; the FLOPs baseline (BERT MLM) comes from ENCODE.
SPEC = ArchitectureSpec(stacks=("layers",), finetune=(CLASSIFICATION,))


@ARCHITECTURES.register("mini_encoder", MiniEncoderConfig, spec=SPEC)
def build_mini_encoder(cfg: MiniEncoderConfig, vocab_size: int) -> MiniEncoder:
    """A small pre-LN encoder (example third-party architecture)."""
    return MiniEncoder(cfg, cfg.vocab_size if cfg.vocab_size is not None else vocab_size)
