"""The ``t5gemma`` architecture: a :class:`T5GemmaModel` built from its config, starting
from Hugging Face ``T5GemmaForConditionalGeneration`` weights when ``model.init_from``
names them, and its spec (span corruption as the FLOPs baseline, text-to-text
fine-tuning, the memory estimate's block roles, the Hugging Face exporter).

A module of its own for the same reason as ``t5_plugin``: the converter imports the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from spactor.architectures.base import TEXT_TO_TEXT, ArchitectureSpec, BaselineObjective, Exporter
from spactor.architectures.hf_convert import t5_tokenizer_config
from spactor.architectures.t5gemma import (
    T5GemmaConfig,
    T5GemmaModel,
    t5gemma_analytic_flops,
    t5gemma_block_roles,
)
from spactor.architectures.t5gemma_hf import HF_ARCHITECTURE, load_t5gemma_hf_weights, save_t5gemma_pretrained
from spactor.registry import ARCHITECTURES


def _write_hf(model: nn.Module, out: Path, dtype: torch.dtype, metadata: dict[str, str]) -> list[str]:
    return save_t5gemma_pretrained(model, out, dtype=dtype, metadata=metadata)  # type: ignore[arg-type]


def _tokenizer_config(tokenizer: Any, resolved: Any) -> dict[str, Any]:
    return t5_tokenizer_config(tokenizer, resolved.cfg.data.input_length)


HF_EXPORTER = Exporter(
    target=f"Hugging Face {HF_ARCHITECTURE}",
    write=_write_hf,
    tokenizer_config=_tokenizer_config,
    describe=lambda model: f"t5gemma {model.config.size}",
    load_hint=f"transformers.{HF_ARCHITECTURE}.from_pretrained({{out!r}})",
)

T5GEMMA_SPEC = ArchitectureSpec(
    baseline=(BaselineObjective("span_corruption"),),  # with the recipe's settings
    stacks=("encoder", "decoder"),
    finetune=(TEXT_TO_TEXT,),
    exporters={"hf": HF_EXPORTER},
    block_roles=t5gemma_block_roles,  # type: ignore[arg-type]
    score_sized_masks=False,  # RoPE: no position bias, masks only where there is padding
    analytic_flops=t5gemma_analytic_flops,  # type: ignore[arg-type]
)


@ARCHITECTURES.register("t5gemma", T5GemmaConfig, spec=T5GEMMA_SPEC)
def build_t5gemma(cfg: T5GemmaConfig, vocab_size: int) -> T5GemmaModel:
    """T5Gemma-style encoder-decoder (RoPE, GQA, GeGLU, Gemma norms); HF T5Gemma weights."""
    model = T5GemmaModel(cfg, cfg.vocab_size if cfg.vocab_size is not None else vocab_size)
    if cfg.init_from is not None:
        load_t5gemma_hf_weights(model, cfg.init_from)
    return model
