"""Each architecture declares an analytic forward-FLOPs formula on its spec
(``ArchitectureSpec.analytic_flops``); fvcore's count of the model's plain forward must
equal it exactly. Both count 2 x the multiply-adds of matmul-class ops only (elementwise
ops, norms, softmax, lookups are 0 under the counter's convention, and the formulas leave
them out too), so there is no tolerance: a mismatch means the model code changed what it
computes, or fvcore miscounts an op, and one of the two needs a look."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from spactor.architectures.base import analytic_forward_flops, spec_for
from spactor.plugins import load_plugins
from spactor.registry import ARCHITECTURES
from spactor.train.flops.forward import count_forward_flops

load_plugins()

VOCAB = 512

# Registered architectures that declare no analytic count. A new architecture goes either
# into CASES below (with its formula on its spec) or here, deliberately.
WITHOUT_ANALYTIC_FLOPS: frozenset[str] = frozenset()

# (architecture, config overrides, encoder length, decoder length): every size is tiny;
# the layouts that change which matmuls run (T5 v1.0's ReLU FFN and tied head vs v1.1's
# gated FFN and own head, GQA and plain multi-head, the eager attention math, flex,
# sliding windows, soft-capping, both encoder layouts, decoder depth apart from the
# encoder's).
CASES: list[tuple[str, dict[str, Any], int, int]] = [
    ("t5", {"version": "1.0"}, 64, 24),
    ("t5", {"version": "1.1"}, 96, 16),
    ("t5", {"version": "1.1", "tie_embeddings": True, "num_decoder_layers": 3}, 64, 24),
    ("t5", {"version": "1.0", "attention": "eager"}, 64, 24),
    ("t5", {"version": "1.1", "attention": "flex"}, 64, 24),
    ("llama", {}, 64, 0),
    ("llama", {"num_kv_heads": 4}, 48, 16),
    ("llama", {"tie_embeddings": True, "attention": "eager"}, 64, 0),
    ("llama", {"attention": "flex"}, 64, 0),
    ("t5gemma", {}, 64, 24),
    ("t5gemma", {"sliding_window": 16, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0},
     96, 16),
    ("t5gemma", {"num_decoder_layers": 1, "num_kv_heads": 1}, 64, 24),
    ("encoder", {}, 64, 0),
    ("encoder", {"norm": "rmsnorm", "positions": "relative"}, 96, 0),
]


def _build(arch: str, overrides: dict[str, Any]) -> tuple[Any, torch.nn.Module]:
    entry = ARCHITECTURES.get(arch)
    config = entry.config_cls(size="tiny", **overrides)
    torch.manual_seed(0)
    return config, entry.factory(config, VOCAB)


@pytest.mark.parametrize(("arch", "overrides", "encoder_length", "decoder_length"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_fvcore_matches_the_analytic_count(
    arch: str, overrides: dict[str, Any], encoder_length: int, decoder_length: int
) -> None:
    config, model = _build(arch, overrides)
    counted, unsupported = count_forward_flops(model, encoder_length, decoder_length)
    assert unsupported == {}, f"{arch}: fvcore cannot count {unsupported}"
    expected = analytic_forward_flops(arch, config, VOCAB, encoder_length, decoder_length)
    assert expected is not None
    assert counted == expected, (
        f"{arch} {overrides}: fvcore {counted:,.0f} FLOPs, analytic {expected:,.0f} "
        f"(fvcore - analytic = {counted - expected:,.0f})"
    )


def test_the_formula_is_the_architectures_own() -> None:
    """The spec carries the formula (the runner names no architecture): a T5 base forward
    at 512/114 tokens, by hand from T5's published shape (d 768, d_ff 3072, 12 heads x 64,
    12 + 12 layers, 32,128-row tied head)."""
    d, d_ff, inner, layers, vocab, le, ld = 768, 3072, 768, 12, 32128, 512, 114
    encoder = le * (4 * d * inner + 2 * d * d_ff) + 2 * le * le * inner
    decoder = (ld * (6 * d * inner + 2 * d * d_ff) + le * 2 * d * inner
               + 2 * ld * ld * inner + 2 * ld * le * inner)
    by_hand = 2.0 * (layers * (encoder + decoder) + ld * d * vocab)
    config = ARCHITECTURES.get("t5").config_cls(size="base", version="1.0")
    assert analytic_forward_flops("t5", config, vocab, le, ld) == by_hand


def test_every_architecture_declares_an_analytic_count_or_is_listed() -> None:
    # spactor's own: a plugin another test registers in this process (the example
    # mini_encoder) is its author's to count.
    names = {entry.name for entry in ARCHITECTURES if entry.factory.__module__.startswith("spactor.")}
    declared = {n for n in names if spec_for(n).analytic_flops is not None}
    missing = sorted(names - declared - WITHOUT_ANALYTIC_FLOPS)
    assert not missing, (
        f"architectures without ArchitectureSpec.analytic_flops: {missing}; declare one (and add a case to "
        f"CASES in {__file__}) or list them in WITHOUT_ANALYTIC_FLOPS"
    )
    stale = sorted(n for n in WITHOUT_ANALYTIC_FLOPS if n not in names or n in declared)
    assert not stale, f"WITHOUT_ANALYTIC_FLOPS lists {stale}, which are unregistered or have a count now"
    tested = {case[0] for case in CASES}
    untested = sorted(declared - tested)
    assert not untested, f"architectures whose analytic count no case in CASES checks: {untested}"


def test_an_encoder_has_no_decoder_length() -> None:
    config, _ = _build("encoder", {})
    with pytest.raises(ValueError, match="decoder_length"):
        analytic_forward_flops("encoder", config, VOCAB, 64, 8)
