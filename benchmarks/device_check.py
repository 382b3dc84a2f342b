"""One-command device check: is spactor's training step fit for a GPU?

    benchmarks/device_check.sh OUT_DIR                 # one H100/H200, under 8 minutes
    python -m benchmarks.device_check OUT_DIR --cpu-dry-run   # the same code paths, tiny, CPU

Writes ``OUT_DIR/device_check.json`` (rewritten after every section, so a timeout still
leaves numbers) and ``OUT_DIR/device_check.md`` (the tables). Sections, in priority order
(a section that would start after the time budget is recorded as ``skipped``):

* ``throughput``: T5.1.0 at 512/114 in bf16 with per-block ``torch.compile``, steady-state
  seq/s, tokens/s (raw tokens, as the runner's ``tokens_per_s``), MFU and peak memory for
  SC Base, Hugging Face's T5 Base (``benchmarks.hf_peer``, same shapes, same optimizer),
  SpacTor stage 1 Base, SC Large, and SC Base with each attention path (``sdpa``,
  ``flex``, ``eager``; an option the build refuses is recorded ``unsupported``).
  Synthetic random-token batches; warm-up steps (compile included) then timed steps
  between two ``cuda.synchronize``.
* ``t5gemma`` (right after the first three throughput cases): SC Base and SpacTor stage 1
  Base on ``model.arch=t5gemma`` (RoPE, GQA, no position bias: SDPA's fused kernels),
  same settings; ratios to T5's ``sc_base`` / ``spactor_stage1_base`` and SpacTor over SC,
  targets (issue 21) MFU >= 45 % and >= 1.5x T5's SC seq/s.
* ``host_syncs``: per steady-state step, ops that make the host wait and ops with
  data-dependent output shapes (``spactor.train.syncs.SyncCounter``, the counter of
  ``tests/train/test_host_syncs.py``) and, on CUDA, the warnings of ``torch.cuda.set_sync_debug_mode("warn")``.
* ``bf16_vs_fp32``: 30 steps of SC Base from the same weights on the same batches.
* ``fsdp_1rank``: the same steps under FSDP2 on a world of one, against the plain bf16 run.
* (after ``sc_large`` and the ``eager`` attention path) ``compile_model``: SC Base and
  SpacTor stage 1 Base with ``runtime.compile=model``, the whole forward as one graph, and
  their ratios to per-block compile; then ``llama``: the ``causal_lm`` step on llama Base
  (349M) beside Hugging Face's ``LlamaForCausalLM`` of the same dimensions, both per-block
  compiled, and their ratio; ``flex`` runs last of all.

FLOPs per step are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one
forward at the timed batch (matmul-class ops only) × 3, the project's convention (see
``spactor.train.flops.counting``); where fvcore is installed the dry run also records spactor's
fvcore count as a cross-check. MFU uses the dense bf16 peak of ``spactor.train.flops.mfu``
(H100/H200: 989 TFLOP/s) or ``--peak-tflops``.

Needs torch, transformers (for the HF peer; without it that case is ``unsupported``) and
spactor's own import-time dependencies (omegaconf, torchdata); see device_check.sh for
installing them from carried wheels.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.device_cases import Built, Settings, Unsupported, build_hf, build_hf_llama, build_spactor, _load, _overrides, _sync
from benchmarks.device_report import render_markdown

SCHEMA = 1
PEAK_H100_TFLOPS = 989.0


# --------------------------------------------------------------------------- settings


def settings_for(args: argparse.Namespace) -> Settings:
    if args.cpu_dry_run:
        return Settings(
            device=torch.device("cpu"), dry_run=True, input_length=64, vocab_pieces=1000,
            sizes={"base": "tiny", "large": "tiny"}, batch={"base": 4, "large": 2}, small_batch=2,
            warmup_steps=1, min_timed_steps=2, timed_s=0.5, agreement_steps=30, fsdp_steps=5,
            budget_s=args.budget_s or 170.0, peak_tflops=args.peak_tflops, overrides=tuple(args.set),
        )
    if not torch.cuda.is_available():
        raise SystemExit("device_check: no CUDA device (use --cpu-dry-run to exercise the script on CPU)")
    from spactor.train.flops.mfu import peak_tflops

    return Settings(
        device=torch.device("cuda", torch.cuda.current_device()), dry_run=False, input_length=512, vocab_pieces=32000,
        sizes={"base": "base", "large": "large"},
        batch={"base": args.base_batch, "large": args.large_batch}, small_batch=8,
        warmup_steps=3, min_timed_steps=5, timed_s=args.timed_s, agreement_steps=30, fsdp_steps=10,
        budget_s=args.budget_s or 450.0,
        peak_tflops=args.peak_tflops or peak_tflops() or PEAK_H100_TFLOPS, overrides=tuple(args.set),
    )


# --------------------------------------------------------------------------- results file


@dataclass
class Report:
    out_dir: Path
    settings: Settings
    started: float = field(default_factory=lambda: _process_started())
    data: dict[str, Any] = field(default_factory=dict)

    def remaining_s(self) -> float:
        return self.settings.budget_s - (time.monotonic() - self.started)

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - self.started, 2)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.out_dir / "device_check.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        tmp.replace(self.out_dir / "device_check.json")
        (self.out_dir / "device_check.md").write_text(render_markdown(self.data))

    def section(self, where: dict[str, Any], key: str, need_s: float, run: Callable[[], dict[str, Any]]) -> None:
        """Run one measurement into ``where[key]``; never let it stop the others."""
        if self.remaining_s() < need_s:
            where[key] = {"status": "skipped", "error": f"time budget: {self.remaining_s():.0f}s left, needs ~{need_s:.0f}s"}
            self.write()
            return
        t0 = time.monotonic()
        print(f"[device_check] {key} ...", flush=True)
        try:
            result = run()
            result.setdefault("status", "ok")
        except Unsupported as e:
            result = {"status": "unsupported", "error": f"unsupported on this build: {e}"}
        except Exception as e:  # noqa: BLE001
            result = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                      "traceback": traceback.format_exc(limit=6)}
        result["section_s"] = round(time.monotonic() - t0, 2)
        where[key] = result
        print(f"[device_check] {key}: {result['status']} ({result['section_s']}s)", flush=True)
        _free(self.settings.device)
        self.write()


def _process_started() -> float:
    """When the budget started, on the monotonic clock: when device_check.sh started its
    hard-stop timer (it exports the wall time), so that imports count against the budget."""
    wrapper = os.environ.get("SPACTOR_DEVICE_CHECK_STARTED")
    now = time.monotonic()
    try:
        return now - max(0.0, time.time() - float(wrapper)) if wrapper else now
    except ValueError:
        return now


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _as_float(value: Any) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


# --------------------------------------------------------------------------- measurements


Make = Callable[[int, bool], Built]  # (batch, compile) → a built step


def measure_throughput(s: Settings, make: Make, batch: int, compile_: bool = True) -> dict[str, Any]:
    """Steady-state speed of ``make(batch, compile_)``. Out of memory: once more at half
    the batch; a failure with compile on: once more without (so a number still comes
    back, with the reason recorded)."""
    notes: dict[str, Any] = {}
    while True:
        try:
            return {**_timed(s, lambda: make(batch, compile_)), **notes}
        except Unsupported:
            raise
        except torch.OutOfMemoryError:
            if batch <= 1 or "out_of_memory_at_batch" in notes:
                raise
            notes["out_of_memory_at_batch"] = batch
            batch //= 2
        except Exception as e:  # noqa: BLE001
            if not compile_:
                raise
            notes["compile_error"] = f"{type(e).__name__}: {str(e)[:500]}"
            compile_ = False
        _free(s.device)


def _timed(s: Settings, build: Callable[[], Built]) -> dict[str, Any]:
    device = s.device
    _free(device)
    # Each case compiles afresh: the blocks of every case share one code object, and past
    # Dynamo's recompile limit later cases would run eagerly while reported as compiled.
    torch._dynamo.reset()
    t0 = time.monotonic()
    built = build()
    build_s = time.monotonic() - t0
    t0 = time.monotonic()
    losses = [built.step() for _ in range(s.warmup_steps)]  # compile happens here
    _sync(device)
    warmup_s = time.monotonic() - t0
    steps = 0
    _sync(device)
    t0 = time.perf_counter()
    while steps < s.min_timed_steps or time.perf_counter() - t0 < s.timed_s:
        losses.append(built.step())
        steps += 1
    _sync(device)
    elapsed = time.perf_counter() - t0
    step_s = elapsed / steps
    tflops = None if built.flops_per_step is None else built.flops_per_step / step_s / 1e12
    return {
        **built.extra,
        "batch_size": built.sequences,
        "build_s": round(build_s, 2),
        "warmup_s": round(warmup_s, 2),
        "steps_timed": steps,
        "step_s": step_s,
        "seq_per_s": built.sequences / step_s,
        "tokens_per_s": built.tokens / step_s,
        "flops_per_step": built.flops_per_step,
        "tflops_per_s": tflops,
        "mfu": None if tflops is None or s.peak_tflops is None else tflops / s.peak_tflops,
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "loss_first": _as_float(losses[0]),  # read after the timing: no extra sync in the timed steps
        "loss_last": _as_float(losses[-1]),
        "loss_finite": all(math.isfinite(_as_float(x)) for x in losses),
    }


def measure_host_syncs(s: Settings, recipe: str, steps: int = 3) -> dict[str, Any]:
    built = build_spactor(s, recipe, "base", s.small_batch, compile_=False, count_flops=False)
    built.step()  # warm-up: lazy initialisation is not steady state
    _sync(s.device)
    from spactor.train.syncs import SyncCounter  # the counter tests/train/test_host_syncs.py uses

    counter = SyncCounter()
    with counter:
        for _ in range(steps):
            built.step()
    syncs, shapes = len(counter.syncs), len(counter.data_dependent)
    out: dict[str, Any] = {
        "recipe": recipe,
        "steps": steps,
        "syncs_per_step": syncs / steps,
        "data_dependent_per_step": shapes / steps,
        "ops": {k: v / steps for k, v in sorted(counter.counts.items())},
        "cuda_sync_warnings_per_step": None,
    }
    if s.device.type == "cuda":
        _sync(s.device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(steps):
                    built.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        hits = [w for w in caught if "synchroniz" in str(w.message)]
        out["cuda_sync_warnings_per_step"] = len(hits) / steps
        out["cuda_sync_sites"] = sorted({f"{Path(w.filename).name}:{w.lineno}" for w in hits})[:20]
    return out


def _run_steps(built: Built, steps: int) -> list[float]:
    return [_as_float(built.step()) for _ in range(steps)]


def measure_agreement(s: Settings, store: dict[str, Any]) -> dict[str, Any]:
    """SC Base, the same initial weights and batches, bf16 autocast vs fp32 (no TF32)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    bf16 = _run_steps(build_spactor(s, "sc", "base", s.small_batch, precision="bf16", compile_=False, count_flops=False),
                      s.agreement_steps)
    _free(s.device)
    fp32 = _run_steps(build_spactor(s, "sc", "base", s.small_batch, precision="fp32", compile_=False, count_flops=False),
                      s.agreement_steps)
    store["bf16_losses"] = bf16
    rel = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(bf16, fp32)]
    return {
        "steps": s.agreement_steps,
        "losses_bf16": bf16,
        "losses_fp32": fp32,
        "max_abs_diff": max(abs(a - b) for a, b in zip(bf16, fp32)),
        "max_rel_diff": max(rel),
        "final_rel_diff": rel[-1],
        "fp32_loss_decreased": fp32[-1] < fp32[0],
    }


