"""The ``t5`` architecture: a :class:`T5Model` built from its config, starting from Hugging
Face weights when ``model.init_from`` names them, and its spec (the runner's view of it:
span corruption as the FLOPs baseline, text-to-text fine-tuning, the Hugging Face exporter).

The builder has a module of its own because the weight converter (``hf_convert``) imports
the model module; with the builder there the two would import each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from spactor.architectures.base import TEXT_TO_TEXT, ArchitectureSpec, BaselineObjective, Exporter
from spactor.architectures.hf_convert import load_hf_weights, save_hf_pretrained, t5_tokenizer_config
from spactor.architectures.t5 import T5Config, T5Model, t5_analytic_flops, t5_block_roles
from spactor.registry import ARCHITECTURES


def _write_hf(model: nn.Module, out: Path, dtype: torch.dtype, metadata: dict[str, str]) -> list[str]:
    return save_hf_pretrained(model, out, dtype=dtype, metadata=metadata)  # type: ignore[arg-type]


def _t5_tokenizer_config(tokenizer: Any, resolved: Any) -> dict[str, Any]:
    return t5_tokenizer_config(tokenizer, resolved.cfg.data.input_length)


HF_EXPORTER = Exporter(
    target="Hugging Face T5ForConditionalGeneration",
    write=_write_hf,
    tokenizer_config=_t5_tokenizer_config,
    describe=lambda model: f"T5 v{model.config.version}",
    load_hint="transformers.T5ForConditionalGeneration.from_pretrained({out!r})",
)

T5_SPEC = ArchitectureSpec(
    baseline=(BaselineObjective("span_corruption"),),  # with the recipe's settings
    stacks=("encoder", "decoder"),
    finetune=(TEXT_TO_TEXT,),
    exporters={"hf": HF_EXPORTER},
    block_roles=t5_block_roles,  # type: ignore[arg-type]
    analytic_flops=t5_analytic_flops,  # type: ignore[arg-type]
)


@ARCHITECTURES.register("t5", T5Config, spec=T5_SPEC)
def build_t5(cfg: T5Config, vocab_size: int) -> T5Model:
    """T5 v1.0/v1.1 encoder-decoder (SpacTor's discriminator, plain T5 span corruption)."""
    model = T5Model(cfg, cfg.vocab_size if cfg.vocab_size is not None else vocab_size)
    if cfg.init_from is not None:
        load_hf_weights(model, cfg.init_from)
    return model
