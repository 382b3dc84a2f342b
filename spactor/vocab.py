"""The token ids that objectives and the data pipeline agree on.

Built from the tokenizer (``spactor.data.tokenizer.t5_vocab``) and read by the objectives,
so it sits below both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# UL2's mode tokens take the padding rows right after [M] (``Vocab.mode_id``).
MODE_TOKENS = ("[R]", "[S]", "[X]")


@dataclass(frozen=True)
class Vocab:
    """Token-id facts the objectives need; built from the tokenizer."""

    size: int  # rows of the embedding (padded, e.g. 32128)
    pad_id: int = 0
    eos_id: int = 1
    unk_id: int = 2
    num_sentinels: int = 100
    first_sentinel_id: int = 32099  # <extra_id_0>; sentinel k is first_sentinel_id - k
    mask_id: int = 32100  # [M] for token-level masking; one of the padding rows in T5's vocabulary
    # The tokenizer's beginning-of-sequence piece, where it has one (T5's has none: None).
    # What a decoder-only objective starts a sequence with; no T5 objective reads it.
    bos_id: int | None = None

    def sentinel_id(self, k: int) -> int:
        return self.first_sentinel_id - k

    def mode_id(self, k: int) -> int:
        """Row of ``MODE_TOKENS[k]``; an objective using it checks it is below ``size``."""
        return self.mask_id + 1 + k

    @property
    def last_sentinel_id(self) -> int:
        return self.first_sentinel_id - self.num_sentinels + 1

    def is_special(self, ids: torch.Tensor) -> torch.Tensor:
        """True where ``ids`` are pad, EOS, sentinels or [M] (never candidates for masking)."""
        sentinel = (ids <= self.first_sentinel_id) & (ids >= self.last_sentinel_id)
        return (ids == self.pad_id) | (ids == self.eos_id) | (ids == self.mask_id) | sentinel

    def is_mode_token(self, ids: torch.Tensor) -> torch.Tensor:
        """True where ``ids`` are UL2's mode tokens. Kept out of ``is_special`` so the ids
        RTD's generator may sample (and so every existing run's losses) stay as they were;
        masking excludes both."""
        return (ids > self.mask_id) & (ids <= self.mask_id + len(MODE_TOKENS))
