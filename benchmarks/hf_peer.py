"""The peer: Hugging Face transformers' ``T5ForConditionalGeneration`` with the same
dimensions, batch, lengths, dtype and optimizer as spactor's span-corruption step.

Built from a config (no download). The batch is spactor's own span-corrupted batch, so
both models see the same token ids and shapes (input 512 → target 114 at T5's
settings); HF's step is the textbook one: forward with ``labels`` (mean cross-entropy
over the real targets), backward, ``optimizer.step()``, ``zero_grad``. The optimizer is
the recipe's, built by spactor's registry for both, so the comparison is of the model
and the step, not of two Adafactors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from spactor.architectures.hf_convert import hf_config
from spactor.config import Resolved
from spactor.objectives.base import Batch, Vocab
from spactor.registry import OPTIMIZERS


def hf_t5_for(resolved: Resolved, vocab: Vocab) -> nn.Module:
    """``T5ForConditionalGeneration`` with the recipe's T5 dimensions (v1.0: ReLU, tied
    head; v1.1: gated-GELU, untied), dropout and vocabulary."""
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = resolved.model.config
    rows = cfg.vocab_size if cfg.vocab_size is not None else vocab.size
    # The config.json `spactor export` writes for the same model; no KV cache in training.
    config = T5Config.from_dict({**hf_config(cfg, rows, vocab.pad_id, vocab.eos_id), "use_cache": False})
    return T5ForConditionalGeneration(config)


def hf_inputs(batch: Batch, vocab: Vocab) -> dict[str, torch.Tensor]:
    """spactor's span-corrupted batch in HF's argument names; padded targets ignored."""
    labels = batch["decoder_target"].masked_fill(batch["decoder_target"] == vocab.pad_id, -100)
    return {
        "input_ids": batch["encoder_input"],
        "attention_mask": (batch["encoder_input"] != vocab.pad_id).long(),
        "decoder_input_ids": batch["decoder_input"],
        "labels": labels,
    }


def hf_train_step(
    model: nn.Module,
    resolved: Resolved,
    inputs: dict[str, torch.Tensor],
    amp_dtype: torch.dtype | None,
) -> Callable[[], torch.Tensor]:
    """One optimizer step of ``model`` on ``inputs`` (returns the loss, still on the
    device), with the recipe's optimizer and gradient clipping."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = OPTIMIZERS.get(resolved.optimizer.type).factory(resolved.optimizer.config, params)
    clip = resolved.cfg.trainer.clip_grad_norm
    device = inputs["input_ids"].device

    def step() -> torch.Tensor:
        amp: Any = (
            torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
        )
        with amp:
            loss = model(**inputs).loss
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step
