"""Weight conversion between spactor's T5 and Hugging Face's ``T5ForConditionalGeneration``.

The two models compute the same function; only parameter names differ (the mapping is in
``spactor/architectures/t5.py``'s docstring and in :data:`_RULES` below). Three things
need more than a rename:

* **tied head (v1.0, or ``model.tie_embeddings: true``)**: spactor has no ``lm_head``
  module and HF ties ``lm_head`` to ``shared``; the tensor is written once
  (``shared.weight``) and HF ties it on load. Both scale the decoder output by
  ``d_model**-0.5`` before the tied projection (HF does so exactly when the config says
  ``tie_word_embeddings: true``; transformers 5 records that as
  ``scale_decoder_outputs``). A v1.1 that transformers 5 builds from a default config
  is such a model: import it with ``model.version=1.1 model.tie_embeddings=true``.
* **untied head (v1.1)**: ``lm_head.weight`` is written and the config says
  ``tie_word_embeddings: false``, which also turns off HF's output scaling.
  transformers 5 ties every T5 head in memory, so a v1.1 it builds with
  ``tie_word_embeddings=False`` saves no ``lm_head.weight`` (its head is ``shared``,
  unscaled): that imports as an untied head initialised from ``shared.weight``, the
  same logits, trained untied from there as Mesh TF's v1.1.
* **relative position bias**: one table per stack in spactor; HF keeps it in block 0's
  self-attention (``...block.0.layer.0.SelfAttention.relative_attention_bias``).

``model.init_from=hf:PATH`` (:func:`load_hf_weights`) starts training from such a
directory (an export, or a T5 checkpoint from the Hugging Face hub downloaded by hand),
after checking that its ``config.json`` describes the configured architecture.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from spactor.architectures.t5 import T5Config, T5Model, resolve_t5_dims
from spactor.config import ConfigError

HF_ARCHITECTURE = "T5ForConditionalGeneration"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
LEGACY_WEIGHTS_FILE = "pytorch_model.bin"
INIT_FROM_PREFIX = "hf:"
LAYER_NORM_EPS = 1e-6  # spactor's RMSNorm default; HF reads it from the config

# spactor template <-> HF template. ``{s}`` is the stack, ``{n}`` the block index, ``{p}``
# the projection's own name (q/k/v/o, wi/wi_0/wi_1/wo). One table serves both directions.
_RULES: tuple[tuple[str, str], ...] = (
    ("token_embedding.weight", "shared.weight"),
    ("lm_head.weight", "lm_head.weight"),
    ("{s}.rel_bias.embedding.weight", "{s}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
    ("{s}.final_norm.weight", "{s}.final_layer_norm.weight"),
    ("{s}.blocks.{n}.self_attn.{p}.weight", "{s}.block.{n}.layer.0.SelfAttention.{p}.weight"),
    ("{s}.blocks.{n}.self_attn_norm.weight", "{s}.block.{n}.layer.0.layer_norm.weight"),
    ("encoder.blocks.{n}.ffn.{p}.weight", "encoder.block.{n}.layer.1.DenseReluDense.{p}.weight"),
    ("encoder.blocks.{n}.ffn_norm.weight", "encoder.block.{n}.layer.1.layer_norm.weight"),
    ("decoder.blocks.{n}.cross_attn.{p}.weight", "decoder.block.{n}.layer.1.EncDecAttention.{p}.weight"),
    ("decoder.blocks.{n}.cross_attn_norm.weight", "decoder.block.{n}.layer.1.layer_norm.weight"),
    ("decoder.blocks.{n}.ffn.{p}.weight", "decoder.block.{n}.layer.2.DenseReluDense.{p}.weight"),
    ("decoder.blocks.{n}.ffn_norm.weight", "decoder.block.{n}.layer.2.layer_norm.weight"),
)
_GROUPS = {"s": r"encoder|decoder", "n": r"\d+", "p": r"q|k|v|o|wi|wi_0|wi_1|wo"}

# HF keys that carry no weights of their own: aliases of ``shared`` (older checkpoints
# store them) and a cross-attention bias table HF never uses.
_HF_REDUNDANT = frozenset(
    {
        "encoder.embed_tokens.weight",
        "decoder.embed_tokens.weight",
        "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
    }
)


class KeyMap:
    """Parameter names between spactor and a Hugging Face model, from one table of
    ``(spactor template, HF template)`` pairs whose ``{name}`` fields match the regexes in
    ``groups``: the same table serves both directions. Every architecture's converter
    (T5's here, llama's, ...) states its table and uses one of these."""

    def __init__(self, rules: tuple[tuple[str, str], ...], groups: dict[str, str], model: str) -> None:
        self.model = model  # for messages: "T5", "llama"
        self._to_hf = tuple((self._compile(src, groups), dst) for src, dst in rules)
        self._from_hf = tuple((self._compile(dst, groups), src) for src, dst in rules)

    @staticmethod
    def _compile(template: str, groups: dict[str, str]) -> re.Pattern[str]:
        pattern = re.escape(template)
        for name, group in groups.items():
            pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{group})", 1)
        return re.compile(pattern)

    @staticmethod
    def _rename(key: str, rules: tuple[tuple[re.Pattern[str], str], ...]) -> str | None:
        for pattern, template in rules:
            match = pattern.fullmatch(key)
            if match is not None:
                return template.format(**match.groupdict())
        return None

    def to_hf(self, key: str) -> str:
        renamed = self._rename(key, self._to_hf)
        if renamed is None:
            raise KeyError(f"no Hugging Face name for spactor {self.model} parameter '{key}'")
        return renamed

    def from_hf(self, key: str) -> str | None:
        """The inverse of :meth:`to_hf`; None for keys spactor has no parameter for."""
        return self._rename(key, self._from_hf)

    def from_hf_state(self, sd: dict[str, torch.Tensor], skip: Any) -> dict[str, torch.Tensor]:
        """``sd`` under spactor's names, the keys ``skip(key)`` accepts left out;
        ``ValueError`` naming the keys that are no parameter of this model."""
        out: dict[str, torch.Tensor] = {}
        unknown: list[str] = []
        for key, value in sd.items():
            if skip(key):
                continue
            renamed = self.from_hf(key)
            if renamed is None:
                unknown.append(key)
            else:
                out[renamed] = value
        if unknown:
            raise ValueError(
                f"not {self.model} parameters: {', '.join(sorted(unknown)[:8])}" + (" ..." if len(unknown) > 8 else "")
            )
        return out

    def check_complete(self, out: dict[str, torch.Tensor], expected: Any, what: str) -> None:
        """``ValueError`` naming (by their HF names) the parameters ``out`` lacks or has
        beyond ``expected``, the model's state-dict keys."""
        missing, extra = sorted(set(expected) - set(out)), sorted(set(out) - set(expected))
        if missing or extra:
            parts = []
            if missing:
                parts.append("missing " + ", ".join(self.to_hf(k) for k in missing[:8]))
            if extra:
                parts.append("unexpected " + ", ".join(self.to_hf(k) for k in extra[:8]))
            raise ValueError(f"the checkpoint does not match the configured {what}: " + "; ".join(parts))


