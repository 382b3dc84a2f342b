"""Weight conversion between spactor's ``llama`` and Hugging Face's ``LlamaForCausalLM``.

The two compute the same function (RoPE in the ``rotate_half`` layout, RMSNorm in fp32
with the weight applied after the cast, SwiGLU, grouped-query attention, scores scaled
by ``head_dim**-0.5``); parameter names differ by a renaming (:data:`_RULES`, the table
in ``spactor/architectures/llama.py``'s docstring). A tied model writes the embedding
once (``model.embed_tokens.weight``) and says ``tie_word_embeddings: true``; HF re-ties
``lm_head`` on load. Neither side scales a tied head.

* :func:`save_llama_pretrained` / :func:`export_hf`: a directory that
  ``LlamaForCausalLM.from_pretrained`` (and, with a tokenizer, ``AutoTokenizer``) loads.
* :func:`load_llama_hf_weights`: ``model.init_from=hf:DIR`` for ``llama``, after checking
  that ``DIR/config.json`` describes the configured model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from spactor.architectures.hf_convert import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    KeyMap,
    _plain_tensor,
    load_hf_checkpoint,
    save_hf_weights,
)
from spactor.architectures.llama import LlamaConfig, LlamaModel, resolve_llama_dims

HF_ARCHITECTURE = "LlamaForCausalLM"
TOKENIZER_FILE = "spiece.model"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

_RULES: tuple[tuple[str, str], ...] = (
    ("token_embedding.weight", "model.embed_tokens.weight"),
    ("final_norm.weight", "model.norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
    ("layers.{n}.attn_norm.weight", "model.layers.{n}.input_layernorm.weight"),
    ("layers.{n}.ffn_norm.weight", "model.layers.{n}.post_attention_layernorm.weight"),
    ("layers.{n}.attn.{a}.weight", "model.layers.{n}.self_attn.{a}.weight"),
    ("layers.{n}.ffn.{f}.weight", "model.layers.{n}.mlp.{f}.weight"),
)
LLAMA_KEYS = KeyMap(_RULES, {"n": r"\d+", "a": r"[qkvo]_proj", "f": r"gate_proj|up_proj|down_proj"}, "llama")


def spactor_to_hf_key(key: str) -> str:
    """``layers.3.ffn.up_proj.weight`` → ``model.layers.3.mlp.up_proj.weight``."""
    return LLAMA_KEYS.to_hf(key)


def hf_to_spactor_key(key: str) -> str | None:
    """The inverse of :func:`spactor_to_hf_key`; None for keys spactor has no parameter for."""
    return LLAMA_KEYS.from_hf(key)


def llama_to_hf_state_dict(model: LlamaModel) -> dict[str, torch.Tensor]:
    """``LlamaForCausalLM`` weights of a spactor llama, on the CPU, every tensor once."""
    return {spactor_to_hf_key(k): _plain_tensor(v) for k, v in model.state_dict().items()}


def hf_to_llama_state_dict(sd: dict[str, torch.Tensor], cfg: LlamaConfig) -> dict[str, torch.Tensor]:
    """spactor llama weights from an HF Llama state dict; ``ValueError`` for unknown keys,
    missing parameters, or an untied head offered to a tied model."""
    tied = resolve_llama_dims(cfg)["tie_embeddings"]
    head, embed = sd.get("lm_head.weight"), sd.get("model.embed_tokens.weight")
    if tied and head is not None and embed is not None and not torch.equal(head, embed):
        raise ValueError(
            "the checkpoint's lm_head.weight differs from model.embed_tokens.weight (an untied head), "
            "but the configured llama ties them; set model.tie_embeddings=false"
        )
    # older checkpoints store RoPE's buffer; a tied head is the embedding
    out = LLAMA_KEYS.from_hf_state(
        sd, lambda key: key.endswith("rotary_emb.inv_freq") or (tied and key == "lm_head.weight"))
    if "token_embedding.weight" not in out:
        raise ValueError("the checkpoint has no model.embed_tokens.weight")
    if not tied and "lm_head.weight" not in out:
        raise ValueError("the checkpoint has no lm_head.weight (a tied head); set model.tie_embeddings=true")
    with torch.device("meta"):
        expected = LlamaModel(cfg, out["token_embedding.weight"].shape[0]).state_dict().keys()
    LLAMA_KEYS.check_complete(out, expected, "llama")
    return out


def hf_llama_config(
    cfg: LlamaConfig, vocab_size: int, pad_id: int | None = 0, eos_id: int | None = 1, bos_id: int | None = None
) -> dict[str, Any]:
    """``config.json`` for ``LlamaForCausalLM`` describing ``cfg``. spactor's vocabulary
    (T5's layout) has no BOS: ``bos_token_id`` is null unless given."""
    dims = resolve_llama_dims(cfg)
    return {
        "architectures": [HF_ARCHITECTURE],
        "model_type": "llama",
        "vocab_size": int(vocab_size),
        "hidden_size": dims["d_model"],
        "intermediate_size": dims["d_ff"],
        "num_hidden_layers": dims["num_layers"],
        "num_attention_heads": dims["num_heads"],
        "num_key_value_heads": dims["num_kv_heads"],
        "head_dim": dims["head_dim"],
        "hidden_act": "silu",
        "rms_norm_eps": float(cfg.norm_eps),
        # transformers >= 5 reads rope_parameters, earlier versions rope_theta: both say the same.
        "rope_theta": float(cfg.rope_theta),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": float(cfg.dropout),
        "tie_word_embeddings": dims["tie_embeddings"],
        "initializer_range": float(cfg.init_std),
        "max_position_embeddings": 4096,  # RoPE has no table; HF uses it only for its caches
        "pad_token_id": pad_id,
        "eos_token_id": eos_id,
        "bos_token_id": bos_id,
        "use_cache": True,
    }


def check_hf_llama_config(config: dict[str, Any], cfg: LlamaConfig, vocab_size: int) -> list[str]:
    """Differences between an HF Llama ``config.json`` and ``cfg``, as
    ``"name: checkpoint X, model Y"`` (empty: they describe the same model)."""
    ours = hf_llama_config(cfg, vocab_size)
    theirs = dict(config)
    theirs.setdefault("num_key_value_heads", theirs.get("num_attention_heads"))
    if theirs.get("head_dim") is None and theirs.get("hidden_size") and theirs.get("num_attention_heads"):
        theirs["head_dim"] = theirs["hidden_size"] // theirs["num_attention_heads"]
    rope = theirs.get("rope_parameters") or {}
    theta = rope.get("rope_theta", theirs.get("rope_theta", 10000.0)) if isinstance(rope, dict) else None
    if isinstance(rope, dict) and rope.get("rope_type", "default") != "default":
        return [f"rope_type: checkpoint {rope.get('rope_type')!r}, model 'default' (no RoPE scaling in spactor)"]
    theirs["rope_theta"] = theta
    theirs.setdefault("tie_word_embeddings", False)
    theirs.setdefault("hidden_act", "silu")
    theirs.setdefault("rms_norm_eps", 1e-6)
    names = (
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "head_dim", "hidden_act", "rms_norm_eps", "rope_theta", "tie_word_embeddings", "vocab_size",
    )  # fmt: skip
    problems = [
        f"{name}: checkpoint {theirs.get(name)!r}, model {ours[name]!r}"
        for name in names
        if theirs.get(name) != ours[name]
    ]
    for flag in ("attention_bias", "mlp_bias"):
        if theirs.get(flag):
            problems.append(f"{flag}: checkpoint True, model False")
    return problems


def save_llama_pretrained(
    model: LlamaModel, out: Path, dtype: torch.dtype = torch.float32, metadata: dict[str, str] | None = None
) -> list[str]:
    """``out/config.json`` + ``out/model.safetensors``; returns the file names."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to(dtype) for k, v in llama_to_hf_state_dict(model).items()}
    config = hf_llama_config(model.config, model.vocab_size)
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    save_hf_weights(tensors, out / WEIGHTS_FILE, metadata)
    return [CONFIG_FILE, WEIGHTS_FILE]


def write_tokenizer(tokenizer_path: Path, out: Path, max_length: int | None = None) -> list[str]:
    """The run's SentencePiece model as a tokenizer ``AutoTokenizer`` loads. spactor's
    vocabulary is T5's layout (pad 0, EOS 1, UNK 2, ``<extra_id_k>`` sentinels at the top,
    no BOS), which is exactly HF's ``T5Tokenizer`` over the same ``spiece.model``: the ids
    match spactor's, and text encodes with EOS appended and no BOS, as spactor's data
    pipeline separates documents."""
    from spactor.architectures.hf_convert import t5_tokenizer_config
    from spactor.data.tokenizer import Tokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tokenizer_path, out / TOKENIZER_FILE)
    tokenizer_config = t5_tokenizer_config(Tokenizer.load(tokenizer_path), max_length)
    (out / TOKENIZER_CONFIG_FILE).write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return [TOKENIZER_FILE, TOKENIZER_CONFIG_FILE]


def export_hf(
    model: LlamaModel,
    tokenizer_path: Path | None,
    out_dir: Path,
    dtype: torch.dtype = torch.float32,
    metadata: dict[str, str] | None = None,
    max_length: int | None = None,
) -> list[str]:
    """A ``LlamaForCausalLM`` directory (weights, config, and the tokenizer when
    ``tokenizer_path`` names the run's ``spiece.model``); returns the file names written."""
    files = save_llama_pretrained(model, Path(out_dir), dtype=dtype, metadata=metadata)
    if tokenizer_path is not None:
        files += write_tokenizer(Path(tokenizer_path), Path(out_dir), max_length)
    return files


def load_llama_hf_weights(model: LlamaModel, spec: str) -> Path:
    """``model.init_from=hf:PATH`` for llama (``spactor.architectures.hf_convert.load_hf_checkpoint``)."""
    return load_hf_checkpoint(
        model, spec, model_type="llama", check_config=check_hf_llama_config, to_state_dict=hf_to_llama_state_dict,
        hint="set model.size/d_model/num_kv_heads/... (data.tokenizer for the vocabulary) to match it")
