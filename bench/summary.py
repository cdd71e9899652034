"""The benchmark's report: one table row per measurement with its target and verdict, and
the Markdown page written to <out>/README.md."""
from __future__ import annotations

import math

from .measure import TRL_BASELINE_VERSION

# Targets the issue set; ratios are project / baseline.
TARGETS = {
    "eval_speedup": 3.0,  # project examples/s >= 3x the paper loop's
    "ppo_time_ratio": 0.5,  # project step time <= 0.5x TRL's
    "ppo_memory_ratio": 0.5,  # project peak RSS <= 0.5x TRL's
    "matmul_fraction": 0.40,  # PPO and SFT steps reach >= 40% of the matmul rate
    "planning_seconds": 10.0,
}


def markdown_table(headers, rows) -> str:
    """A GitHub Markdown table; cells are str()-ed, None shows as an em dash, and '|' is escaped."""
    def cell(value) -> str:
        return "—" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def fmt(value, digits: int = 3) -> str | None:
    """A number with `digits` significant digits (None stays None)."""
    if value is None:
        return None
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    if isinstance(value, int) and abs(value) < 10 ** digits:
        return str(value)
    return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:,.0f}"


def _verdict(value, target, at_least: bool) -> str | None:
    if value is None:
        return None
    ok = value >= target if at_least else value <= target
    return ("yes" if ok else "no")


def report_rows(results: dict) -> list[list]:
    """One table row per measurement: what, project, baseline, ratio, target, met."""
    rows = []
    ev = results.get("eval") or {}
    if ev.get("status") == "ok":
        p, b = ev["project"], ev["baseline"]
        rows.append(["Evaluation throughput, examples/s (SST-2 dev, "
                     f"{ev['examples']} examples)", fmt(p["examples_per_s"]),
                     fmt(b["examples_per_s"]), fmt(ev["speedup"]) + "×",
                     f"≥ {TARGETS['eval_speedup']:g}×",
                     _verdict(ev["speedup"], TARGETS["eval_speedup"], True)])
        rows.append(["Parsed predictions agreeing (project vs paper loop)",
                     f"{100 * ev['agreement']:.1f}%", None, None, None, None])
        rows.append(["Accuracy on these examples / invalid answers",
                     f"{100 * p['accuracy']:.1f}% / {100 * p['invalid_rate']:.1f}%",
                     f"{100 * b['accuracy']:.1f}% / {100 * b['invalid_rate']:.1f}%",
                     None, None, None])
    elif ev:
        rows.append(["Evaluation throughput", _status(ev), None, None, None, None])

    ppo = results.get("ppo") or {}
    if ppo:
        p, b = ppo.get("project") or {}, ppo.get("baseline") or {}
        shape = f"{ppo.get('prompts')} prompts × {ppo.get('response_length')} tokens"
        rows.append([f"PPO step wall time, s ({shape})", _side(p, "step_seconds"),
                     _side(b, "step_seconds"), _ratio(ppo.get("time_ratio")),
                     f"≤ {TARGETS['ppo_time_ratio']:g}×",
                     _verdict(ppo.get("time_ratio"), TARGETS["ppo_time_ratio"], False)])
        rows.append(["PPO peak RSS of the process, MiB", _side(p, "peak_rss_mib"),
                     _side(b, "peak_rss_mib"), _ratio(ppo.get("memory_ratio")),
                     f"≤ {TARGETS['ppo_memory_ratio']:g}×",
                     _verdict(ppo.get("memory_ratio"), TARGETS["ppo_memory_ratio"], False)])
        if p.get("peak_cuda_mib") is not None or b.get("peak_cuda_mib") is not None:
            rows.append(["PPO peak GPU memory allocated, MiB", _side(p, "peak_cuda_mib"),
                         _side(b, "peak_cuda_mib"), None, None, None])
        rows.append(["PPO step, fraction of the matmul rate", _pct(p.get("matmul_fraction")),
                     _pct(b.get("matmul_fraction")), None,
                     f"≥ {100 * TARGETS['matmul_fraction']:g}%",
                     _verdict(p.get("matmul_fraction"), TARGETS["matmul_fraction"], True)])

    sft = results.get("sft") or {}
    if sft.get("status") == "ok":
        p, b = sft["project"], sft["baseline"]
        rows.append([f"SFT throughput, tokens/s (batch {sft['batch_size']} × "
                     f"{sft['mean_tokens']:.0f} tokens)", fmt(p["tokens_per_s"]),
                     fmt(b["tokens_per_s"]), fmt(sft["speedup"]) + "×", None, None])
        if p.get("step_cpu_seconds") and b.get("step_cpu_seconds"):
            rows.append(["SFT step CPU time, s (all threads; steadier than wall time under load)",
                         fmt(p["step_cpu_seconds"]), fmt(b["step_cpu_seconds"]),
                         _ratio(p["step_cpu_seconds"] / b["step_cpu_seconds"]), None, None])
        rows.append(["SFT peak RSS during the steps, MiB (peak reset between the sides)",
                     fmt(p.get("peak_rss_mib")), fmt(b.get("peak_rss_mib")),
                     _ratio(p["peak_rss_mib"] / b["peak_rss_mib"])
                     if p.get("peak_rss_mib") and b.get("peak_rss_mib") else None, None, None])
        rows.append(["SFT step, fraction of the matmul rate", _pct(p.get("matmul_fraction")),
                     _pct(b.get("matmul_fraction")), None,
                     f"≥ {100 * TARGETS['matmul_fraction']:g}%",
                     _verdict(p.get("matmul_fraction"), TARGETS["matmul_fraction"], True)])
    elif sft:
        rows.append(["SFT throughput", _status(sft), None, None, None, None])

    mm = results.get("matmul") or {}
    if mm.get("status") == "ok":
        rows.append([f"Dense matmul rate, GFLOP/s ({mm['dtype']}, {mm['device']})",
                     fmt(mm["flops_per_s"] / 1e9), None, None, None, None])

    plan = results.get("planning") or {}
    if plan:
        label = "Planning `snakemake -n --configfile configs/paper.yaml`, s"
        target = f"≤ {TARGETS['planning_seconds']:g} s"
        if plan.get("status") == "ok":
            rows.append([label + (f" ({plan['jobs']} jobs)" if plan.get("jobs") else ""),
                         fmt(plan["seconds"]), None, None, target,
                         _verdict(plan["seconds"], TARGETS["planning_seconds"], False)])
        else:
            rows.append([label, _status(plan), None, None, target, "no"])
    return rows


