"""Weight conversion between spactor's ``t5gemma`` and Hugging Face's
``T5GemmaForConditionalGeneration``.

spactor's module paths are T5Gemma's own (the table in ``spactor/architectures/t5gemma.py``'s
docstring), so a weight's Hugging Face name is its spactor name under ``model.``. The
one embedding spactor shares between encoder, decoder and head is three names there:
``model.encoder.embed_tokens`` and ``model.decoder.embed_tokens`` are written (two copies:
safetensors refuses shared storage) and ``lm_head.out_proj`` is left for HF to tie
(``tie_word_embeddings: true``). An import refuses a checkpoint whose two embeddings or
untied head differ: spactor has one.

The decoder starts from the pad id, as spactor's span corruption and T5 do, so
``bos_token_id`` (T5Gemma's decoder start) is written as the pad id.

* :func:`save_t5gemma_pretrained`: a directory ``T5GemmaForConditionalGeneration.from_pretrained`` loads.
* :func:`load_t5gemma_hf_weights`: ``model.init_from=hf:DIR``, after checking that
  ``DIR/config.json`` describes the configured model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from spactor.architectures.hf_convert import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    _plain_tensor,
    load_hf_checkpoint,
    save_hf_weights,
)
from spactor.architectures.t5gemma import T5GemmaConfig, T5GemmaModel, _sliding, resolve_t5gemma_dims

HF_ARCHITECTURE = "T5GemmaForConditionalGeneration"
PREFIX = "model."
EMBEDDINGS = ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight")
HEAD = "lm_head.out_proj.weight"
UNUSED_WINDOW = 4096  # HF builds a sliding mask even with no sliding layer: it needs a number


def t5gemma_to_hf_state_dict(model: T5GemmaModel) -> dict[str, torch.Tensor]:
    """``T5GemmaForConditionalGeneration`` weights of a spactor t5gemma, on the CPU."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key == "token_embedding.weight":
            embedding = _plain_tensor(value)
            out[EMBEDDINGS[0]], out[EMBEDDINGS[1]] = embedding, embedding.clone()
        else:
            out[PREFIX + key] = _plain_tensor(value)
    return out


def hf_to_t5gemma_state_dict(sd: dict[str, torch.Tensor], cfg: T5GemmaConfig) -> dict[str, torch.Tensor]:
    """spactor t5gemma weights from an HF T5Gemma state dict; ``ValueError`` for unknown
    keys, missing parameters, or embeddings spactor cannot hold in its one table."""
    embeddings = [sd.get(k) for k in EMBEDDINGS]
    present = [e for e in embeddings if e is not None]
    if not present:
        raise ValueError(f"the checkpoint has no {EMBEDDINGS[0]}")
    for other in [*present[1:], sd.get(HEAD)]:
        if other is not None and not torch.equal(other, present[0]):
            raise ValueError(
                "the checkpoint's encoder embedding, decoder embedding and lm head differ; "
                "spactor's t5gemma ties all three"
            )
    out: dict[str, torch.Tensor] = {"token_embedding.weight": present[0]}
    unknown = []
    for key, value in sd.items():
        if key in EMBEDDINGS or key == HEAD or key.endswith("inv_freq"):
            continue
        if key.startswith(PREFIX):
            out[key[len(PREFIX):]] = value
        else:
            unknown.append(key)
    with torch.device("meta"):
        expected = T5GemmaModel(cfg, present[0].shape[0]).state_dict().keys()
    missing, extra = sorted(set(expected) - set(out)), sorted(set(out) - set(expected)) + sorted(unknown)
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(PREFIX + k for k in missing[:8]))
        if extra:
            parts.append("unexpected " + ", ".join(extra[:8]))
        raise ValueError("the checkpoint does not match the configured t5gemma: " + "; ".join(parts))
    return out


def _number(value: float | None) -> float | int | None:
    # HF's config types query_pre_attn_scalar as an int: write integral values as ints.
    if value is None:
        return None
    return int(value) if float(value).is_integer() else float(value)


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _module_config(
    cfg: T5GemmaConfig, dims: dict[str, Any], layers: int, vocab_size: int, ids: dict[str, int | None]
) -> dict[str, Any]:
    scalar = dims["head_dim"] if cfg.query_pre_attn_scalar is None else cfg.query_pre_attn_scalar
    return {
        "model_type": "t5_gemma_module",
        "vocab_size": int(vocab_size),
        "hidden_size": dims["d_model"],
        "intermediate_size": dims["d_ff"],
        "num_hidden_layers": layers,
        "num_attention_heads": dims["num_heads"],
        "num_key_value_heads": dims["num_kv_heads"],
        "head_dim": dims["head_dim"],
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 8192,  # RoPE has no table; HF uses it only for its caches
        "initializer_range": float(cfg.init_std),
        "rms_norm_eps": float(cfg.norm_eps),
        "rope_theta": float(cfg.rope_theta),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        "attention_bias": False,
        "attention_dropout": float(cfg.attention_dropout),
        "query_pre_attn_scalar": _number(scalar),
        "sliding_window": cfg.sliding_window if cfg.sliding_window is not None else UNUSED_WINDOW,
        "layer_types": ["sliding_attention" if _sliding(cfg, i) else "full_attention" for i in range(layers)],
        "final_logit_softcapping": _float(cfg.final_logit_softcapping),
        "attn_logit_softcapping": _float(cfg.attn_logit_softcapping),
        "tie_word_embeddings": True,
        **ids,
    }


