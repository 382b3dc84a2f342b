"""Config validation (spactor.validation): every rule gives one line naming the key, the
value and the rule, before any work; the CLI prints it and exits with code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from spactor.config import ConfigError, load_config, recipe_names
from spactor.plugins import load_plugins

load_plugins()


def error(recipe: str, overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(recipe, overrides)
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


# (recipe, overrides, the start of the message: "<key>: <value> —", a piece of the rule)
CASES = [
    # trainer
    ("sc", ["trainer.max_steps=0"], "trainer.max_steps: 0 —", "positive integer"),
    ("sc", ["trainer.batch_size=-8"], "trainer.batch_size: -8 —", "positive integer"),
    ("sc", ["trainer.grad_accum_steps=0"], "trainer.grad_accum_steps: 0 —", "positive integer"),
    (
        "sc",
        ["trainer.grad_accum_steps=3"],
        "trainer.grad_accum_steps: 3 —",
        "must divide trainer.batch_size 2048",
    ),
    ("sc", ["trainer.keep_checkpoints=0"], "trainer.keep_checkpoints: 0 —", ">= 1"),
    ("sc", ["trainer.log_every=0"], "trainer.log_every: 0 —", ">= 1"),
    ("sc", ["trainer.eval_every=-1"], "trainer.eval_every: -1 —", ">= 0"),
    ("sc", ["trainer.checkpoint_every=-5"], "trainer.checkpoint_every: -5 —", ">= 0"),
    ("sc", ["trainer.eval_batches=-1"], "trainer.eval_batches: -1 —", ">= 0"),
    ("sc", ["trainer.seed=-1"], "trainer.seed: -1 —", ">= 0"),
    ("sc", ["trainer.clip_grad_norm=0"], "trainer.clip_grad_norm: 0.0 —", "> 0"),
    # data
    ("quickstart", ["data.input_length=1"], "data.input_length: 1 —", ">= 2"),
    ("sc", ["data.validation_fraction=1.0"], "data.validation_fraction: 1.0 —", "[0, 1)"),
    ("sc", ["data.validation_fraction=-0.1"], "data.validation_fraction: -0.1 —", "[0, 1)"),
    ("sc", ["data.num_workers=-1"], "data.num_workers: -1 —", ">= 0"),
    ("sc", ["data.tokenizer_vocab_size=0"], "data.tokenizer_vocab_size: 0 —", "positive integer"),
    ("sc", ["data.source=jsnl"], "data.source: 'jsnl' —", "did you mean 'jsonl'?"),
    ("sc", ["data.document_separator=newline"], "data.document_separator: 'newline' —", "eos, none"),
    (
        "electra",
        ["objectives.rtd.generator.head=mlp"],
        "objectives.rtd.generator.head: 'mlp' —",
        "linear, electra",
    ),
    ("sc", ["data.source=jsonl"], "data.paths: [] —", "needs at least one file or glob"),
    ("sc", ["data.source_options.min_char=3"], "data.source_options.min_char: 3 —", "valid: holdout_tasks, min_chars"),
    (
        "sc",
        ["data.source=text", "data.paths=[x.txt]", "data.source_options.max_document_chars=0"],
        "data.source_options.max_document_chars: 0 —",
        "positive integer",
    ),
    # runtime
    ("sc", ["runtime.device=gpu"], "runtime.device: 'gpu' —", "one of cpu, cuda, auto"),
    ("sc", ["runtime.precision=fp16"], "runtime.precision: 'fp16' —", "one of fp32, bf16, auto"),
    # model
    ("sc", ["model.size=huge"], "model.size: 'huge' —", "one of tiny, small, base, large"),
    ("sc", ["model.version=2.0"], "model.version: '2.0' —", "one of 1.0, 1.1"),
    ("sc", ["model.d_model=0"], "model.d_model: 0 —", "positive integer"),
    ("sc", ["model.num_layers=-2"], "model.num_layers: -2 —", "positive integer"),
    ("sc", ["model.dropout=1.5"], "model.dropout: 1.5 —", "[0, 1)"),
    ("sc", ["model.attention=flash"], "model.attention: 'flash' —", "one of sdpa, eager"),
    (
        "electra",
        ["model.max_positions=128"],
        "model.max_positions: 128 —",
        "at least data.input_length (512)",
    ),
    # objectives: ranges by field name
    (
        "sc",
        ["objectives.span_corruption.noise_density=0"],
        "objectives.span_corruption.noise_density: 0.0 —",
        "(0, 1)",
    ),
    (
        "sc",
        ["objectives.span_corruption.noise_density=1.0"],
        "objectives.span_corruption.noise_density: 1.0 —",
        "(0, 1)",
    ),
    (
        "sc",
        ["objectives.span_corruption.noise_density=nan"],
        "objectives.span_corruption.noise_density: nan —",
        "(0, 1)",
    ),
    (
        "sc",
        ["objectives.span_corruption.mean_noise_span_length=0"],
        "objectives.span_corruption.mean_noise_span_length: 0.0 —",
        "> 0",
    ),
    ("sc", ["objectives.span_corruption.weight=-1"], "objectives.span_corruption.weight: -1.0 —", ">= 0"),
    ("sc", ["objectives.span_corruption.weight=inf"], "objectives.span_corruption.weight: inf —", "finite"),
    ("spactor", ["objectives.mlm_mask.ratio=1.5"], "objectives.mlm_mask.ratio: 1.5 —", "[0, 1]"),
    ("spactor", ["objectives.mlm_mask.ratio=-0.1"], "objectives.mlm_mask.ratio: -0.1 —", "[0, 1]"),
    ("spactor", ["objectives.rtd.temperature=0"], "objectives.rtd.temperature: 0.0 —", "> 0"),
    ("spactor", ["objectives.rtd.generator_weight=-1"], "objectives.rtd.generator_weight: -1.0 —", ">= 0"),
    (
        "spactor",
        ["objectives.rtd.generator.layers=0"],
        "objectives.rtd.generator.layers: 0 —",
        "positive integer",
    ),
    ("spactor", ["objectives.rtd.head_hidden=-1"], "objectives.rtd.head_hidden: -1 —", "positive integer"),
    ("spactor", ["objectives.rtd.generator.dropout=1"], "objectives.rtd.generator.dropout: 1.0 —", "[0, 1)"),
    (
        "spactor",
        ["objectives.rtd.embedding_sharing=both"],
        "objectives.rtd.embedding_sharing: 'both' —",
        "one of",
    ),
    ("spactor", ["objectives.mlm_mask.mode=bart"], "objectives.mlm_mask.mode: 'bart' —", "replace_all"),
    # schedules
    ("spactor", ["schedules.two_stage.tau=-1"], "schedules.two_stage.tau: -1 —", ">= 0"),
    ("spactor_adaptive", ["schedules.adaptive.max_tau=-5"], "schedules.adaptive.max_tau: -5 —", ">= 0"),
    # cross-field: sentinels, generator width
    ("sc", ["data.input_length=4096"], "data.input_length: 4096 —", "only 100 sentinels"),
    ("quickstart", ["data.input_length=2"], "data.input_length: 2 —", "too short for span corruption"),
    (
        "spactor",
        ["objectives.rtd.generator.d_model=1024"],
        "objectives.rtd.generator.d_model: 1024 —",
        "wider than the discriminator (hidden size 768)",
    ),
    (
        "electra",
        ["objectives.rtd.generator.d_model=1024", "objectives.rtd.generator.heads=16"],
        "objectives.rtd.generator.d_model: 1024 —",
        "wider than the discriminator (hidden size 768)",
    ),
    (
        "spactor",
        ["objectives.rtd.generator.d_model=200"],
        "objectives.rtd.generator.d_model: 200 —",
        "d_kv 64",
    ),
    (
        "spactor",
        ["objectives.rtd.frozen=true"],
        "objectives.rtd.embedding_sharing: 'shared' —",
        "frozen generator",
    ),
    # knob paths, checked by building the schedules against the objectives' KNOBS
    (
        "spactor_anneal",
        ["schedules.rtd_weight.knob=objectives.rtd.wieght"],
        "schedules.rtd_weight.knob: unknown knob 'objectives.rtd.wieght'",
        "did you mean 'objectives.rtd.weight'?",
    ),
    (
        "spactor",
        ["schedules.t.type=temperature", "schedules.t.knob=objectives.mlm_mask.temperature"],
        "schedules.t.knob: unknown knob 'objectives.mlm_mask.temperature'",
        "valid knobs:",
    ),
    (
        "spactor_anneal",
        ["schedules.mask_off.knob=objectives.rtd.weight"],
        "schedules 'rtd_weight' and 'mask_off' both drive knob 'objectives.rtd.weight'",
        "one schedule only",
    ),
    # optimizer / LR schedule
    ("electra", ["optimizer.betas=[0.9,1.0]"], "optimizer.betas[1]: 1.0 —", "[0, 1)"),
    ("electra", ["optimizer.eps=0"], "optimizer.eps: 0.0 —", "> 0"),
    ("electra", ["optimizer.weight_decay=-0.1"], "optimizer.weight_decay: -0.1 —", ">= 0"),
    ("electra", ["lr_schedule.lr=0"], "lr_schedule.lr: 0.0 —", "> 0"),
    ("electra", ["lr_schedule.decay_steps=0"], "lr_schedule.decay_steps: 0 —", "positive integer"),
    ("sc", ["lr_schedule.warmup_steps=-1"], "lr_schedule.warmup_steps: -1 —", ">= 0"),
]


@pytest.mark.parametrize("recipe, overrides, start, rule", CASES, ids=[" ".join(c[1]) for c in CASES])
def test_each_rule_is_one_line_with_key_value_and_rule(recipe, overrides, start, rule):
    msg = error(recipe, overrides)
    assert msg.startswith(start), msg
    assert rule in msg, msg


def test_sentinel_error_gives_the_numbers_and_the_longest_input_that_fits():
    msg = error("sc", ["data.input_length=4096"])
    assert "noise_density 0.15, mean_noise_span_length 3.0" in msg
    assert "at least 227 noise spans" in msg and "data.input_length <= 1809" in msg
    load_config("sc", ["data.input_length=1809"])  # the limit itself is fine
    assert "at least 101 noise spans" in error("sc", ["data.input_length=1810"])
    # Longer spans need fewer sentinels: the same length is then fine.
    load_config("sc", ["data.input_length=4096", "objectives.span_corruption.mean_noise_span_length=8"])
    # Absurd lengths answer at once.
    assert "data.input_length <= 1809" in error("sc", ["data.input_length=100000000"])


def test_objective_order_and_presence(tmp_path):
    def recipe(text: str) -> str:
        path = tmp_path / f"r{len(list(tmp_path.iterdir()))}.yaml"
        path.write_text("model: {arch: t5, size: tiny}\n" + text)
        return str(path)

    # From the objectives' REQUIRES / PROVIDES (spactor.contract), no plugin names in the core.
    msg = error(recipe("objectives:\n  mlm_mask: {}\n  span_corruption: {}\n"), [])
    assert msg == ("objectives.span_corruption: rewrites 'encoder_input' after mlm_mask read it, so mlm_mask's "
                   "'mlm_mask', 'mlm_index', 'mlm_labels' would describe an input that is gone; "
                   "put span_corruption before mlm_mask")
    msg = error(recipe("objectives:\n  span_corruption: {}\n  rtd: {}\n"), [])
    assert msg == "objectives.rtd: needs 'mlm_mask', which no objective before it provides (mlm_mask provides it)"
    msg = error(recipe("objectives:\n  ul2: {}\n  mlm: {}\n"), [])
    assert msg == "objectives.mlm: needs 'mlm_mask', which no objective before it provides (mlm_mask provides it)"
    # The runner calls every transform before any modify: rtd listed first still gets the masks.
    load_config(recipe("objectives:\n  rtd: {}\n  span_corruption: {}\n  mlm_mask: {}\n"), [])
    path = tmp_path / "bare.yaml"
    path.write_text("model: {arch: t5, size: tiny}\n")
    assert error(str(path), []).startswith("objectives: {} — no objective is configured")


def test_objectives_without_a_loss(tmp_path):
    path = tmp_path / "noloss.yaml"
    path.write_text("model: {arch: t5, size: tiny}\nobjectives:\n  mlm_mask: {}\n")
    assert error(str(path), []).startswith("objectives: ['mlm_mask'] — no objective has a loss")


def test_allowed_edge_values():
    load_config("sc", ["runtime.device=cpu", "runtime.precision=bf16"])  # CPU autocast is fine
    load_config("sc", ["data.validation_fraction=0", "trainer.eval_every=0", "trainer.clip_grad_norm=null"])
    load_config("spactor", ["schedules.two_stage.tau=0", "objectives.mlm_mask.ratio=0"])
    load_config("spactor", ["objectives.mlm_mask.ratio=1"])  # every real token: what MlmMask accepts
    load_config("spactor", ["schedules.two_stage.tau=null", "objectives.rtd.generator.d_model=768"])
    load_config("sc", ["trainer.batch_size=12", "trainer.grad_accum_steps=4"])
    for name in recipe_names():
        load_config(name)  # every shipped recipe passes


def test_batch_must_split_over_ranks_and_accumulation(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    msg = error("sc", ["trainer.batch_size=8"])
    assert msg.startswith("trainer.batch_size: 8 —") and "WORLD_SIZE=3" in msg
    monkeypatch.setenv("WORLD_SIZE", "2")
    msg = error("sc", ["trainer.batch_size=12", "trainer.grad_accum_steps=4"])
    assert msg.startswith("trainer.grad_accum_steps: 4 —") and "per-rank batch 6" in msg


def test_fsdp_on_one_cpu_process_is_refused(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match=r"^runtime.fsdp: True — FSDP needs several processes"):
        load_config("sc", ["runtime.fsdp=true", "runtime.device=cpu"])
    load_config("sc", ["runtime.fsdp=false", "runtime.device=cpu"])
    monkeypatch.setenv("WORLD_SIZE", "4")
    load_config("sc", ["runtime.fsdp=true", "runtime.device=cpu", "trainer.batch_size=8"])  # gloo: allowed


# --------------------------------------------------------------------------- one rule, two places


def _build_objective(kind: str, fields: dict, input_length: int = 512):
    from spactor.objectives.base import ObjectiveContext, Vocab
    from spactor.registry import OBJECTIVES

    entry = OBJECTIVES.get(kind)
    ctx = ObjectiveContext(kind, Vocab(size=32128), input_length, None)
    return entry.factory(entry.config_cls(**fields), ctx)


def _build_schedule(kind: str, fields: dict):
    from spactor.registry import SCHEDULES
    from spactor.schedules.base import ScheduleContext

    entry = SCHEDULES.get(kind)
    return entry.factory(entry.config_cls(**fields), ScheduleContext(kind, {}, 1000))


# (recipe, override, how the plugin is built directly with the same value)
SAME_RULE = [
    ("sc", "objectives.span_corruption.noise_density=1.5",
     lambda: _build_objective("span_corruption", {"noise_density": 1.5})),
    ("sc", "objectives.span_corruption.z_loss=-1",
     lambda: _build_objective("span_corruption", {"z_loss": -1.0})),
    ("sc", "data.input_length=4096", lambda: _build_objective("span_corruption", {}, input_length=4096)),
    ("spactor", "objectives.mlm_mask.mode=bart", lambda: _build_objective("mlm_mask", {"mode": "bart"})),
    ("spactor", "objectives.mlm_mask.ratio=1.5", lambda: _build_objective("mlm_mask", {"ratio": 1.5})),
    ("ul2", "objectives.ul2.target_length=10", lambda: _build_objective("ul2", {"target_length": 10})),
    ("spactor", "schedules.two_stage.tau=-1", lambda: _build_schedule("two_stage", {"tau": -1})),
    ("spactor_adaptive", "schedules.adaptive.smoothing=1.0",
     lambda: _build_schedule("adaptive", {"smoothing": 1.0})),
]


@pytest.mark.parametrize("recipe, override, build", SAME_RULE, ids=[c[1] for c in SAME_RULE])
def test_a_plugin_check_runs_at_config_time_and_in_its_constructor(recipe, override, build):
    """The config's own ``check`` is the one rule: ``load_config`` and the plugin's
    constructor (objective class / schedule factory) refuse the value with the same line."""
    at_config_time = error(recipe, [override])
    with pytest.raises(ConfigError) as built:
        build()
    assert str(built.value) == at_config_time


def test_a_plugin_config_without_a_check_still_gets_the_field_rules(tmp_path):
    """A third-party objective whose config defines no ``check`` (the example plugin's
    ``token_deletion``) is held to the ranges every objective follows by field name."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from spactor.plugins import load_plugins; load_plugins()\n"
        "import spactor_example_plugin.token_deletion\n"
        "from spactor.config import ConfigError, load_config\n"
        "overrides = ['model.size=tiny', 'objectives.token_deletion.ratio=' + sys.argv[2]]\n"
        "try:\n"
        "    load_config('sc', overrides)\n"
        "    print('accepted')\n"
        "except ConfigError as e:\n"
        "    print(e)\n"
    )
    example = str(Path(__file__).parent / "example_plugin")
    refused = "objectives.token_deletion.ratio: 1.5 — must be in [0, 1)"
    for ratio, expected in (("1.5", refused), ("0.2", "accepted")):
        out = subprocess.run([sys.executable, "-c", code, example, ratio], capture_output=True, text=True,
                             timeout=300, check=False, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == expected


def test_a_schedule_driving_the_rtd_temperature_to_zero_is_refused_when_set():
    """Config time refuses ``temperature: 0``; a schedule may still set the knob to 0 later,
    and RTD then refuses it with the same rule as it is set, before any step samples with
    it (``gumbel_max_sample`` alone would take T = 0 as the argmax)."""
    import torch

    from spactor.architectures.encoder import EncoderConfig, EncoderModel
    from spactor.objectives.base import MicroBatchContext, ObjectiveContext, Vocab
    from spactor.objectives.mlm_mask import MlmMaskConfig, build_mlm_mask
    from spactor.objectives.rtd import RTDConfig, build_rtd

    assert error("spactor", ["objectives.rtd.temperature=0"]).startswith("objectives.rtd.temperature: 0.0 —")
    vocab = Vocab(size=256, first_sentinel_id=250, mask_id=251)
    model = EncoderModel(EncoderConfig(size="tiny", max_positions=16), vocab.size)
    ctx = ObjectiveContext("rtd", vocab, 16, model)
    rtd = build_rtd(RTDConfig(generator={"arch": "encoder", "layers": 1, "d_model": 32, "d_kv": 16}), ctx)
    ids = torch.randint(3, 140, (2, 16), generator=torch.Generator().manual_seed(0))
    mask = build_mlm_mask(MlmMaskConfig(), ObjectiveContext("mlm_mask", vocab, 16, None))
    batch = mask.transform({"encoder_input": ids}, torch.Generator().manual_seed(1))
    step_ctx = MicroBatchContext.of([rtd], batch, vocab.pad_id)
    rtd.modify(batch, model, torch.Generator().manual_seed(2), step_ctx)  # T = 1: fine
    with pytest.raises(ConfigError, match=r"^objectives\.rtd\.temperature: 0\.0 — must be > 0$"):
        rtd.set_knob("temperature", 0.0)  # a schedule's value: refused when set, before any step uses it
    assert rtd.knob("temperature") == 1.0


# --------------------------------------------------------------------------- the CLI


def spactor(*args: str, cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spactor", *args], capture_output=True, text=True, cwd=cwd, timeout=300, check=False
    )


def test_cli_prints_one_line_exit_2_no_traceback(tmp_path):
    out = spactor("train", "sc", "data.input_length=4096", cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("spactor: error: data.input_length: 4096 —") and "100 sentinels" in lines[0]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()  # refused before any work


def test_cli_debug_shows_the_traceback(tmp_path):
    out = spactor("--debug", "train", "sc", "data.input_length=4096", cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" in out.stderr and "spactor/validation.py" in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("spactor: error: data.input_length: 4096")
