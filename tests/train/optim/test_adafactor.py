"""spactor's Adafactor against Mesh TF's AdafactorOptimizer (re-implemented in
adafactor_reference.py), on one rank here and on two FSDP2 ranks (gloo) through
adafactor_dist.py; no host syncs in step(); constant all-reduces per step; checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from spactor.train.optim.adafactor import Adafactor, factored_dims
from spactor.train.checkpoint import Checkpointer

sys.path.insert(0, str(Path(__file__).parent))
from adafactor_reference import LRS, SHAPES, MeshTFAdafactor, make_grads, make_params  # noqa: E402

HERE = Path(__file__).parent
SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2", "item",
            "equal", "is_nonzero"}


class CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def test_factoring_rule_is_mesh_tf_s():
    assert factored_dims((32, 12), 128) is None  # T5's relative-bias table: a full second moment
    assert factored_dims((512, 64), 128) is None
    assert factored_dims((96,), 128) is None
    assert factored_dims((128, 128), 128) == (0, 1)
    assert factored_dims((32128, 768), 128) == (0, 1)
    assert factored_dims((4, 130, 140), 128) == (1, 2)
    assert factored_dims((150, 3, 129), 128) == (0, 2)
    assert factored_dims((32, 12), 8) == (0, 1)


@pytest.mark.parametrize("lr_type", [float, torch.tensor])  # the runner's python float, or a tensor
def test_matches_mesh_tf_on_one_rank(lr_type):
    shapes = [s for s, _ in SHAPES]
    params = [torch.nn.Parameter(p) for p in make_params(shapes)]
    ref = MeshTFAdafactor(params)
    opt = Adafactor(params, lr=0.0)
    for step, lr in enumerate(LRS):
        grads = make_grads(shapes, step)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.param_groups[0]["lr"] = lr_type(lr)
        opt.step()
        ref.apply(grads, lr)
        for p, q, (shape, why) in zip(params, ref.params, SHAPES):
            assert torch.isfinite(p).all(), why
            msg = f"{shape} ({why}), step {step}"
            torch.testing.assert_close(p.detach().double(), q, rtol=0, atol=1e-6, msg=msg)
    # what it keeps: factored moments only where both large dims are >= 128
    kinds = {tuple(p.shape): sorted(k for k in opt.state[p] if k != "step") for p in params}
    assert kinds[(32, 12)] == ["variance"] and kinds[(200, 64)] == ["variance"]
    assert kinds[(160, 130)] == ["col_var", "row_var"] and kinds[(4, 130, 140)] == ["col_var", "row_var"]
    assert float(opt.state[params[0]]["step"]) == len(LRS)


def test_the_update_uses_exactly_the_group_lr():
    """No min(lr, 1/sqrt(t)) on top: at step 9 with lr 0.5 > 1/sqrt(9),
    torch.optim.Adafactor would step with 1/3; the update here is lr · RMS(p) · x."""
    p = torch.nn.Parameter(torch.ones(4, 4))
    opt = Adafactor([p], lr=0.5)
    for _ in range(8):
        p.grad = torch.zeros(4, 4)
        opt.step()
    before = p.detach().clone()
    p.grad = torch.full((4, 4), 3.0)
    opt.step()
    v = (1 - 9**-0.8) * 1e-30 + 9**-0.8 * (9.0 + 1e-30)
    x = 3.0 / v**0.5
    expected = before - 0.5 * 1.0 * x / max(1.0, x)
    torch.testing.assert_close(p.detach(), expected)


def test_no_host_sync_in_step():
    shapes = [s for s, _ in SHAPES]
    params = [torch.nn.Parameter(p) for p in make_params(shapes)]
    opt = Adafactor(params, lr=1e-2)
    for step in range(3):
        for p, g in zip(params, make_grads(shapes, step)):
            p.grad = g
        with CountOps() as ops:
            opt.step()
        syncs = {k: v for k, v in ops.counts.items() if k in SYNC_OPS}
        assert syncs == {}, f"step {step}: {syncs}"
        assert ops.counts, "the dispatch mode saw nothing"


def test_zero_gradients_leave_weights_unchanged_and_finite():
    """DCP's state-dict helpers initialise optimizer state with one step of zero
    gradients at lr 0; rows of grad² that are all ε1 must not become NaN."""
    params = [torch.nn.Parameter(p) for p in make_params([(160, 130), (32, 12), (7,)])]
    before = [p.detach().clone() for p in params]
    opt = Adafactor(params, lr=1e-2)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    for p, b in zip(params, before):
        assert torch.equal(p.detach(), b)
    for state in opt.state.values():
        assert all(torch.isfinite(v).all() for v in state.values())


class Table(torch.nn.Module):
    def __init__(self, shapes: list[tuple[int, ...]]) -> None:
        super().__init__()
        self.weights = torch.nn.ParameterList([torch.nn.Parameter(p) for p in make_params(shapes)])


def _train(model: Table, opt: Adafactor, steps: range) -> None:
    shapes = [tuple(p.shape) for p in model.weights]
    for step in steps:
        for p, g in zip(model.weights, make_grads(shapes, step)):
            p.grad = g
        opt.param_groups[0]["lr"] = LRS[step % len(LRS)]
        opt.step()
        opt.zero_grad(set_to_none=True)


def test_checkpoint_round_trip_resumes_bitwise(tmp_path):
    shapes = [s for s, _ in SHAPES]
    straight = Table(shapes)
    opt = Adafactor(straight.parameters())
    _train(straight, opt, range(3))
    ckpt = Checkpointer(tmp_path / "ckpt")
    ckpt.save(3, straight, opt, shared={}, local={})
    _train(straight, opt, range(3, 6))

    resumed = Table(shapes)
    with torch.no_grad():
        for p in resumed.weights:
            p.zero_()
    opt2 = Adafactor(resumed.parameters())
    loaded = ckpt.load(resumed, opt2)
    assert loaded is not None and loaded.step == 3
    _train(resumed, opt2, range(3, 6))
    for p, q in zip(straight.weights, resumed.weights):
        assert torch.equal(p, q)
    for p, q in zip(straight.weights, resumed.weights):
        for key, value in opt.state[p].items():
            assert torch.equal(value, opt2.state[q][key]), key


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(29500 + (os.getpid() + 7) % 1000), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(check=False, args=cmd, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("adafactor_dist")
    done = torchrun(2, str(HERE / "adafactor_dist.py"), str(out))
    assert done.returncode == 0, done.stderr[-4000:]
    return {"result": json.loads((out / "result.json").read_text()), "dir": out}


def test_matches_mesh_tf_on_two_fsdp_ranks(two_ranks):
    result = two_ranks["result"]
    assert result["placements"]["(131, 128)"] == "S(0)"
    assert result["local_rows"]["(131, 128)"] == [66, 65]  # uneven shards
    assert result["local_rows"]["(1, 130)"] == [1, 0]  # an empty shard
    for name, err in result["max_abs_error"].items():
        assert err <= 1e-6, (name, err)


def test_all_reduces_per_step_do_not_grow_with_the_parameter_count(two_ranks):
    counts = two_ranks["result"]["collectives_per_step"]
    assert set(counts) == {"3", "30"}
    for n, per_step in counts.items():
        for ops in per_step:
            assert ops.get("allreduce_", 0) <= 4, (n, ops)
            assert sum(ops.values()) <= 4, (n, ops)
    assert counts["3"] == counts["30"]


def test_two_rank_checkpoint_resumes_on_one_rank(two_ranks):
    """The sharded optimizer state (row_var/variance Shard(0), col_var replicated)
    reloads into plain tensors and continues exactly as Mesh TF's reference does."""
    shapes = [s for s, _ in SHAPES]
    model = Table(shapes)
    opt = Adafactor(model.parameters())
    loaded = Checkpointer(two_ranks["dir"] / "ckpt").load(model, opt)
    assert loaded is not None and loaded.step == 3
    ref = MeshTFAdafactor(make_params(shapes))
    for step in range(3):
        ref.apply(make_grads(shapes, step), LRS[step])
    for p, q in zip(model.weights, ref.params):
        torch.testing.assert_close(p.detach().double(), q, rtol=0, atol=1e-6)
    _train(model, opt, range(3, 6))
    for step in range(3, 6):
        ref.apply(make_grads(shapes, step), LRS[step])
    for p, q in zip(model.weights, ref.params):
        torch.testing.assert_close(p.detach().double(), q, rtol=0, atol=1e-6)