@contextlib.contextmanager
def _world_of_one(device: torch.device) -> Iterator[None]:
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                            device_id=device if device.type == "cuda" else None)
    try:
        yield
    finally:
        dist.destroy_process_group()


def measure_fsdp(s: Settings, store: dict[str, Any]) -> dict[str, Any]:
    """FSDP2 on one rank (the runner's multi-GPU path on one device), bf16, against the
    plain bf16 run of ``bf16_vs_fp32`` (the same weights and batches)."""
    with _world_of_one(s.device):
        built = build_spactor(s, "sc", "base", s.small_batch, precision="bf16", compile_=False, fsdp=True,
                              count_flops=False)
        _sync(s.device)
        t0 = time.perf_counter()
        losses = _run_steps(built, s.fsdp_steps)
        _sync(s.device)
        elapsed = time.perf_counter() - t0
    out: dict[str, Any] = {
        "steps": s.fsdp_steps,
        "losses": losses,
        "seq_per_s": built.sequences * s.fsdp_steps / elapsed,
        "peak_memory_gb": torch.cuda.max_memory_allocated(s.device) / 2**30 if s.device.type == "cuda" else None,
        "max_rel_diff_vs_no_fsdp": None,
    }
    plain = store.get("bf16_losses")
    if plain:
        out["max_rel_diff_vs_no_fsdp"] = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, plain))
    return out