T5_KEYS = KeyMap(_RULES, _GROUPS, "T5")


def spactor_to_hf_key(key: str) -> str:
    """``encoder.blocks.3.ffn.wi.weight`` → ``encoder.block.3.layer.1.DenseReluDense.wi.weight``."""
    return T5_KEYS.to_hf(key)


def hf_to_spactor_key(key: str) -> str | None:
    """The inverse of :func:`spactor_to_hf_key`; None for keys spactor has no parameter for."""
    return T5_KEYS.from_hf(key)


# --------------------------------------------------------------------------- state dicts


def _plain_tensor(t: torch.Tensor) -> torch.Tensor:
    # FSDP2 parameters are DTensors: gather the full tensor before it leaves the model.
    full = getattr(t, "full_tensor", None)
    if callable(full):
        t = full()
    return t.detach().to("cpu").contiguous()


def t5_to_hf_state_dict(model: T5Model) -> dict[str, torch.Tensor]:
    """HF ``T5ForConditionalGeneration`` weights of a spactor T5 model, on the CPU.

    Every tensor appears once: a tied v1.0 model yields ``shared.weight`` and no
    ``lm_head.weight`` (safetensors refuses shared storage, and HF re-ties on load).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        out[spactor_to_hf_key(key)] = _plain_tensor(value)
    return out


def hf_to_t5_state_dict(sd: dict[str, torch.Tensor], cfg: T5Config) -> dict[str, torch.Tensor]:
    """spactor T5 weights (``T5Model.state_dict()`` keys) from an HF T5 state dict.

    Raises ``ValueError`` for keys that are neither T5 parameters nor known aliases, for
    parameters spactor's model (``cfg``) needs but ``sd`` lacks, and for an untied
    ``lm_head`` offered to a tied (v1.0) model.
    """
    tied = resolve_t5_dims(cfg)["tie_embeddings"]
    head, shared = sd.get("lm_head.weight"), sd.get("shared.weight")
    # HF's own v1.0 files may hold the head as a copy of ``shared``; a different tensor
    # means the checkpoint was trained untied and cannot become v1.0.
    if tied and head is not None and shared is not None and not torch.equal(head, shared):
        raise ValueError(
            "the checkpoint's lm_head.weight differs from shared.weight (an untied head), "
            "but the configured T5 ties them; use model.version=1.1 (model.tie_embeddings=false)"
        )
    out = T5_KEYS.from_hf_state(sd, lambda key: key in _HF_REDUNDANT or (tied and key == "lm_head.weight"))
    if "token_embedding.weight" not in out:
        raise ValueError("the checkpoint has no shared.weight (the token embedding)")
    if not tied and "lm_head.weight" not in out:
        # transformers 5 ties lm_head to shared in every T5 and then saves no lm_head
        # (the config check has made sure its head is the unscaled one).
        out["lm_head.weight"] = out["token_embedding.weight"].clone()
    with torch.device("meta"):  # only the parameter names; no memory, no init cost
        expected = T5Model(cfg, out["token_embedding.weight"].shape[0]).state_dict().keys()
    T5_KEYS.check_complete(out, expected, "T5")
    return out


# --------------------------------------------------------------------------- config.json


def hf_config(cfg: T5Config, vocab_size: int, pad_id: int = 0, eos_id: int = 1) -> dict[str, Any]:
    """``config.json`` for ``T5ForConditionalGeneration`` describing spactor's ``cfg``.

    ``vocab_size`` is the embedding's row count (32,128 for T5's tokenizer), not the
    number of SentencePiece pieces.
    """
    dims = resolve_t5_dims(cfg)
    return {
        "architectures": [HF_ARCHITECTURE],
        "model_type": "t5",
        "is_encoder_decoder": True,
        "vocab_size": int(vocab_size),
        "d_model": dims["d_model"],
        "d_ff": dims["d_ff"],
        "d_kv": dims["d_kv"],
        "num_heads": dims["num_heads"],
        "num_layers": dims["num_layers"],
        "num_decoder_layers": dims["num_decoder_layers"],
        "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
        "relative_attention_max_distance": cfg.relative_attention_max_distance,
        "feed_forward_proj": dims["ffn"],
        # HF reads this flag twice: tie lm_head to shared, and scale the decoder output
        # by d_model**-0.5 — both exactly what spactor's v1.0 does and v1.1 does not.
        "tie_word_embeddings": dims["tie_embeddings"],
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "dropout_rate": float(cfg.dropout),
        "initializer_factor": float(cfg.init_std),
        "pad_token_id": pad_id,
        "eos_token_id": eos_id,
        "decoder_start_token_id": pad_id,  # T5 starts decoding from the pad id
        "use_cache": True,
    }


def t5_tokenizer_config(tokenizer: Any, max_length: int | None = None) -> dict[str, Any]:
    """HF's ``T5Tokenizer`` over a run's ``spiece.model``: its ``<extra_id_k>`` sentinels
    are spactor's ids (spactor's ``[M]`` is not part of it); text encodes with EOS appended
    and no BOS, as spactor's data pipeline separates documents. Every exporter whose
    vocabulary is spactor's SentencePiece layout writes this beside the weights."""
    config: dict[str, Any] = {
        "tokenizer_class": "T5Tokenizer",
        "extra_ids": tokenizer.vocab().num_sentinels,
        "eos_token": tokenizer.id_to_token(tokenizer.eos_id),
        "pad_token": tokenizer.id_to_token(tokenizer.pad_id),
        "unk_token": tokenizer.id_to_token(tokenizer.unk_id),
    }
    if max_length is not None:
        config["model_max_length"] = int(max_length)
    return config


