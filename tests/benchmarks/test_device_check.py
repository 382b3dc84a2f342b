"""``benchmarks/device_check.sh OUT --cpu-dry-run``: the device check's every code path at
tiny sizes on CPU, through the same wrapper a device machine runs, and a JSON report
with every field the GPU run fills (speed is not asserted: it is a measurement)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

THROUGHPUT_FIELDS = {"status", "recipe", "size", "batch_size", "compile", "precision", "attention", "steps_timed",
                     "step_s", "seq_per_s", "tokens_per_s", "flops_per_step", "tflops_per_s", "mfu",
                     "peak_memory_gb", "warmup_s", "loss_last", "loss_finite"}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("device_check")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    done = subprocess.run([str(ROOT / "benchmarks" / "device_check.sh"), str(out), "--cpu-dry-run", "--peak-tflops", "1.0"],
                          check=False, capture_output=True, text=True, timeout=400, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "device_check.json").read_text()), (out / "device_check.md").read_text()


@pytest.mark.slow  # shares one ~1 minute dry run
def test_every_section_ran_and_has_its_fields(report):
    data, _ = report
    assert data["mode"] == "cpu-dry-run" and data["finished"] is True
    assert data["elapsed_s"] < 180
    for key in ("torch", "transformers", "device_name", "peak_tflops", "flex_attention_in_torch"):
        assert key in data["env"]
    assert set(data["throughput"]) == {"sc_base", "hf_t5_base", "spactor_stage1_base", "sc_large"}
    assert set(data["targets"]) == {"sc_base_mfu", "sc_large_mfu", "sc_base_over_hf_t5_base", "spactor_stage1_over_sc_base",
                                    "t5gemma_sc_base_mfu", "t5gemma_sc_base_over_sc_base"}
    assert all(t["value"] is not None and isinstance(t["met"], bool) for t in data["targets"].values())
    for name, result in data["throughput"].items():
        assert result["status"] == "ok", (name, result.get("error"))
        assert THROUGHPUT_FIELDS <= set(result), (name, THROUGHPUT_FIELDS - set(result))
        assert result["loss_finite"] and result["seq_per_s"] > 0 and result["flops_per_step"] > 0
        assert result["mfu"] > 0  # against the --peak-tflops given (CPU has no table entry)
    assert data["throughput"]["sc_base"]["compile"] and data["throughput"]["spactor_stage1_base"]["compile"]
    assert data["ratios"]["sc_base_over_hf_t5_base"] > 0 and data["ratios"]["spactor_stage1_over_sc_base"] > 0


@pytest.mark.slow  # shares one ~1 minute dry run
def test_t5gemma_is_measured_beside_t5(report):
    data, markdown = report
    assert set(data["t5gemma"]) == {"sc_base", "spactor_stage1_base"}
    for name, result in data["t5gemma"].items():
        assert result["status"] == "ok", (name, result.get("error"))
        assert THROUGHPUT_FIELDS <= set(result) and result["compile"] and result["loss_finite"], name
        assert result["seq_per_s"] > 0 and result["mfu"] > 0, name
    for key in ("t5gemma_sc_base_over_sc_base", "t5gemma_spactor_stage1_over_spactor_stage1_base",
                "t5gemma_spactor_stage1_over_t5gemma_sc_base"):
        assert data["ratios"][key] > 0, key
    assert "## t5gemma" in markdown


@pytest.mark.slow  # shares one ~1 minute dry run
def test_whole_forward_compile_is_measured_beside_per_block(report):
    data, markdown = report
    assert set(data["compile_model"]) == {"sc_base", "spactor_stage1_base"}
    for name, result in data["compile_model"].items():
        assert result["status"] == "ok" and result["compile"] == "model", (name, result.get("compile_error"))
        assert result["seq_per_s"] > 0 and result["loss_finite"]
    for key in ("sc_base_model_over_blocks", "spactor_stage1_base_model_over_blocks", "spactor_stage1_over_sc_base_model"):
        assert data["ratios"][key] > 0, key
    assert "## runtime.compile=model" in markdown


@pytest.mark.slow  # shares one ~1 minute dry run
def test_attention_paths_are_measured_or_named_unsupported(report):
    data, _ = report
    assert set(data["attention"]) == {"sdpa", "flex", "eager"}
    for path, result in data["attention"].items():
        if result["status"] == "unsupported":
            assert "unsupported on this build" in result["error"], path
        else:
            assert result["status"] == "ok" and result["attention"] == path and result["seq_per_s"] > 0


@pytest.mark.slow  # shares one ~1 minute dry run
def test_host_syncs_precision_and_fsdp(report):
    data, markdown = report
    for recipe in ("sc", "spactor"):
        syncs = data["host_syncs"][recipe]
        assert syncs["status"] == "ok"
        assert {"syncs_per_step", "data_dependent_per_step", "ops", "cuda_sync_warnings_per_step"} <= set(syncs)
        assert syncs["cuda_sync_warnings_per_step"] is None  # CUDA only
    agree = data["bf16_vs_fp32"]
    assert agree["status"] == "ok" and agree["steps"] == 30 and len(agree["losses_fp32"]) == 30
    assert agree["max_rel_diff"] < 0.05 and agree["fp32_loss_decreased"]
    fsdp = data["fsdp_1rank"]
    assert fsdp["status"] == "ok" and fsdp["max_rel_diff_vs_no_fsdp"] < 1e-2
    # the FLOPs behind MFU (FlopCounterMode) agree with spactor's fvcore count
    assert data["flops_cross_check"]["ratio"] == pytest.approx(1.0, rel=0.02)
    for heading in ("## Throughput", "## Attention paths", "## Host syncs", "## Precision and FSDP"):
        assert heading in markdown


def test_throughput_retries_at_half_the_batch_and_without_compile():
    import argparse

    import torch

    from benchmarks.device_check import Built, measure_throughput, settings_for

    s = settings_for(argparse.Namespace(cpu_dry_run=True, budget_s=None, peak_tflops=None, set=[]))
    calls: list[tuple[int, bool]] = []

    def make(batch: int, compile_: bool) -> Built:
        calls.append((batch, compile_))
        if batch > 2:
            raise torch.OutOfMemoryError("pretend")
        if compile_:
            raise RuntimeError("pretend the compiler failed")
        return Built(step=lambda: 1.0, flops_per_step=None, sequences=batch, tokens=batch * 10)

    result = measure_throughput(s, make, batch=4, compile_=True)
    assert calls == [(4, True), (2, True), (2, False)]
    assert result["out_of_memory_at_batch"] == 4 and "compiler failed" in result["compile_error"]
    assert result["batch_size"] == 2 and result["seq_per_s"] > 0


def test_recipes_load_from_a_checkout_that_is_not_installed(tmp_path):
    """device_check.sh runs spactor from the checkout on PYTHONPATH, not installed: there is
    no ``spactor.configs`` package (only installing maps configs/ to it), and the recipes
    must still load. ``-S`` leaves out the editable install's finder; site-packages on
    PYTHONPATH still give torch and omegaconf."""
    site = [p for p in sys.path if p.endswith("site-packages")]
    code = (
        "import importlib.util, spactor\n"
        f"assert spactor.__file__.startswith({str(ROOT)!r}), spactor.__file__\n"
        "assert importlib.util.find_spec('spactor.configs') is None\n"
        "from spactor.plugins import load_plugins\n"
        "load_plugins()\n"
        "from spactor.config import load_config, recipe_names\n"
        "assert {'sc', 'spactor'} <= set(recipe_names())\n"
        "print(load_config('sc', ['model.size=tiny']).model.config.size)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *site])}
    done = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, check=False,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "tiny"