def _side(side: dict, key: str):
    if not side:
        return None
    if side.get("status") != "ok":
        return _status(side)
    return fmt(side.get(key))


def _status(result: dict) -> str:
    """'error: <the most telling line>' — the last line naming an error, else the last line."""
    lines = [line.strip() for line in (result.get("error") or "").splitlines() if line.strip()]
    named = [line for line in lines if "Error:" in line or "Error " in line[:40]]
    detail = (named or lines or ["no detail"])[-1]
    return f"{result.get('status', 'error')}: {detail[:200]}"


def _ratio(value):
    return None if value is None else fmt(value) + "×"


def _pct(value):
    return None if value is None else f"{100 * value:.1f}%"


def format_report(results: dict) -> str:
    """The Markdown page written to <out>/README.md."""
    machine = results.get("machine", {})
    lines = ["# Benchmark results", "",
             f"Run {machine.get('date', '?')} on {machine.get('platform', '?')}, "
             f"{machine.get('cpus', '?')} CPUs ({machine.get('torch_threads', '?')} torch threads), "
             f"device {machine.get('device', '?')}, dtype {machine.get('dtype', '?')}, "
             f"torch {machine.get('torch', '?')}, transformers {machine.get('transformers', '?')}, "
             f"peft {machine.get('peft', '?')}, trl {machine.get('trl', '?')}"
             + (" — **--quick sizes: a smoke check, not a measurement**" if results.get("quick") else "")
             + ".", ""]
    if machine.get("loadavg_start") is not None:
        lines += [f"Load average (1 min) at start {machine['loadavg_start']:.2f}, "
                  f"at end {machine.get('loadavg_end', float('nan')):.2f}: other processes "
                  "running meanwhile slow both sides of every comparison.", ""]
    lines.append(markdown_table(
        ["measurement", "project", "baseline", "project / baseline", "target", "met"],
        report_rows(results)))
    notes = []
    ppo = results.get("ppo") or {}
    for name in ("project", "baseline"):
        side = ppo.get(name) or {}
        if side.get("status") not in (None, "ok"):
            notes.append(f"PPO {name} side did not run: {side.get('error', '').strip()[-600:]}")
    if results.get("projection"):
        notes.append("The paper-scale projection (GPU hours) is in projection.json and "
                     "docs/benchmarks.md; print it with `python -m bench --projection`.")
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    lines += ["Baselines: the paper's released inference loop (eval), TRL "
              f"{TRL_BASELINE_VERSION} PPOTrainer (ppo), a plain PEFT + PyTorch loop over the "
              "same batches (sft). Conventions: docs/benchmarks.md.", ""]
    return "\n".join(lines)
