"""The ``llama`` architecture: a :class:`LlamaModel` built from its config, starting from
Hugging Face ``LlamaForCausalLM`` weights when ``model.init_from`` names them.

A module of its own for the same reason as ``t5_plugin``: the converter imports the model.
"""

from __future__ import annotations

from spactor.architectures.llama import LlamaConfig, LlamaModel
from spactor.architectures.llama_hf import load_llama_hf_weights
from spactor.registry import ARCHITECTURES


@ARCHITECTURES.register("llama", LlamaConfig)
def build_llama(cfg: LlamaConfig, vocab_size: int) -> LlamaModel:
    """Llama-style decoder-only LM (RoPE, RMSNorm, SwiGLU, GQA); HF LlamaForCausalLM weights."""
    model = LlamaModel(cfg, cfg.vocab_size if cfg.vocab_size is not None else vocab_size)
    if cfg.init_from is not None:
        load_llama_hf_weights(model, cfg.init_from)
    return model
