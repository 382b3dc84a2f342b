"""``spactor export RUN_OR_CHECKPOINT --format hf OUT``: a trained discriminator as a
Hugging Face ``T5ForConditionalGeneration`` directory.

The source is a run directory (its newest checkpoint that passes verification) or one
checkpoint directory (``RUN/checkpoints/step_NNNNNNNN``). Only the discriminator's
weights are read — a partial ``torch.distributed.checkpoint`` load of the ``model.*``
keys — so the generator, the RTD head and the optimizer state never leave the disk,
and a checkpoint written by any number of ranks loads on one CPU process.

``OUT`` receives ``config.json``, ``model.safetensors``, the run's ``spiece.model`` and a
``tokenizer_config.json`` for HF's ``T5Tokenizer`` (100 ``<extra_id_k>`` sentinels, the
same ids as spactor's; spactor's ``[M]`` is not part of it). Then::

    T5ForConditionalGeneration.from_pretrained(OUT); AutoTokenizer.from_pretrained(OUT)

This module stays import-light at the top (argparse only): ``spactor --help`` builds
every parser.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMATS = ("hf",)
DTYPES = ("float32", "bfloat16")
# The discriminator's keys in a checkpoint: dcp.save({"model": TrainModules state dict})
# flattens to "model." + "model.<T5 parameter>" (generator/RTD head: "model.objectives.*").
DISCRIMINATOR_PREFIX = "model.model."


class ExportError(Exception):
    """A source that cannot be exported; the CLI prints it in one line (exit code 2)."""


@dataclass
class Exported:
    out: Path
    run_dir: Path
    checkpoint: Path
    step: int
    version: str
    parameters: int
    files: list[str]
    hf_class: str = "T5ForConditionalGeneration"
    model: str = ""  # how the message names the model ("" : T5 v<version>)


def locate_checkpoint(source: Path) -> tuple[Path, Path]:
    """(run directory, checkpoint directory) for a run or a checkpoint directory."""
    from spactor.train.checkpoint import MANIFEST, Checkpointer

    source = Path(source)
    if not source.is_dir():
        raise ExportError(f"{source}: no such directory (expected a run or a checkpoint directory)")
    if (source / MANIFEST).is_file():  # RUN/checkpoints/step_N
        checkpoint, run_dir = source, source.parent.parent
        problem = Checkpointer(source.parent).verify(checkpoint)
        if problem is not None:
            raise ExportError(f"checkpoint {checkpoint} is unusable: {problem}")
        return run_dir, checkpoint
    latest, skipped = Checkpointer(source / "checkpoints").latest_valid()
    if latest is None:
        why = f" (unusable: {'; '.join(skipped)})" if skipped else ""
        raise ExportError(f"{source}: no valid checkpoint under {source / 'checkpoints'}{why}")
    for problem in skipped:
        print(f"skipping checkpoint {problem}", flush=True)
    return source, latest


def read_discriminator(checkpoint: Path) -> dict[str, Any]:
    """The discriminator's tensors of a checkpoint (T5Model state-dict keys), read from
    the DCP files alone: shapes and dtypes come from the DCP metadata, so no model (and
    no process group) is needed to load them."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from spactor.architectures.dcp_read import read_dcp_locally

    dcp_dir = checkpoint / "dcp"
    metadata = dcp.FileSystemReader(str(dcp_dir)).read_metadata()
    state = {
        key: torch.empty(meta.size, dtype=meta.properties.dtype)
        for key, meta in metadata.state_dict_metadata.items()
        if key.startswith(DISCRIMINATOR_PREFIX) and isinstance(meta, TensorStorageMetadata)
    }
    if not state:
        raise ExportError(
            f"checkpoint {checkpoint} holds no discriminator weights ('{DISCRIMINATOR_PREFIX}*')"
        )
    read_dcp_locally(state, dcp_dir)  # only the keys asked for are read
    return {key[len(DISCRIMINATOR_PREFIX) :]: value for key, value in state.items()}


