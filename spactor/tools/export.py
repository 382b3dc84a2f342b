"""``spactor export RUN_OR_CHECKPOINT --format hf OUT``: a trained discriminator in the
format of another library, written by its architecture's exporter
(``ArchitectureSpec.exporters``; ``t5``: a Hugging Face ``T5ForConditionalGeneration``
directory).

The source is a run directory (its newest checkpoint that passes verification) or one
checkpoint directory (``RUN/checkpoints/step_NNNNNNNN``). Only the discriminator's
weights are read — a partial ``torch.distributed.checkpoint`` load of the ``model.*``
keys — so the generator, the RTD head and the optimizer state never leave the disk,
and a checkpoint written by any number of ranks loads on one CPU process.

The model is built on ``meta`` from the run's config and holds the checkpoint's weights;
the exporter writes it. For ``t5``, ``OUT`` receives ``config.json``,
``model.safetensors``, the run's ``spiece.model`` and a ``tokenizer_config.json`` for
HF's ``T5Tokenizer`` (100 ``<extra_id_k>`` sentinels, the
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

from spactor.checkpoint_layout import (
    DISCRIMINATOR_KEY,
    DISCRIMINATOR_PREFIX,
    checkpoints_dir,
    dcp_dir,
    is_checkpoint_dir,
    manifest_step,
)

FORMATS = ("hf",)
DTYPES = ("float32", "bfloat16")


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
    load_hint: str = ""  # how to load it, from the exporter


def locate_checkpoint(source: Path) -> tuple[Path, Path]:
    """(run directory, checkpoint directory) for a run or a checkpoint directory."""
    from spactor.train.checkpoint import Checkpointer

    source = Path(source)
    if not source.is_dir():
        raise ExportError(f"{source}: no such directory (expected a run or a checkpoint directory)")
    if is_checkpoint_dir(source):  # RUN/checkpoints/step_N
        checkpoint, run_dir = source, source.parent.parent
        problem = Checkpointer(source.parent).verify(checkpoint)
        if problem is not None:
            raise ExportError(f"checkpoint {checkpoint} is unusable: {problem}")
        return run_dir, checkpoint
    latest, skipped = Checkpointer(checkpoints_dir(source)).latest_valid()
    if latest is None:
        why = f" (unusable: {'; '.join(skipped)})" if skipped else ""
        raise ExportError(f"{source}: no valid checkpoint under {checkpoints_dir(source)}{why}")
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

    folder = dcp_dir(checkpoint)
    metadata = dcp.FileSystemReader(str(folder)).read_metadata()
    state = {
        key: torch.empty(meta.size, dtype=meta.properties.dtype)
        for key, meta in metadata.state_dict_metadata.items()
        if key.startswith(DISCRIMINATOR_PREFIX) and isinstance(meta, TensorStorageMetadata)
    }
    if not state:
        raise ExportError(
            f"checkpoint {checkpoint} holds no discriminator weights ('{DISCRIMINATOR_PREFIX}*')"
        )
    read_dcp_locally(state, folder)  # only the keys asked for are read
    return {key[len(DISCRIMINATOR_PREFIX) :]: value for key, value in state.items()}


def export_hf(source: Path, out: Path, dtype: str = "float32", fmt: str = "hf") -> Exported:
    """Write the run's model with its architecture's ``fmt`` exporter (``t5``:
    ``out/{config.json, model.safetensors, spiece.model, tokenizer_config.json}``)."""
    import dataclasses

    import torch

    from spactor.architectures.base import ExportRefused, spec_for
    from spactor.config import load_config
    from spactor.plugins import load_plugins
    from spactor.registry import ARCHITECTURES
    from spactor.train.run_dir import TOKENIZER_FILE, RunDirError, load_run_tokenizer

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
    exporters = spec_for(resolved.model.type).exporters
    if fmt not in exporters:
        offered = f"its formats: {', '.join(sorted(exporters))}" if exporters else "it has no exporter"
        raise ExportError(f"model.arch={resolved.model.type}: no --format {fmt} export ({offered})")
    exporter = exporters[fmt]
    cfg = resolved.model.config
    # The run's tokenizer is checked before anything is written: a bad one is a one-line
    # error, not a traceback after OUT already holds the weights.
    spiece = run_dir / TOKENIZER_FILE
    tok = None
    if spiece.is_file():
        try:
            tok = load_run_tokenizer(run_dir)
        except RunDirError as e:
            raise ExportError(str(e)) from None
    weights = read_discriminator(checkpoint)
    if "token_embedding.weight" not in weights:
        raise ExportError(
            f"checkpoint {checkpoint} has no token embedding ({DISCRIMINATOR_KEY}token_embedding.weight)"
        )
    rows = int(weights["token_embedding.weight"].shape[0])
    # Built on meta and filled by assignment: no random init, no second copy of the weights;
    # without init_from, so that a run started from other weights does not read them again.
    if dataclasses.is_dataclass(cfg) and getattr(cfg, "init_from", None) is not None:
        cfg = dataclasses.replace(cfg, init_from=None)
    with torch.device("meta"):
        model = ARCHITECTURES.get(resolved.model.type).factory(cfg, rows)
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as e:
        raise ExportError(f"checkpoint {checkpoint} does not match the run's model config: {e}") from None

    step = manifest_step(checkpoint)
    out = Path(out)
    provenance = {"spactor_checkpoint": str(checkpoint.resolve()), "spactor_step": str(step)}
    try:
        files = exporter.write(model, out, getattr(torch, dtype), provenance)
    except ExportRefused as e:
        raise ExportError(f"model.arch={resolved.model.type}: {e}") from None

    if tok is not None:
        shutil.copyfile(spiece, out / "spiece.model")
        files += ["spiece.model"]
        if exporter.tokenizer_config is not None:  # the library's tokenizer over spiece.model
            tokenizer_config = exporter.tokenizer_config(tok, resolved)
            (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
            files += ["tokenizer_config.json"]
    else:
        print(f"warning: {spiece} is missing; exported the weights without a tokenizer", flush=True)
    version = exporter.describe(model) if exporter.describe is not None else resolved.model.type
    parameters = sum(p.numel() for p in model.parameters())
    hint = exporter.load_hint.format(out=str(out))
    return Exported(out, run_dir, checkpoint, step, version, parameters, files, hint)


# --------------------------------------------------------------------------- CLI


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export",
        help="export a run's discriminator (t5, t5gemma, llama: a Hugging Face directory)",
        description="Export the discriminator of a run's newest valid checkpoint (or of one checkpoint "
        "directory) with its architecture's exporter; t5, t5gemma, llama: a Hugging Face "
        "T5ForConditionalGeneration, T5GemmaForConditionalGeneration, LlamaForCausalLM directory "
        "(config.json, model.safetensors, spiece.model, tokenizer_config.json). The generator "
        "and RTD head are dropped.",
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
        result = export_hf(Path(ns.source), Path(ns.out), dtype=ns.dtype, fmt=ns.format)
    except ExportError as e:
        raise UsageError(str(e)) from None
    print(
        f"exported step {result.step} of {result.run_dir} ({result.checkpoint.name}): {result.version}, "
        f"{result.parameters / 1e6:.1f}M parameters\n"
        f"wrote {', '.join(str(result.out / f) for f in result.files)}"
        + (f"\nload with: {result.load_hint}" if result.load_hint else ""),
        flush=True,
    )
    return 0
