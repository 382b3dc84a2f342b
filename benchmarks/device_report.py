"""The Markdown tables of ``benchmarks.device_check``'s JSON report."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and spec.endswith("%"):
        return f"{100 * value:.1f}%"
    return format(value, spec)


def render_markdown(data: dict[str, Any]) -> str:
    env = data.get("env", {})
    lines = [
        "# spactor device check",
        "",
        f"{data.get('mode')} · {env.get('device_name')} · torch {env.get('torch')} · "
        f"transformers {env.get('transformers')} · peak {env.get('peak_tflops')} TFLOP/s · "
        f"{data.get('elapsed_s')} s{'' if data.get('finished') else ' · INCOMPLETE'}",
        "",
        "## Throughput (bf16, per-block compile, T5.1.0)",
        "",
        "| case | status | batch | seq/s | tokens/s | TFLOP/s | MFU | peak GiB | warm-up s | loss |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def row(name: str, r: dict[str, Any]) -> str:
        return (f"| {name} | {r.get('status')} | {_fmt(r.get('batch_size'), 'd')} | {_fmt(r.get('seq_per_s'), ',.1f')} | "
                f"{_fmt(r.get('tokens_per_s'), ',.0f')} | {_fmt(r.get('tflops_per_s'), ',.1f')} | "
                f"{_fmt(r.get('mfu'), '%')} | {_fmt(r.get('peak_memory_gb'), '.1f')} | {_fmt(r.get('warmup_s'), '.1f')} | "
                f"{_fmt(r.get('loss_last'), '.3f')} |")

    for name, r in data.get("throughput", {}).items():
        lines.append(row(name, r))
    lines += ["", "Ratios: " + ", ".join(f"{k} = {_fmt(v, '.2f')}" for k, v in data.get("ratios", {}).items()), ""]
    targets = data.get("targets") or {}
    if targets and data.get("mode") == "cuda":
        lines += ["| target | value | at least | met |", "|---|---|---|---|"]
        lines += [f"| {k} | {_fmt(t['value'], '.3f')} | {t['at_least']} | {t['met']} |" for k, t in targets.items()]
        lines.append("")
    gemma = data.get("t5gemma") or {}
    if gemma:
        lines += ["## t5gemma (RoPE, GQA, GeGLU; same recipes, batch, bf16)", "",
                  "| case | status | batch | seq/s | tokens/s | TFLOP/s | MFU | peak GiB | warm-up s | loss |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        lines += [row(name, r) for name, r in gemma.items()] + [""]
    lines += ["## Attention paths, SC Base", "",
              "| path | status | seq/s | MFU | peak GiB | note |", "|---|---|---|---|---|---|"]
    for name, r in data.get("attention", {}).items():
        lines.append(f"| {name} | {r.get('status')} | {_fmt(r.get('seq_per_s'), ',.1f')} | {_fmt(r.get('mfu'), '%')} | "
                     f"{_fmt(r.get('peak_memory_gb'), '.1f')} | {r.get('error') or r.get('note') or ''} |")
    lines += ["", "## runtime.compile=model (the whole forward as one graph), Base", "",
              "| case | status | batch | seq/s | MFU | peak GiB | warm-up s | note |", "|---|---|---|---|---|---|---|---|"]
    for name, r in data.get("compile_model", {}).items():
        lines.append(f"| {name} | {r.get('status')} | {_fmt(r.get('batch_size'), 'd')} | {_fmt(r.get('seq_per_s'), ',.1f')} | "
                     f"{_fmt(r.get('mfu'), '%')} | {_fmt(r.get('peak_memory_gb'), '.1f')} | {_fmt(r.get('warmup_s'), '.1f')} | "
                     f"{r.get('compile_error') or r.get('error') or ''} |")
    lines += ["", "## Host syncs per steady-state step", "",
              "| recipe | status | syncs (dispatch count) | data-dependent ops | CUDA sync warnings | ops |",
              "|---|---|---|---|---|---|"]
    for name, r in data.get("host_syncs", {}).items():
        ops = ", ".join(f"{k}: {v:g}" for k, v in (r.get("ops") or {}).items())
        lines.append(f"| {name} | {r.get('status')} | {_fmt(r.get('syncs_per_step'), 'g')} | "
                     f"{_fmt(r.get('data_dependent_per_step'), 'g')} | {_fmt(r.get('cuda_sync_warnings_per_step'), 'g')} | {ops} |")
    agree = data.get("bf16_vs_fp32", {})
    fsdp = data.get("fsdp_1rank", {})
    lines += ["", "## Precision and FSDP", "",
              f"- bf16 vs fp32, {agree.get('steps')} steps of SC Base: {agree.get('status')}; "
              f"max relative loss difference {_fmt(agree.get('max_rel_diff'), '.2e')}, final {_fmt(agree.get('final_rel_diff'), '.2e')}",
              f"- FSDP2 on one rank: {fsdp.get('status')}; {_fmt(fsdp.get('seq_per_s'), ',.1f')} seq/s, "
              f"max relative loss difference to the plain bf16 run {_fmt(fsdp.get('max_rel_diff_vs_no_fsdp'), '.2e')}",
              ]
    cross = data.get("flops_cross_check")
    if cross:
        lines.append(f"- FLOPs, FlopCounterMode / fvcore (SC Base step): {cross.get('status')} {_fmt(cross.get('ratio'), '.4f')}")
    failed = [(f"{sec}.{k}" if sec == "t5gemma" else k, r)
              for sec in ("throughput", "t5gemma", "attention", "compile_model", "host_syncs") for k, r in data.get(sec, {}).items()
              if r.get("status") not in ("ok", None)]
    failed += [(k, data[k]) for k in ("bf16_vs_fp32", "fsdp_1rank") if data.get(k, {}).get("status") not in ("ok", None)]
    if failed:
        lines += ["", "## Not measured", ""] + [f"- {k}: {r.get('status')}: {r.get('error')}" for k, r in failed]
    return "\n".join(lines) + "\n"
