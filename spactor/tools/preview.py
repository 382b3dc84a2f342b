"""``spactor preview``: what a recipe's objectives do to real text.

Only the data-side transforms run (span corruption, MLM masking); the model and the
objectives' modules are built on the meta device, so previewing a Large recipe costs
no memory.

An objective that draws one of several variants per example (UL2's denoisers) may define
``for_preview() -> int``: it then shows its variants in turn, and the preview holds at
least that many examples so that every variant appears.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import torch

from spactor.config import Resolved
from spactor.train.batches import build_data
from spactor.train.step import apply_transforms
from spactor.train.builders import build_model, build_objectives, seeded_generator
from spactor.train.stages import configured_types, knob_values, run_raw_length
from spactor.schedules.base import build as build_schedules


def preview_batch(
    resolved: Resolved, n: int, stage: int = 1
) -> tuple[dict[str, torch.Tensor], dict[str, Any], Any]:
    cpu = torch.device("cpu")
    data = build_data(resolved, device=cpu, run_dir=None)
    with torch.device("meta"):
        model = build_model(resolved, data.vocab)
        objectives = build_objectives(resolved, data.vocab, model)
    # The transforms ``stage`` runs (a curriculum's stages may differ), on the run's raw chunk.
    stages = build_schedules(resolved.schedules, knob_values(objectives), resolved.cfg.trainer.max_steps,
                             configured_types(resolved, objectives)).stages
    raw_length = run_raw_length(objectives, stages, resolved.cfg.data.input_length)
    objectives = {name: objectives[name] for name in stages.active_in(stage, objectives)}
    for obj in objectives.values():
        if hasattr(obj, "for_preview"):
            n = max(n, obj.for_preview())
    data.start(raw_length, batch_size=n)
    batch = next(iter(data.train_batches()))
    batch = apply_transforms(objectives, batch, seeded_generator(resolved.cfg.trainer.seed + 1, cpu))
    extra: dict[str, Any] = {}
    for obj in objectives.values():
        extra.update(obj.preview_fields(batch))
    return batch, extra, data.tokenizer


# The token fields a model reads and predicts: an encoder's input and a decoder's target,
# or a decoder-only model's one sequence (``lm_input``) and its targets (``lm_target``,
# pad where no loss is taken). The raw batch's ``encoder_input`` is only shown where an
# encoder reads it.
ENCODER_DECODER_FIELDS = ("original", "encoder_input", "decoder_target")
DECODER_ONLY_FIELDS = ("original", "lm_input", "lm_target")


def text_fields(batch: dict[str, torch.Tensor]) -> tuple[str, ...]:
    fields = DECODER_ONLY_FIELDS if "lm_input" in batch else ENCODER_DECODER_FIELDS
    return tuple(f for f in fields if f in batch)


def _fold_padding(text: str, tokenizer: Any) -> str:
    """Runs of padding as ``<pad>×N`` (a decoder-only target is mostly padding)."""
    import re

    pad = tokenizer.id_to_token(tokenizer.pad_id)
    return re.sub(f"(?:{re.escape(pad)}){{2,}}", lambda m: f"{pad}×{len(m.group(0)) // len(pad)}", text)


def preview(resolved: Resolved, n: int = 2, as_json: bool = False) -> Iterator[str]:
    batch, extra, tokenizer = preview_batch(resolved, n)
    fields = text_fields(batch)
    for i in range(batch["original"].shape[0]):
        example: dict[str, Any] = {key: batch[key][i].tolist() for key in fields}
        for key, value in extra.items():
            example[key] = value[i].tolist() if isinstance(value, torch.Tensor) else value[i]
        if as_json:
            yield json.dumps(example)
            continue
        yield f"=== example {i}"
        for key in fields:
            yield f"--- {key} ({len(example[key])} tokens)"
            yield _fold_padding(tokenizer.decode(example[key], show_special=True), tokenizer)
        for key, value in extra.items():
            if key not in fields:
                shown = example[key]
                yield f"--- {key}: {shown if len(str(shown)) < 400 else str(shown)[:400] + '…'}"
