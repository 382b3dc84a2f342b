"""Start-up at scale: the model is built on meta and initialised after sharding, with the
initial weights of today's eager CPU build, bit for bit; one precision policy on 1 and N
ranks."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from spactor.config import load_config
from spactor.objectives.base import Vocab
from spactor.plugins import load_plugins
from spactor.train.meta_init import NotReplayable, record_init
from stage1 import release_stage1  # tests/train/stage1.py
from spactor.train.step import TrainModules
from spactor.train.builders import build_model, build_objectives, build_on_meta

load_plugins()
HERE = Path(__file__).parent
VOCAB = Vocab(size=640, first_sentinel_id=610, mask_id=611)


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(29700 + os.getpid() % 200), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, env=env)


def _resolved(recipe: str, *extra: str):
    return load_config(recipe, ["model.size=tiny", "data.input_length=64", "runtime.device=cpu", *extra])


def _eager(resolved) -> TrainModules:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(resolved, VOCAB)
        return TrainModules(model, build_objectives(resolved, VOCAB, model), VOCAB.pad_id)


def _on_meta(resolved):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, objectives, program = build_on_meta(resolved, VOCAB)
    modules = TrainModules(model, objectives, VOCAB.pad_id)
    assert program is not None
    program.bind(modules)
    return modules, objectives, program


@pytest.mark.parametrize(
    "recipe, extra",
    [(name, ()) for name in ("sc", "spactor", "electra", "fast_electra", "mlm", "causal_lm")]
    + [
        ("sc", ("model.version=1.1",)),  # untied lm_head, gated FFN
        ("causal_lm", ("model.tie_embeddings=true",)),  # llama with a tied head
        ("sc", ("model.arch=t5gemma",)),  # RoPE encoder-decoder, Gemma norms (zero-initialised)
        ("spactor", ("model.arch=t5gemma",)),  # its generator sized from t5gemma's shape
        ("spactor", ("objectives.rtd.embedding_sharing=gdes",)),
        ("spactor", ("objectives.rtd.embedding_sharing=none", "objectives.rtd.generator.hidden_fraction=0.5")),
    ],
)
def test_meta_build_initialises_exactly_like_the_eager_build(recipe, extra):
    resolved = _resolved(recipe, *extra)
    eager = _eager(resolved)
    modules, _, program = _on_meta(resolved)
    assert all(p.is_meta for p in modules.parameters())  # nothing allocated yet
    assert torch.equal(torch.get_rng_state(), torch.manual_seed(0).get_state())  # the build drew nothing
    program.materialize(modules, torch.device("cpu"))
    want, got = eager.state_dict(), modules.state_dict()
    assert list(got) == list(want)
    assert [k for k in want if not torch.equal(want[k], got[k])] == []
    for (name, a), (_, b) in zip(eager.named_buffers(), modules.named_buffers(), strict=True):
        assert torch.equal(a, b), name  # non-persistent buffers (RTD's disallowed ids) too
    assert [p.requires_grad for p in modules.parameters()] == [p.requires_grad for p in eager.parameters()]


def test_modules_dropped_before_materialising_still_advance_the_rng():
    """Stage 2 from the start drops the generator on meta: the discriminator keeps the
    weights it has when the generator was built and then dropped."""
    resolved = _resolved("spactor")
    eager = _eager(resolved)
    release_stage1(eager, dict(eager.objectives.items()), optimizer=None)
    modules, objectives, program = _on_meta(resolved)
    release_stage1(modules, objectives, optimizer=None)
    program.materialize(modules, torch.device("cpu"))
    want, got = eager.state_dict(), modules.state_dict()
    assert list(got) == list(want) and all(torch.equal(want[k], got[k]) for k in want)


def test_a_build_that_writes_weights_otherwise_is_not_replayable():
    with pytest.raises(NotReplayable, match="copy_"), record_init():
        layer = nn.Linear(4, 4)
        with torch.no_grad():
            layer.weight.copy_(torch.ones(4, 4))


def test_a_parameter_without_an_init_is_an_error():
    class NoInit(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))  # a factory value, lost on meta

    with record_init() as program:
        module = NoInit()
    program.bind(module)
    with pytest.raises(RuntimeError, match="scale is never initialised"):
        program.materialize(module, torch.device("cpu"))


def test_sharded_init_on_two_ranks_equals_the_eager_build(tmp_path):
    out = tmp_path / "init.json"
    done = torchrun(2, str(HERE / "dist_meta_init.py"), str(out), "spactor")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["params"] > 50 and report["mismatched"] == []


def test_bf16_one_rank_without_fsdp_matches_two_ranks_with_fsdp(tmp_path):
    """The precision policy: autocast on both, FSDP gathers the blocks in bf16 and keeps
    the rest fp32, so the residual stream is fp32 either way and the losses agree to
    bf16 precision."""
    script = str(HERE / "dist_equivalence.py")
    results = {}
    for nproc in (1, 2):
        out = tmp_path / f"bf16_{nproc}.json"
        done = torchrun(nproc, script, str(out), "runtime.precision=bf16")
        assert done.returncode == 0, done.stderr[-3000:]
        results[nproc] = (json.loads(out.read_text()), Path(f"{out}.residual").read_text())
    (one, residual_one), (two, residual_two) = results[1], results[2]
    assert residual_one == residual_two == "torch.float32"
    assert [sorted(step) for step in one] == [sorted(step) for step in two]
    for a, b in zip(one, two):  # every logged loss of each step
        assert a == pytest.approx(b, rel=1e-2)  # bf16's epsilon is 7.8e-3
    assert one[-1]["loss"] < one[0]["loss"]


def test_flops_are_counted_off_the_training_device(monkeypatch):
    """FLOP counting builds an unsharded copy of the model: on meta, or on CPU where the
    step cannot trace on meta, never on the GPU the run trains on (rank 0 counts and
    broadcasts)."""
    import spactor.train.flops.counting as flops
    from spactor.train.parallel import DistInfo
    from spactor.train.loop import count_flops

    seen: list[str] = []
    real = flops.flops_report

    def spy(resolved, *args, device="cpu", **kwargs):
        seen.append(str(device))
        return real(resolved, *args, device=device, **kwargs)

    monkeypatch.setattr(flops, "flops_report", spy)
    for recipe, where in (("sc", ["meta"]), ("spactor", ["meta"])):
        seen.clear()
        resolved = _resolved(recipe, "data.tokenizer_vocab_size=512", "trainer.batch_size=4")
        tracker = count_flops(resolved, torch.device("cuda"), DistInfo())
        # both trace on meta: no step has data-dependent shapes (static-shape MLM and RTD)
        assert seen[0] == "meta" and seen[-1] == where[-1], recipe
        assert tracker is not None and tracker.report.to_json() == flops.flops_report(resolved).to_json()


@pytest.mark.parametrize("recipe", ["sc", "quickstart"])
def test_flops_traced_on_meta_equal_those_traced_on_cpu(recipe):
    import spactor.train.flops.counting as flops

    resolved = _resolved(recipe, "data.tokenizer_vocab_size=512", "trainer.batch_size=4")
    assert flops.flops_report(resolved, device="meta").to_json() == flops.flops_report(resolved, device="cpu").to_json()


@pytest.mark.parametrize("recipe", ["sc", "spactor"])
def test_a_run_built_on_meta_logs_the_losses_of_an_eager_build(tiny_overrides, tmp_path, monkeypatch, recipe):
    import spactor.train.builders as builders
    import spactor.train.loop as trainer
    from spactor.train.metrics import read_metrics

    def run(name: str) -> list[float]:
        resolved = load_config(recipe, [*tiny_overrides, f"run.dir={tmp_path / name}", "trainer.max_steps=3",
                                        "lr_schedule.warmup_steps=100", "model.dropout=0.1",
                                        "runtime.count_flops=false"])
        trainer.train(resolved)
        return [r["loss"] for r in read_metrics(tmp_path / name / "metrics.jsonl")]

    on_meta = run("meta")

    @contextlib.contextmanager
    def refuse():
        raise NotReplayable("forced for the test")
        yield

    monkeypatch.setattr(builders, "record_init", refuse)
    with pytest.warns(UserWarning, match="building on CPU"):
        eager = run("eager")
    assert on_meta == eager  # bitwise on CPU