def hf_t5gemma_config(cfg: T5GemmaConfig, vocab_size: int, pad_id: int = 0, eos_id: int = 1) -> dict[str, Any]:
    """``config.json`` for ``T5GemmaForConditionalGeneration`` describing ``cfg``."""
    dims = resolve_t5gemma_dims(cfg)
    ids: dict[str, int | None] = {"pad_token_id": pad_id, "eos_token_id": eos_id, "bos_token_id": pad_id}
    return {
        "architectures": [HF_ARCHITECTURE],
        "model_type": "t5gemma",
        "is_encoder_decoder": True,
        "encoder": _module_config(cfg, dims, dims["num_layers"], vocab_size, ids),
        "decoder": _module_config(cfg, dims, dims["num_decoder_layers"], vocab_size, ids),
        "vocab_size": int(vocab_size),
        "dropout_rate": float(cfg.dropout),
        "attention_dropout": float(cfg.attention_dropout),
        "classifier_dropout_rate": 0.0,
        "tie_word_embeddings": True,
        "decoder_start_token_id": pad_id,
        **ids,
    }


_COMPARED = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "hidden_activation", "rms_norm_eps", "query_pre_attn_scalar", "final_logit_softcapping",
    "attn_logit_softcapping", "vocab_size",
)  # fmt: skip


def check_hf_t5gemma_config(config: dict[str, Any], cfg: T5GemmaConfig, vocab_size: int) -> list[str]:
    """Differences between an HF T5Gemma ``config.json`` and ``cfg``, as
    ``"encoder.name: checkpoint X, model Y"`` (empty: they describe the same model)."""
    ours = hf_t5gemma_config(cfg, vocab_size)
    problems = []
    if not config.get("tie_word_embeddings", True):
        problems.append("tie_word_embeddings: checkpoint False, model True (spactor's t5gemma ties its head)")
    for stack in ("encoder", "decoder"):
        theirs = dict(config.get(stack) or {})
        mine = ours[stack]
        theirs.setdefault("vocab_size", config.get("vocab_size"))
        rope = theirs.get("rope_parameters") or {}
        if isinstance(rope, dict) and rope.get("rope_type", "default") != "default":
            problems.append(f"{stack}.rope_type: checkpoint {rope.get('rope_type')!r}, model 'default'")
        theta = rope.get("rope_theta", theirs.get("rope_theta", 10000.0)) if isinstance(rope, dict) else None
        if theta is None or float(theta) != mine["rope_theta"]:
            problems.append(f"{stack}.rope_theta: checkpoint {theta!r}, model {mine['rope_theta']!r}")
        for name in _COMPARED:
            a, b = theirs.get(name), mine[name]
            if (a is None) != (b is None) or (a is not None and a != b and not _close(a, b)):
                problems.append(f"{stack}.{name}: checkpoint {a!r}, model {b!r}")
        kinds = theirs.get("layer_types") or []
        if kinds != mine["layer_types"] or (
            "sliding_attention" in kinds and theirs.get("sliding_window") != mine["sliding_window"]
        ):
            problems.append(
                f"{stack}.layer_types/sliding_window: checkpoint {theirs.get('sliding_window')} over "
                f"{kinds.count('sliding_attention')} sliding layers, model "
                f"{cfg.sliding_window} over {mine['layer_types'].count('sliding_attention')}"
            )
        if theirs.get("attention_bias"):
            problems.append(f"{stack}.attention_bias: checkpoint True, model False")
    return problems


def _close(a: Any, b: Any) -> bool:
    try:
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    except (TypeError, ValueError):
        return False


def save_t5gemma_pretrained(
    model: T5GemmaModel, out: Path, dtype: torch.dtype = torch.float32, metadata: dict[str, str] | None = None
) -> list[str]:
    """``out/config.json`` + ``out/model.safetensors``; returns the file names."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to(dtype) for k, v in t5gemma_to_hf_state_dict(model).items()}
    config = hf_t5gemma_config(model.config, model.vocab_size)
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    save_hf_weights(tensors, out / WEIGHTS_FILE, metadata)
    return [CONFIG_FILE, WEIGHTS_FILE]


def load_t5gemma_hf_weights(model: T5GemmaModel, spec: str) -> Path:
    """``model.init_from=hf:PATH`` for t5gemma (``spactor.architectures.hf_convert.load_hf_checkpoint``)."""
    return load_hf_checkpoint(
        model, spec, model_type="t5gemma", check_config=check_hf_t5gemma_config, to_state_dict=hf_to_t5gemma_state_dict,
        hint="set model.size/d_model/num_kv_heads/... (data.tokenizer for the vocabulary) to match it")