def check_hf_config(config: dict[str, Any], cfg: T5Config, vocab_size: int) -> list[str]:
    """Differences between an HF T5 ``config.json`` and spactor's ``cfg``, as
    ``"name: checkpoint X, model Y"`` (empty when they describe the same model).

    Keys absent from older configs take HF's defaults (``feed_forward_proj`` relu, tied
    embeddings, 32 buckets, max distance 128, as many decoder as encoder layers).
    """
    ours = hf_config(cfg, vocab_size)
    theirs = {
        "num_decoder_layers": config.get("num_layers"),
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "feed_forward_proj": "relu",
        "tie_word_embeddings": True,
        **{k: v for k, v in config.items() if v is not None},
    }
    # transformers 5 always saves tie_word_embeddings: true and records the v1.0/v1.1
    # distinction (tied and scaled head, or not) as scale_decoder_outputs instead.
    if isinstance(config.get("scale_decoder_outputs"), bool):
        theirs["tie_word_embeddings"] = config["scale_decoder_outputs"]
    names = (
        "d_model", "d_ff", "d_kv", "num_heads", "num_layers", "num_decoder_layers",
        "relative_attention_num_buckets", "relative_attention_max_distance",
        "feed_forward_proj", "tie_word_embeddings", "vocab_size",
    )  # fmt: skip
    return [
        f"{name}: checkpoint {theirs.get(name)!r}, model {ours[name]!r}"
        for name in names
        if theirs.get(name) != ours[name]
    ]