def test_a_torch_adafactor_checkpoint_is_refused_in_one_line(tmp_path):
    from spactor.config import ConfigError

    model = Table([(160, 130), (32, 12), (96,)])
    old = torch.optim.Adafactor(model.parameters(), lr=1e-2, eps=(1e-15, 1e-3), foreach=True)
    _train(model, old, range(2))
    ckpt = Checkpointer(tmp_path / "ckpt")
    ckpt.save(2, model, old, shared={}, local={})
    with pytest.raises(ConfigError, match=r"written by torch\.optim\.Adafactor") as err:
        ckpt.load(model, Adafactor(model.parameters()))
    assert "\n" not in str(err.value)


def test_config_keys_are_validated():
    from spactor.config import ConfigError, load_config
    from spactor.plugins import load_plugins

    load_plugins()
    r = load_config("sc", ["model.size=tiny", "optimizer.min_dim_size_to_factor=64"])
    assert r.optimizer.config.min_dim_size_to_factor == 64 and r.optimizer.config.eps1 == 1e-30
    rule = "optimizer.min_dim_size_to_factor: 0 — must be a positive integer"
    with pytest.raises(ConfigError, match=rule):
        load_config("sc", ["model.size=tiny", "optimizer.min_dim_size_to_factor=0"])
    with pytest.raises(ConfigError, match="optimizer.clipping_threshold"):
        load_config("sc", ["model.size=tiny", "optimizer.clipping_threshold=-1"])
