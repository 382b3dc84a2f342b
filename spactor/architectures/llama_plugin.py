"""The ``llama`` architecture: a :class:`LlamaModel` built from its config, starting from
Hugging Face ``LlamaForCausalLM`` weights when ``model.init_from`` names them, and its
spec (the causal-LM FLOPs baseline and decoder-only fine-tuning come from its
capabilities; the Hugging Face exporter is given here).

A module of its own for the same reason as ``t5_plugin``: the converter imports the model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from spactor.architectures.base import ArchitectureSpec, Exporter
from spactor.architectures.hf_convert import t5_tokenizer_config
from spactor.architectures.llama import LlamaConfig, LlamaModel, llama_analytic_flops
from spactor.architectures.llama_hf import HF_ARCHITECTURE, load_llama_hf_weights, save_llama_pretrained
from spactor.registry import ARCHITECTURES


def _write_hf(model: nn.Module, out: Path, dtype: torch.dtype, metadata: dict[str, str]) -> list[str]:
    return save_llama_pretrained(model, out, dtype=dtype, metadata=metadata)  # type: ignore[arg-type]


HF_EXPORTER = Exporter(
    target=f"Hugging Face {HF_ARCHITECTURE}",
    write=_write_hf,
    tokenizer_config=lambda tokenizer, resolved: t5_tokenizer_config(tokenizer, resolved.cfg.data.input_length),
    describe=lambda model: f"llama {model.config.size}",
    load_hint=f"transformers.{HF_ARCHITECTURE}.from_pretrained({{out!r}})",
)
LLAMA_SPEC = ArchitectureSpec(
    exporters={"hf": HF_EXPORTER},
    analytic_flops=llama_analytic_flops,  # type: ignore[arg-type]
)


@ARCHITECTURES.register("llama", LlamaConfig, spec=LLAMA_SPEC)
def build_llama(cfg: LlamaConfig, vocab_size: int) -> LlamaModel:
    """Llama-style decoder-only LM (RoPE, RMSNorm, SwiGLU, GQA); HF LlamaForCausalLM weights."""
    model = LlamaModel(cfg, cfg.vocab_size if cfg.vocab_size is not None else vocab_size)
    if cfg.init_from is not None:
        load_llama_hf_weights(model, cfg.init_from)
    return model