def fvcore_cross_check(s: Settings, flops_by_case: dict[str, float | None]) -> dict[str, Any]:
    """spactor's fvcore count (``spactor.train.flops.counting``) of the SC Base step beside the
    FlopCounterMode count used for MFU."""
    try:
        import fvcore  # noqa: F401
    except ImportError as e:
        raise Unsupported("fvcore is not installed") from e
    from spactor.train.flops.counting import count_step_flops, count_vocab

    resolved = _load("sc", _overrides(s, "base", s.batch["base"], "bf16", False, []))
    fv = count_step_flops(resolved, stage=1, vocab=count_vocab(resolved.cfg.data), device="cpu").flops_per_step
    mode = flops_by_case.get("sc_base")
    return {"fvcore_flops_per_step": fv, "flop_counter_flops_per_step": mode,
            "ratio": None if not mode else mode / fv}


# --------------------------------------------------------------------------- the run


def environment(s: Settings) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": s.device.type,
        "device_name": torch.cuda.get_device_name(s.device) if s.device.type == "cuda" else platform.processor() or "cpu",
        "peak_tflops": s.peak_tflops,
        "threads": torch.get_num_threads(),
        "flex_attention_in_torch": _has_flex(),
    }
    for name in ("transformers", "fvcore", "omegaconf", "torchdata", "sentencepiece"):
        try:
            env[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001
            env[name] = None
    return env


def _has_flex() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _cpu_compile_backend(dry_run: bool) -> Iterator[None]:
    """The dry run compiles with ``aot_eager`` (Dynamo and AOTAutograd, no Inductor
    codegen): the same graph capture, in seconds instead of minutes of C++ builds."""
    if not dry_run:
        yield
        return
    original, original_fn = torch.nn.Module.compile, torch.compile

    def compile_(self: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("backend", "aot_eager")
        original(self, *args, **kwargs)

    def compile_fn(*args: Any, **kwargs: Any) -> Any:  # runtime.compile=model's torch.compile
        kwargs.setdefault("backend", "aot_eager")
        return original_fn(*args, **kwargs)

    torch.nn.Module.compile = compile_  # type: ignore[method-assign]
    torch.compile = compile_fn  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.nn.Module.compile = original  # type: ignore[method-assign]
        torch.compile = original_fn  # type: ignore[assignment]


THROUGHPUT_CASES = ("sc_base", "hf_t5_base", "spactor_stage1_base", "sc_large")
ATTENTION_PATHS = ("sdpa", "flex", "eager")
T5GEMMA_CASES = (("sc_base", "sc"), ("spactor_stage1_base", "spactor"))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from spactor.plugins import load_plugins

    load_plugins()
    s = settings_for(args)
    torch.manual_seed(0)
    report = Report(Path(args.out_dir), s)
    report.data.update({
        "schema": SCHEMA,
        "mode": "cpu-dry-run" if s.dry_run else "cuda",
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "finished": False,
        "settings": {"input_length": s.input_length, "vocab_pieces": s.vocab_pieces, "sizes": s.sizes,
                     "batch": s.batch, "small_batch": s.small_batch, "warmup_steps": s.warmup_steps,
                     "timed_s": s.timed_s, "budget_s": s.budget_s, "t5_version": "1.0",
                     "overrides": list(s.overrides)},
        "env": environment(s),
        "throughput": {},
        "attention": {},
        "compile_model": {},
        "host_syncs": {},
        "llama": {},
        "t5gemma": {},
        "ratios": {},
        "targets": {},
    })
    report.write()
    tp = report.data["throughput"]
    base, large = s.batch["base"], s.batch["large"]
    need = 15.0 if s.dry_run else 60.0
    # The dry run compiles SC and SpacTor (every compiled code path of spactor) and runs
    # the other cases eagerly: compiling HF's blocks alone takes over a minute on CPU.
    again = not s.dry_run
    cases: dict[str, tuple[Make, int, bool]] = {
        "sc_base": (lambda b, c: build_spactor(s, "sc", "base", b, compile_=c), base, True),
        "hf_t5_base": (lambda b, c: build_hf(s, "base", b, compile_=c), base, again),
        "spactor_stage1_base": (lambda b, c: build_spactor(s, "spactor", "base", b, compile_=c), base, True),
        "sc_large": (lambda b, c: build_spactor(s, "sc", "large", b, compile_=c), large, again),
    }

    def throughput(name: str) -> Callable[[], dict[str, Any]]:
        make, batch, compile_ = cases[name]
        return lambda: measure_throughput(s, make, batch, compile_)

    store: dict[str, Any] = {}
    with _cpu_compile_backend(s.dry_run):
        for name in THROUGHPUT_CASES[:3]:
            report.section(tp, name, need, throughput(name))
            _ratios(report.data)
        # t5gemma (RoPE, GQA: fused attention, no position bias) beside T5.1.0's sc_base and
        # spactor_stage1_base above: same recipes, sizes, batch and precision.
        gemma = report.data["t5gemma"]
        for name, recipe in T5GEMMA_CASES:
            report.section(gemma, name, need, lambda r=recipe: measure_throughput(
                s, lambda b, c: build_spactor(s, r, "base", b, extra=["model.arch=t5gemma"], compile_=c), base, True))
            _ratios(report.data)
        for recipe in ("sc", "spactor"):
            report.section(report.data["host_syncs"], recipe, need / 2, lambda r=recipe: measure_host_syncs(s, r))
        report.section(report.data, "bf16_vs_fp32", need, lambda: measure_agreement(s, store))
        report.section(report.data, "fsdp_1rank", need / 2, lambda: measure_fsdp(s, store))
        report.section(tp, "sc_large", need * 1.5, throughput("sc_large"))
        att = report.data["attention"]
        if tp.get("sc_base", {}).get("status") == "ok":
            att["sdpa"] = {**tp["sc_base"], "note": "the sc_base run"}

        def attention(path: str) -> None:
            if path not in att:
                report.section(att, path, need, lambda: measure_throughput(
                    s, lambda b, c: build_spactor(s, "sc", "base", b, extra=[f"model.attention={path}"], compile_=c),
                    base, again))

        for path in ATTENTION_PATHS:
            if path != "flex":
                attention(path)
        # runtime.compile=model (the whole forward as one graph) for SC and SpacTor; it needs
        # more time left: compiling every layer unrolled into one graph takes minutes
        whole = report.data["compile_model"]
        for name, recipe in (("sc_base", "sc"), ("spactor_stage1_base", "spactor")):
            report.section(whole, name, need * 2.5, lambda r=recipe: measure_throughput(
                s, lambda b, c: build_spactor(s, r, "base", b, compile_="model" if c else False), base, True))
        # The decoder-only family: spactor's causal_lm step on llama beside LlamaForCausalLM.
        llama = report.data["llama"]
        for name, make in (("causal_lm_base", lambda b, c: build_spactor(s, "causal_lm", "base", b, compile_=c)),
                           ("hf_llama_base", lambda b, c: build_hf_llama(s, "base", b, compile_=c))):
            report.section(llama, name, need, lambda m=make: measure_throughput(s, m, base, True))
        _ratios(report.data)
        # Last: flex's compiled backward with a learned bias is the newest code path; a
        # device fault there would poison the CUDA context for every section after it.
        attention("flex")
        if s.dry_run or args.fvcore:
            flops = {k: v.get("flops_per_step") for k, v in tp.items()}
            report.section(report.data, "flops_cross_check", 5.0, lambda: fvcore_cross_check(s, flops))
    _ratios(report.data)
    report.data["finished"] = True
    report.write()
    return report.data


def _ratios(data: dict[str, Any]) -> None:
    tp = data["throughput"]

    def seq(name: str) -> float | None:
        r = tp.get(name, {})
        return r.get("seq_per_s") if r.get("status") == "ok" else None

    whole = data.get("compile_model", {})

    def seq_model(name: str) -> float | None:
        r = whole.get(name, {})
        return r.get("seq_per_s") if r.get("status") == "ok" and r.get("compile") == "model" else None

    pairs = {"sc_base_over_hf_t5_base": (seq("sc_base"), seq("hf_t5_base")),
             "spactor_stage1_over_sc_base": (seq("spactor_stage1_base"), seq("sc_base")),
             # runtime.compile=model against per-block compile, and SpacTor against SC both compiled whole
             "sc_base_model_over_blocks": (seq_model("sc_base"), seq("sc_base")),
             "spactor_stage1_base_model_over_blocks": (seq_model("spactor_stage1_base"), seq("spactor_stage1_base")),
             "spactor_stage1_over_sc_base_model": (seq_model("spactor_stage1_base"), seq_model("sc_base"))}
    llama = data.get("llama", {})

    def seq_llama(name: str) -> float | None:
        r = llama.get(name, {})
        return r.get("seq_per_s") if r.get("status") == "ok" else None

    pairs["causal_lm_base_over_hf_llama_base"] = (seq_llama("causal_lm_base"), seq_llama("hf_llama_base"))
    gemma = data.get("t5gemma", {})

    def seq_gemma(name: str) -> float | None:
        r = gemma.get(name, {})
        return r.get("seq_per_s") if r.get("status") == "ok" else None

    pairs["t5gemma_sc_base_over_sc_base"] = (seq_gemma("sc_base"), seq("sc_base"))
    pairs["t5gemma_spactor_stage1_over_spactor_stage1_base"] = (seq_gemma("spactor_stage1_base"),
                                                               seq("spactor_stage1_base"))
    pairs["t5gemma_spactor_stage1_over_t5gemma_sc_base"] = (seq_gemma("spactor_stage1_base"), seq_gemma("sc_base"))
    for key, (x, y) in pairs.items():
        data["ratios"][key] = None if x is None or y is None else x / y

    def mfu(name: str) -> float | None:
        r = tp.get(name, {})
        return r.get("mfu") if r.get("status") == "ok" else None

    # issue 11's GPU targets (T5.1.0, 512/114, bf16): measured value, bound, met
    measured = {
        "sc_base_mfu": (mfu("sc_base"), 0.40),
        "sc_large_mfu": (mfu("sc_large"), 0.40),
        "sc_base_over_hf_t5_base": (data["ratios"]["sc_base_over_hf_t5_base"], 4.0),
        "spactor_stage1_over_sc_base": (data["ratios"]["spactor_stage1_over_sc_base"], 0.85),
        # issue 21's (t5gemma Base SC, 216M beside T5.1.0 Base's 223M)
        "t5gemma_sc_base_mfu": (gemma.get("sc_base", {}).get("mfu") if gemma.get("sc_base", {}).get("status") == "ok"
                                else None, 0.45),
        "t5gemma_sc_base_over_sc_base": (data["ratios"]["t5gemma_sc_base_over_sc_base"], 1.5),
    }
    data["targets"] = {
        key: {"value": value, "at_least": bound, "met": None if value is None else value >= bound}
        for key, (value, bound) in measured.items()
    }


# --------------------------------------------------------------------------- command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.device_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="where device_check.json and device_check.md go")
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes on CPU: every code path, no GPU")
    parser.add_argument("--budget-s", type=float, default=None, help="stop starting sections after this (default 450 s; dry run 170 s)")
    parser.add_argument("--timed-s", type=float, default=6.0, help="seconds of timed steps per throughput case")
    parser.add_argument("--base-batch", type=int, default=64)
    parser.add_argument("--large-batch", type=int, default=32)
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak per device (default: from the GPU's name)")
    parser.add_argument("--fvcore", action="store_true", help="also count FLOPs with fvcore on CPU (slow at Base)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every spactor case, e.g. --set runtime.activation_checkpointing=selective")
    args = parser.parse_args(argv)
    if args.cpu_dry_run:
        torch.set_num_threads(int(os.environ.get("SPACTOR_BENCH_THREADS", "1")))
    data = run(args)
    print(f"wrote {Path(args.out_dir) / 'device_check.json'} and device_check.md ({data['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
