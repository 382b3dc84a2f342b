"""Bytes autograd saves for backward per sequence in the runner's forward (``TrainModules``:
modifiers, one encode, every loss), counted with ``torch.autograd.graph.saved_tensors_hooks``.

Per sequence = saved(batch 2) − saved(batch 1), each a sum over distinct storages, so the
weights (and autocast's cached bf16 copies of them) cancel out. The largest contributors
are grouped by what they are: attention-bias-shaped (``(., ., L, L)``-like, the last two
dims being sequence lengths), vocabulary-sized (last dim = V: logits and their fp32
copies) and the rest.

    python -m benchmarks.saved_bytes                       # T5-Base (v1.0) SC, 512/114, bf16 autocast
    python -m benchmarks.saved_bytes --recipe spactor --precision fp32

Runs on CPU in a minute or two at Base size; nothing is trained.
"""

from __future__ import annotations

import argparse
import json

import torch

from spactor.config import load_config
from spactor.plugins import load_plugins
from spactor.train.flops.counting import count_vocab
from spactor.train.step import TrainModules, apply_transforms
from spactor.train.builders import build_model, build_objectives, raw_length_for, seeded_generator


def saved_storages(modules: TrainModules, batch: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict:
    """Distinct storages saved for backward during one forward: data_ptr → (bytes, shape, dtype)."""
    params = {p.untyped_storage().data_ptr() for p in modules.parameters()}
    seen: dict[int, tuple[int, tuple[int, ...], str]] = {}

    from torch._subclasses.fake_tensor import FakeTensor

    def pack(t: torch.Tensor) -> torch.Tensor:
        if isinstance(t, FakeTensor):  # flex builds its backward graph on fake tensors
            return t
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr not in seen:
            seen[ptr] = (storage.nbytes(), tuple(t.shape), str(t.dtype).replace("torch.", ""))
        return t

    rng = seeded_generator(1, torch.device("cpu"))
    enabled = dtype is not None
    autocast = torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=enabled)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        modules(batch, rng, modules.context(batch, with_metrics=True))
    return seen


def categorise(shape: tuple[int, ...], lengths: set[int], vocab: int) -> str:
    if len(shape) >= 2 and shape[-1] == vocab:
        return "vocab-sized (logits)"
    if len(shape) >= 3 and shape[-1] in lengths and shape[-2] in lengths:
        return "attention (bias, scores, probs)"
    return "other activations"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="sc")
    parser.add_argument("--size", default="base")
    parser.add_argument("--input-length", type=int, default=512)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    load_plugins()
    resolved = load_config(
        args.recipe,
        [
            "model.version=1.0",
            f"model.size={args.size}",
            f"data.input_length={args.input_length}",
            "data.tokenizer_vocab_size=32000",  # T5's 32,128 rows
            "runtime.count_flops=false",
            *args.overrides,
        ],
    )
    vocab = count_vocab(resolved.cfg.data)
    torch.manual_seed(0)
    model = build_model(resolved, vocab)
    objectives = build_objectives(resolved, vocab, model)
    modules = TrainModules(model, objectives, vocab.pad_id).train()
    raw = raw_length_for(objectives, args.input_length)
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    totals, groups = {}, {}
    for batch_size in (1, 2):
        g = seeded_generator(0, torch.device("cpu"))
        original = torch.randint(3, vocab.last_sentinel_id, (batch_size, raw), generator=g)
        batch = apply_transforms(objectives, {"original": original}, g)
        lengths = {v.shape[1] for v in batch.values() if v.dim() == 2}
        saved = saved_storages(modules, batch, dtype)
        totals[batch_size] = sum(nbytes for nbytes, _, _ in saved.values())
        by_group: dict[str, int] = {}
        for nbytes, shape, _ in saved.values():
            key = categorise(shape, lengths, vocab.size)
            by_group[key] = by_group.get(key, 0) + nbytes
        groups[batch_size] = by_group
        if batch_size == 2:
            top = sorted(saved.values(), reverse=True)[:8]
    per_sequence = totals[2] - totals[1]
    report = {
        "recipe": args.recipe,
        "size": args.size,
        "input_length": args.input_length,
        "target_length": int(batch["decoder_target"].shape[1]) if "decoder_target" in batch else None,
        "precision": args.precision,
        "saved_bytes_per_sequence": per_sequence,
        "saved_MB_per_sequence": round(per_sequence / 1e6, 1),
        "per_sequence_MB_by_group": {
            k: round((groups[2].get(k, 0) - groups[1].get(k, 0)) / 1e6, 1) for k in sorted(groups[2])
        },
        "largest_saved_at_batch_2": [
            f"{nbytes / 1e6:.1f} MB {dt} {list(shape)}" for nbytes, shape, dt in top
        ],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
