"""Each rank corrupts only its own rows, and every row gets the corruption it gets on one
rank: the transforms' noise is drawn for the global batch and sliced
(``spactor.objectives.noise``), or, for a transform that does not draw that way, the
transforms run on a global-size batch. Checked in-process for every built-in transform
at 1, 2 and 4 ranks (``corrupt_local_rows`` reads only the rank and the world size)."""

from __future__ import annotations

import pytest
import torch

from spactor.config import load_config
from spactor.contract import implements
from spactor.data.tokenizer import t5_vocab
from spactor.objectives.base import Objective
from spactor.plugins import load_plugins
from spactor.train.builders import build_model, build_objectives, raw_length_for
from spactor.train.parallel import DistInfo
from spactor.train.step import corrupt_local_rows

load_plugins()

RECIPES = [
    ("sc", []),
    ("spactor", []),  # span corruption, then MLM masks of the corrupted input
    ("mlm", ["objectives.mlm_mask.mode=bert"]),  # [M], random ids and kept tokens
    ("ul2", []),  # a denoiser drawn per row, seven corruptions merged
    ("prefix_lm", []),  # a recipe of its own below: prefix-LM alone
]

PREFIX_LM = "model: {arch: t5, size: tiny}\nobjectives:\n  prefix_lm: {}\n"


def corrupted(objectives, original, world_size, seed=3):
    rows = original.shape[0] // world_size
    parts = []
    for rank in range(world_size):
        rng = torch.Generator().manual_seed(seed)  # the same generator on every rank
        local = {"original": original[rank * rows : (rank + 1) * rows]}
        parts.append(corrupt_local_rows(objectives, local, rng, DistInfo(rank=rank, world_size=world_size)))
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


@pytest.mark.parametrize(("recipe", "overrides"), RECIPES, ids=[r for r, _ in RECIPES])
def test_rows_corrupt_alike_on_any_number_of_ranks(recipe, overrides, tmp_path):
    if recipe == "prefix_lm":
        recipe = str(tmp_path / "prefix_lm.yaml")
        (tmp_path / "prefix_lm.yaml").write_text(PREFIX_LM)
    resolved = load_config(recipe, ["model.size=tiny", "data.input_length=64", *overrides])
    vocab = t5_vocab(resolved.cfg.data.tokenizer_vocab_size)
    objectives = build_objectives(resolved, vocab, build_model(resolved, vocab))
    assert all(o.ROW_LOCAL_NOISE or not implements(type(o), "transform") for o in objectives.values())
    length = raw_length_for(objectives, resolved.cfg.data.input_length)
    original = torch.randint(3, vocab.last_sentinel_id, (8, length), generator=torch.Generator().manual_seed(1))
    one = corrupted(objectives, original, 1)
    for world_size in (2, 4):
        assert corrupted(objectives, original, world_size).keys() == one.keys()
        for key, value in corrupted(objectives, original, world_size).items():
            assert torch.equal(value, one[key]), (world_size, key)


def test_a_transform_that_draws_its_own_way_runs_on_the_global_batch():
    class Flip(Objective):
        """Draws one number per row with torch.rand directly (not ROW_LOCAL_NOISE)."""

        KNOBS = ()
        REQUIRES = ("original",)
        PROVIDES = ("encoder_input",)

        def transform(self, batch, rng):
            u = torch.rand(batch["original"].shape[0], generator=rng)
            return {**batch, "encoder_input": torch.where(u[:, None] < 0.5, batch["original"].flip(1),
                                                          batch["original"])}

    resolved = load_config("sc", ["model.size=tiny", "data.input_length=64"])
    vocab = t5_vocab(resolved.cfg.data.tokenizer_vocab_size)
    from spactor.objectives.base import ObjectiveContext

    flip = Flip(None, ObjectiveContext("flip", vocab, 64, None))
    original = torch.arange(8 * 6).view(8, 6)
    one = corrupted({"flip": flip}, original, 1)
    assert torch.equal(corrupted({"flip": flip}, original, 2)["encoder_input"], one["encoder_input"])