# --------------------------------------------------------------------------- files


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:  # a declared dependency; only a broken environment lacks it
        raise ImportError(
            "reading and writing Hugging Face weights needs safetensors: pip install safetensors"
        ) from None
    return safetensors.torch


def save_hf_weights(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """``model.safetensors`` as ``from_pretrained`` expects it (``format: pt`` metadata)."""
    _safetensors().save_file(tensors, str(path), metadata={"format": "pt", **(metadata or {})})
    # safetensors creates the file 0600; an export is meant to be shared like any other file.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def save_hf_pretrained(
    model: T5Model,
    out: Path,
    dtype: torch.dtype = torch.float32,
    metadata: dict[str, str] | None = None,
) -> list[str]:
    """``out/config.json`` + ``out/model.safetensors``: a directory that
    ``T5ForConditionalGeneration.from_pretrained(out)`` loads. Returns the file names."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to(dtype) for k, v in t5_to_hf_state_dict(model).items()}
    config = hf_config(model.config, model.vocab_size)
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    save_hf_weights(tensors, out / WEIGHTS_FILE, metadata)
    return [CONFIG_FILE, WEIGHTS_FILE]


def read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of ``model.safetensors``, of the shards a
    ``model.safetensors.index.json`` lists (large hub checkpoints are sharded), or of an
    older hub checkpoint's ``pytorch_model.bin`` (read with ``weights_only``: no code runs)."""
    single, index = directory / WEIGHTS_FILE, directory / WEIGHTS_INDEX_FILE
    legacy = directory / LEGACY_WEIGHTS_FILE
    if single.is_file():
        return _safetensors().load_file(str(single))
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict[str, torch.Tensor] = {}
        for shard in shards:
            out.update(_safetensors().load_file(str(directory / shard)))
        return out
    if legacy.is_file():
        return torch.load(legacy, map_location="cpu", weights_only=True)
    raise FileNotFoundError(
        f"no {WEIGHTS_FILE} (nor {WEIGHTS_INDEX_FILE}, {LEGACY_WEIGHTS_FILE}) in {directory}"
    )


def parse_init_from(spec: str) -> Path:
    """``hf:PATH`` → PATH; anything else is a ConfigError naming ``model.init_from``."""
    if not spec.startswith(INIT_FROM_PREFIX) or not spec[len(INIT_FROM_PREFIX) :]:
        raise ConfigError(
            f"model.init_from must be 'hf:PATH' (a directory with config.json and model.safetensors, "
            f"e.g. written by `spactor export --format hf`), got {spec!r}"
        )
    return Path(spec[len(INIT_FROM_PREFIX) :]).expanduser()


@torch.no_grad()
def load_hf_checkpoint(model: Any, spec: str, *, model_type: str, check_config: Any, to_state_dict: Any,
                       hint: str, assume_type: str | None = None) -> Path:
    """Initialise ``model`` in place from ``spec`` (``hf:PATH``); returns PATH. Every
    architecture's importer is this with its own parts: ``model_type`` (the config's
    ``model_type`` it accepts; ``assume_type`` when the config has none),
    ``check_config(config, model_cfg, vocab_size) -> problems``,
    ``to_state_dict(hf_state, model_cfg)`` and ``hint`` (which keys to set on a mismatch).

    The config check always runs, so a mismatch stops even a meta-device build (``spactor
    preview``, ``spactor flops``) before any work; the weights themselves are read only
    when the model has real storage.
    """
    path = parse_init_from(spec)
    where = f"model.init_from={spec}"
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise ConfigError(f"{where}: no {CONFIG_FILE} in {path}")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{where}: unreadable {config_file} ({e})") from None
    if config.get("model_type", assume_type) != model_type:
        raise ConfigError(f"{where}: {config_file} describes a '{config.get('model_type')}' model, not {model_type}")
    problems = check_config(config, model.config, model.vocab_size)
    if problems:
        raise ConfigError(
            f"{where}: the checkpoint does not match the configured model ({'; '.join(problems)}); {hint}"
        )
    if any(p.is_meta for p in model.parameters()):
        return path
    try:
        model.load_state_dict(to_state_dict(read_hf_weights(path), model.config), strict=True)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise ConfigError(f"{where}: {e}") from None
    return path


def load_hf_weights(model: T5Model, spec: str) -> Path:
    """``model.init_from=hf:PATH`` for T5 (a config without ``model_type`` is T5's)."""
    return load_hf_checkpoint(
        model, spec, model_type="t5", assume_type="t5", check_config=check_hf_config,
        to_state_dict=hf_to_t5_state_dict,
        hint="set model.version/size/d_model/... (model.tie_embeddings for the head, data.tokenizer for the "
             "vocabulary) to match it")
