"""The step contract: declared batch fields (checked at config time and held to what the
code reads and writes), the memoising shared forward, one count path, knobs as state."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from spactor.architectures.t5 import T5Config
from spactor.architectures.t5_plugin import build_t5
from spactor.config import ConfigError, load_config
from spactor.contract import RAW_FIELDS, RUNNER_FIELDS, check_contract, implements, objective_class
from spactor.data.tokenizer import t5_vocab
from spactor.objectives.base import (
    Batch,
    MicroBatchContext,
    Objective,
    ObjectiveContext,
    SharedForward,
    Vocab,
    loss_counts,
    unpadded_key,
)
from spactor.objectives.mlm import MLM, MLMConfig
from spactor.objectives.mlm_mask import MlmMask, MlmMaskConfig
from spactor.objectives.rtd import RTD
from spactor.objectives.span_corruption import SpanCorruption, SpanCorruptionConfig
from spactor.plugins import load_plugins
from spactor.registry import OBJECTIVES
from spactor.train.builders import build_model, build_objectives, raw_length_for
from spactor.train.step import TrainModules, apply_transforms

load_plugins()

VOCAB = Vocab(size=512, first_sentinel_id=499, mask_id=500)
LENGTH = 32


# -- check_contract on declarations alone ---------------------------------------------------


class Reads(Objective):
    REQUIRES = ("mlm_labels",)

    def loss(self, batch, forward, ctx):  # a loss-only objective
        return super().loss(batch, forward, ctx)


class Rewrites(Objective):
    REQUIRES = ("original",)
    PROVIDES = ("encoder_input",)

    def transform(self, batch, rng):
        return batch


def test_a_missing_field_names_the_objective_the_field_and_who_provides_it():
    with pytest.raises(ConfigError) as err:
        check_contract([("span_corruption", SpanCorruption), ("mine", Reads)])
    assert str(err.value) == ("objectives.mine: needs 'mlm_labels', which no objective before it provides "
                              "(mlm_mask provides it)")
    check_contract([("mine", Reads), ("mask", MlmMask)])  # a transform runs before every loss

    class Odd(Reads):
        REQUIRES = ("nothing_makes_this",)

    with pytest.raises(ConfigError, match="'nothing_makes_this', .*no registered objective provides it"):
        check_contract([("odd", Odd)])


def test_rewriting_what_an_earlier_objective_derived_fields_from():
    with pytest.raises(ConfigError) as err:
        check_contract([("mask", MlmMask), ("corrupt", Rewrites)])
    assert str(err.value).startswith("objectives.corrupt: rewrites 'encoder_input' after mask read it")
    assert str(err.value).endswith("put corrupt before mask")
    # RTD rewrites the encoder input too, but it reads the masks: it knows what it changes.
    check_contract([("corrupt", Rewrites), ("mask", MlmMask), ("rtd", RTD)])


def test_every_registered_objective_class_is_found_unbuilt():
    for entry in OBJECTIVES:
        cls = objective_class(entry.name)
        assert cls is not None and issubclass(cls, Objective), entry.name


# -- the declarations are what the code does ------------------------------------------------


class Recording(dict):
    """A batch that notes the fields read from it (``batch[k]``, ``batch.get(k)``)."""

    def __init__(self, data: Batch, reads: set[str]) -> None:
        super().__init__(data)
        self.reads = reads

    def __getitem__(self, key: str) -> Any:
        self.reads.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.reads.add(key)
        return super().get(key, default)


def _written(before: Batch, after: Batch) -> set[str]:
    return {k for k, v in after.items() if k not in before or v is not before[k]}


def run_roles(objectives: dict[str, Objective], model: Any, original: torch.Tensor, vocab: Vocab):
    """The runner's order (transforms, modifies, losses on one shared forward), noting what
    each objective reads and writes."""
    reads = {n: set() for n in objectives}
    writes = {n: set() for n in objectives}
    rng = torch.Generator().manual_seed(0)
    batch: Batch = {"original": original, "encoder_input": original}
    for name, obj in objectives.items():
        out = obj.transform(Recording(batch, reads[name]), rng)
        writes[name] |= _written(batch, out)
        batch = dict(out)
    batch["noise_seed"] = torch.arange(original.shape[0])
    # The runner counts before the modifies (what each count reads is that objective's read)
    counts = {}
    for name, obj in objectives.items():
        counts.update(loss_counts([obj], Recording(batch, reads[name])))
    ctx = MicroBatchContext(counts, vocab.pad_id, with_metrics=True)
    outputs = {}
    for name, obj in objectives.items():
        out, outputs[name] = obj.modify(Recording(batch, reads[name]), model, rng, ctx)
        writes[name] |= _written(batch, out)
        batch = dict(out)
    forward = SharedForward(model, batch, vocab.pad_id)
    losses = {name: obj.loss(Recording(batch, reads[name]), forward, ctx) for name, obj in objectives.items()}
    return batch, reads, writes, outputs, losses


RECIPES = [
    ("sc", []),
    ("spactor", []),
    ("spactor", ["objectives.rtd.embedding_sharing=gdes"]),
    ("electra", []),
    ("mlm", []),
    ("ul2_rtd", []),
    ("causal_lm", []),
    ("ul2_decoder", []),
]


def build_recipe(recipe: str, overrides: list[str]):
    resolved = load_config(recipe, ["model.size=tiny", "data.input_length=64", *overrides])
    vocab = t5_vocab(resolved.cfg.data.tokenizer_vocab_size)
    torch.manual_seed(0)
    model = build_model(resolved, vocab)
    objectives = build_objectives(resolved, vocab, model)
    length = raw_length_for(objectives, resolved.cfg.data.input_length)
    original = torch.randint(3, vocab.last_sentinel_id, (2, length), generator=torch.Generator().manual_seed(1))
    return model, objectives, original, vocab


@pytest.mark.parametrize(("recipe", "overrides"), RECIPES)
def test_declarations_match_what_objectives_read_and_write(recipe, overrides):
    model, objectives, original, vocab = build_recipe(recipe, overrides)
    _, reads, writes, _, _ = run_roles(objectives, model, original, vocab)
    for name, obj in objectives.items():
        cls = type(obj)
        declared = set(cls.REQUIRES) | set(cls.PROVIDES) | set(RAW_FIELDS) | set(RUNNER_FIELDS)
        assert reads[name] <= declared, (name, reads[name] - declared)
        assert set(cls.REQUIRES) <= reads[name], (name, set(cls.REQUIRES) - reads[name])
        # A provided view may carry its no-padding marker (``unpadded_key``): metadata of
        # that view, read by its presence only, never a field of its own.
        markers = {unpadded_key(v) for v in cls.PROVIDES}
        assert writes[name] <= set(cls.PROVIDES) | markers, (name, writes[name] - set(cls.PROVIDES) - markers)
        optional = {"encoder_embeds"} - writes[name]  # only with embedding_sharing: gdes
        assert set(cls.PROVIDES) - optional <= writes[name], name
        if not (implements(cls, "transform") or implements(cls, "modify")):
            assert not cls.PROVIDES, name  # a loss writes nothing another objective could read
    if "gdes" in str(overrides):
        assert "encoder_embeds" in writes["rtd"]


@pytest.mark.parametrize(("recipe", "overrides"), RECIPES)
def test_every_loss_counts_its_items_with_count(recipe, overrides):
    """The counts a loss reports (what evaluation sums) are the runner's counts from
    ``count``/``aux_counts`` (what training normalises by), and counting the modified
    batch gives the same: a count is known before the forward."""
    model, objectives, original, vocab = build_recipe(recipe, overrides)
    batch, _, _, outputs, losses = run_roles(objectives, model, original, vocab)
    counts = {k: v.float() for k, v in loss_counts(objectives.values(), batch).items()}
    reported = {}
    for name, out in [*outputs.items(), *losses.items()]:
        if out.loss is not None:
            reported[name] = out.loss.count
        reported.update({k: term.count for k, term in out.aux_losses.items()})
    assert reported and set(reported) == set(counts)
    for key, count in reported.items():
        assert torch.equal(count.float(), counts[key]), key


# -- the shared forward -----------------------------------------------------------------------


def _counting(model: Any) -> dict[str, int]:
    calls = {"encode": 0, "decode": 0}
    for method in calls:
        original = getattr(model, method)

        def counted(*args, _original=original, _method=method, **kwargs):
            calls[_method] += 1
            return _original(*args, **kwargs)

        setattr(model, method, counted)  # an instance attribute, shadowing the method
    return calls


def _ctx(name: str, model: Any) -> ObjectiveContext:
    return ObjectiveContext(name=name, vocab=VOCAB, input_length=LENGTH, model=model)


def test_losses_share_one_encoder_and_one_decoder_pass():
    torch.manual_seed(0)
    model = build_t5(T5Config(size="tiny", dropout=0.0), VOCAB.size)
    objectives: dict[str, Objective] = {
        "span_corruption": SpanCorruption(SpanCorruptionConfig(), _ctx("span_corruption", model)),
        # a second decoder-side loss on the same targets (with a z-loss of its own)
        "span_corruption_z": SpanCorruption(SpanCorruptionConfig(z_loss=1e-4), _ctx("span_corruption_z", model)),
        "mlm_mask": MlmMask(MlmMaskConfig(), _ctx("mlm_mask", model)),
        "mlm": MLM(MLMConfig(), _ctx("mlm", model)),  # on the encoder states
    }
    length = objectives["span_corruption"].raw_length(LENGTH)  # both corrupt the raw chunk
    original = torch.randint(3, VOCAB.last_sentinel_id, (3, length), generator=torch.Generator().manual_seed(2))
    batch = apply_transforms(objectives, {"original": original}, torch.Generator().manual_seed(3))
    modules = TrainModules(model, objectives, VOCAB.pad_id)
    calls = _counting(model)
    losses, _ = modules(batch, torch.Generator().manual_seed(4), modules.context(batch))
    weights = modules.loss_weights(losses)
    assert calls == {"encode": 1, "decode": 1}
    assert set(losses) == {"span_corruption", "span_corruption_z", "span_corruption_z_z", "mlm"}
    # Each loss is what it is on a forward of its own.
    for name in ("span_corruption", "mlm"):
        ctx = MicroBatchContext.of([objectives[name]], batch, VOCAB.pad_id)
        alone = objectives[name].loss(batch, SharedForward(model, batch, VOCAB.pad_id), ctx).loss
        torch.testing.assert_close(losses[name][0], alone.total, rtol=0, atol=0)
    assert calls == {"encode": 3, "decode": 2}  # the two forwards above: nothing shared across them
    torch.testing.assert_close(losses["span_corruption"][0], losses["span_corruption_z"][0], rtol=0, atol=0)
    sum(weights[n] * t / c for n, (t, c) in losses.items()).backward()  # one graph through the shared passes
    assert model.token_embedding.weight.grad is not None


def test_a_view_nobody_asks_for_is_not_computed():
    model = build_t5(T5Config(size="tiny", dropout=0.0), VOCAB.size)
    calls = _counting(model)
    ids = torch.randint(3, 400, (2, LENGTH))
    forward = SharedForward(model, {"encoder_input": ids, "original": ids}, VOCAB.pad_id)
    assert calls == {"encode": 0, "decode": 0}
    assert forward.encode() is forward.encode()
    assert forward.encode("original") is not forward.encode()  # another view, its own pass
    assert calls == {"encode": 2, "decode": 0}


# -- knobs are runtime state -----------------------------------------------------------------


def test_set_knob_leaves_the_config_alone():
    cfg = MlmMaskConfig(ratio=0.15)
    a, b = MlmMask(cfg, _ctx("a", None)), MlmMask(cfg, _ctx("b", None))  # one config, two objectives
    a.set_knob("ratio", 0.4)
    a.set_knob("enabled", 0)
    assert cfg.ratio == 0.15 and cfg.enabled is True
    assert a.knob("ratio") == 0.4 and a.knob("enabled") is False and a.is_off()
    assert b.knobs() == {"ratio": 0.15, "enabled": 1.0}
    with pytest.raises(KeyError, match="no knob 'weight'"):
        a.set_knob("weight", 1.0)


# -- evaluation: the clean pass is a configured pass on a list of objective names -----------


def test_evaluate_runs_the_clean_pass_on_the_objectives_it_is_given():
    from spactor.train.eval_passes import CleanPass
    from spactor.train.parallel import DistInfo
    from spactor.train.step import evaluate

    model, objectives, original, vocab = build_recipe("spactor", [])
    modules = TrainModules(model, objectives, vocab.pad_id)
    batches = [{"original": original}, {"original": original.roll(1, dims=1)}]

    def run(clean):
        rng = torch.Generator().manual_seed(5)
        passes = [] if clean is None else [CleanPass(clean)]
        return evaluate(modules, iter(batches), 2, rng, DistInfo(), None, torch.device("cpu"), passes=passes)

    default = run(["span_corruption"])  # what the implicit curriculum's last stage runs
    assert "val/clean/loss/span_corruption" in default and "val/clean/loss/rtd" not in default
    assert not any(k.startswith("val/clean/") for k in run([]))
    assert run(None) == run([])
    assert run([]) == {k: v for k, v in default.items() if "/clean/" not in k}  # the noisy pass unchanged


def test_one_rule_for_does_this_plugin_implement_a_role():
    """"Does this objective (schedule) implement X" has one definition,
    ``spactor.contract.implements``: no module compares a method with the base class's."""
    import re
    from pathlib import Path

    import spactor

    pattern = re.compile(r"\bis (not )?(Objective|Schedule)\.[a-z_]+\b")
    found = [f"{path}:{n}" for path in Path(spactor.__file__).parent.rglob("*.py")
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert found == []