def export_hf(source: Path, out: Path, dtype: str = "float32") -> Exported:
    """Write ``out/{config.json, model.safetensors, spiece.model, tokenizer_config.json}``."""
    import torch

    from spactor.architectures.hf_convert import save_hf_pretrained
    from spactor.architectures.t5 import T5Model
    from spactor.config import load_config
    from spactor.data.tokenizer import NUM_SENTINELS, Tokenizer
    from spactor.plugins import load_plugins
    from spactor.train.checkpoint import MANIFEST

    if dtype not in DTYPES:
        raise ExportError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    load_plugins()
    run_dir, checkpoint = locate_checkpoint(Path(source))
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise ExportError(f"{run_dir}: no config.yaml (is {checkpoint} inside a spactor run directory?)")
    # Exporting runs on one CPU process, wherever the run trained: its runtime settings
    # (a GPU, FSDP) must not fail validation here.
    resolved = load_config(str(saved), ["runtime.device=cpu", "runtime.fsdp=null"], saved_run=True)
    if resolved.model.type == "llama":  # until exporters are an architecture hook (the protocol half of issue 20)
        return _export_llama(resolved, run_dir, checkpoint, Path(out), getattr(torch, dtype))
    if resolved.model.type != "t5":
        raise ExportError(
            f"model.arch={resolved.model.type}: only T5 runs export to Hugging Face's "
            "T5ForConditionalGeneration"
        )
    cfg = resolved.model.config
    weights = read_discriminator(checkpoint)
    if "token_embedding.weight" not in weights:
        raise ExportError(f"checkpoint {checkpoint} has no token embedding (model.token_embedding.weight)")
    rows = int(weights["token_embedding.weight"].shape[0])
    # Built on meta and filled by assignment: no random init, no second copy of the weights.
    # T5Model (not build_t5) so that a run started from model.init_from does not read it again.
    with torch.device("meta"):
        model = T5Model(cfg, rows)
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as e:
        raise ExportError(f"checkpoint {checkpoint} does not match the run's model config: {e}") from None

    step = int(json.loads((checkpoint / MANIFEST).read_text())["step"])
    out = Path(out)
    provenance = {"spactor_checkpoint": str(checkpoint.resolve()), "spactor_step": str(step)}
    files = save_hf_pretrained(model, out, dtype=getattr(torch, dtype), metadata=provenance)

    spiece = run_dir / "spiece.model"
    if spiece.is_file():
        shutil.copyfile(spiece, out / "spiece.model")
        tok = Tokenizer.load(spiece)
        tokenizer_config = {
            "tokenizer_class": "T5Tokenizer",
            "extra_ids": NUM_SENTINELS,
            "eos_token": tok.id_to_token(tok.eos_id),
            "pad_token": tok.id_to_token(tok.pad_id),
            "unk_token": tok.id_to_token(tok.unk_id),
            "model_max_length": resolved.cfg.data.input_length,
        }
        (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
        files += ["spiece.model", "tokenizer_config.json"]
    else:
        print(f"warning: {spiece} is missing; exported the weights without a tokenizer", flush=True)
    version = str(cfg.version)
    parameters = sum(p.numel() for p in model.parameters())
    return Exported(out, run_dir, checkpoint, step, version, parameters, files)


def _export_llama(resolved: Any, run_dir: Path, checkpoint: Path, out: Path, dtype: Any) -> Exported:
    """A llama run as a ``LlamaForCausalLM`` directory (``spactor.architectures.llama_hf``)."""
    import torch

    from spactor.architectures.llama import LlamaModel
    from spactor.architectures.llama_hf import HF_ARCHITECTURE
    from spactor.architectures.llama_hf import export_hf as export_llama_hf
    from spactor.train.checkpoint import MANIFEST

    weights = read_discriminator(checkpoint)
    if "token_embedding.weight" not in weights:
        raise ExportError(f"checkpoint {checkpoint} has no token embedding (model.token_embedding.weight)")
    with torch.device("meta"):
        model = LlamaModel(resolved.model.config, int(weights["token_embedding.weight"].shape[0]))
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as e:
        raise ExportError(f"checkpoint {checkpoint} does not match the run's model config: {e}") from None
    step = int(json.loads((checkpoint / MANIFEST).read_text())["step"])
    provenance = {"spactor_checkpoint": str(checkpoint.resolve()), "spactor_step": str(step)}
    spiece = run_dir / "spiece.model"
    if not spiece.is_file():
        print(f"warning: {spiece} is missing; exported the weights without a tokenizer", flush=True)
    files = export_llama_hf(model, spiece if spiece.is_file() else None, out, dtype=dtype, metadata=provenance,
                            max_length=resolved.cfg.data.input_length)
    parameters = sum(p.numel() for p in model.parameters())
    return Exported(out, run_dir, checkpoint, step, "", parameters, files, HF_ARCHITECTURE,
                    f"llama {resolved.model.config.size}")


# --------------------------------------------------------------------------- CLI


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export",
        help="export a run's T5 discriminator (Hugging Face T5ForConditionalGeneration)",
        description="Export the discriminator of a run's newest valid checkpoint (or of one checkpoint "
        "directory) as a Hugging Face T5ForConditionalGeneration directory: config.json, "
        "model.safetensors, spiece.model, tokenizer_config.json. The generator and RTD head are dropped.",
    )
    p.add_argument(
        "source", metavar="RUN_OR_CHECKPOINT", help="a run directory or RUN/checkpoints/step_NNNNNNNN"
    )
    p.add_argument("out", metavar="OUT", help="output directory (created; existing files are replaced)")
    p.add_argument("--format", choices=FORMATS, default="hf", help="output format (default: hf)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the written weights")
    p.set_defaults(func=cmd_export)
    return p


def cmd_export(ns: argparse.Namespace) -> int:
    from spactor.errors import UsageError

    try:
        result = export_hf(Path(ns.source), Path(ns.out), dtype=ns.dtype)
    except ExportError as e:
        raise UsageError(str(e)) from None
    print(
        f"exported step {result.step} of {result.run_dir} ({result.checkpoint.name}): "
        f"{result.model or f'T5 v{result.version}'}, {result.parameters / 1e6:.1f}M parameters\n"
        f"wrote {', '.join(str(result.out / f) for f in result.files)}\n"
        f"load with: transformers.{result.hf_class}.from_pretrained({str(result.out)!r})",
        flush=True,
    )
    return 0
