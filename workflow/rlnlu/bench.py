"""The project's benchmark: how fast its evaluator, PPO and SFT run on this machine, against
the loops they replace, and how far each step is from the machine's matmul rate.

    bash scripts/bench.sh                 # python -m rlnlu.bench; results in results/bench/
    bash scripts/bench.sh --quick         # tiny sizes: a smoke check of every measurement
    bash scripts/bench.sh --projection    # only print the paper-scale cost projection

Every comparison runs in one invocation, with the same model (the converted
SmolLM2-135M-Instruct at resources/models/smollm2-135m), tokenizer, examples, LoRA settings
and lengths on both sides:

  eval      rlnlu.generation.generate_answers (the project's settings from config.yaml)
            against the paper's released inference loop: batches of 4 prompts, left-padded,
            24-31 new tokens drawn per batch, stopping only at end-of-sequence; greedy both.
  ppo       one PPO update step (rollout + optimisation of one batch) of rlnlu.ppo.train_ppo
            against trl 1.12.0's PPOTrainer (trl.experimental.ppo), each side in a fresh
            subprocess so its peak RSS is its own. trl 1.12.0 is installed with
            `pip install --no-deps --target <cache>/trl-1.12.0`, never into the project's venv.
  sft       tokens/s of the project's SFT trainer (rlnlu.sft, TRL's SFTTrainer) against a
            plain PEFT + PyTorch loop over the very batches the trainer used.
  matmul    the machine's dense matmul rate (fp32 on CPU, bf16 on GPU); the PPO and SFT
            steps are reported as a fraction of it (FLOP conventions: `train_flops`).
  planning  wall time of `snakemake -n --configfile configs/paper.yaml`.
  projection  GPU hours of the paper's whole grid for its 7B models, from FLOP counts.

Results: <out>/<section>.json, <out>/summary.json and <out>/README.md (a Markdown table).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = "resources/models/smollm2-135m"
DEFAULT_DATA = "../shared/data"
DEFAULT_OUT = "results/bench"
TRL_BASELINE_VERSION = "1.12.0"  # the last trl release with PPOTrainer
QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
SECTIONS = ("matmul", "eval", "ppo", "sft", "planning", "projection")

# Targets the issue set; ratios are project / baseline.
TARGETS = {
    "eval_speedup": 3.0,  # project examples/s >= 3x the paper loop's
    "ppo_time_ratio": 0.5,  # project step time <= 0.5x TRL's
    "ppo_memory_ratio": 0.5,  # project peak RSS <= 0.5x TRL's
    "matmul_fraction": 0.40,  # PPO and SFT steps reach >= 40% of the matmul rate
    "planning_seconds": 10.0,
}


# ====================================================================== FLOP counting

@dataclass(frozen=True)
class ModelShape:
    """The matmul shapes of a decoder-only transformer (Llama/Qwen/MPT style)."""
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    gated_mlp: bool = True  # SwiGLU (gate, up, down) or a plain 2-matrix MLP (MPT)

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        """From a transformers config (or anything with the same attribute names)."""
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(layers=config.num_hidden_layers, hidden=config.hidden_size,
                   intermediate=config.intermediate_size, heads=heads,
                   kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                   head_dim=head_dim, vocab=config.vocab_size)

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer of one block."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        shapes = {"q_proj": (self.hidden, q), "k_proj": (self.hidden, kv),
                  "v_proj": (self.hidden, kv), "o_proj": (q, self.hidden)}
        if self.gated_mlp:
            shapes.update(gate_proj=(self.hidden, self.intermediate),
                          up_proj=(self.hidden, self.intermediate),
                          down_proj=(self.intermediate, self.hidden))
        else:
            shapes.update(up_proj=(self.hidden, self.intermediate),
                          down_proj=(self.intermediate, self.hidden))
        return shapes

    @property
    def block_params(self) -> int:
        """Weights of the blocks' linear layers (no embeddings, norms or biases)."""
        return self.layers * sum(i * o for i, o in self.linear_shapes().values())

    @property
    def lm_head_params(self) -> int:
        return self.vocab * self.hidden

    def lora_params(self, rank: int, targets) -> int:
        """Weights of rank-`rank` LoRA adapters on the named linear layers of every block
        ("all-linear": every linear layer of the blocks, as PEFT reads it; not the lm_head)."""
        shapes = self.linear_shapes()
        if targets == "all-linear":
            targets = list(shapes)
        unknown = sorted(set(targets) - set(shapes))
        if unknown:
            raise ValueError(f"no linear layer named {unknown}; the blocks have {sorted(shapes)}")
        return self.layers * sum(rank * sum(shapes[name]) for name in targets)

    def attention_flops(self, queries: int, keys: int) -> int:
        """Scores and weighted values, all layers: 2 matmuls of queries×keys×(heads·head_dim),
        2 FLOPs per multiply-add. Causal masking is not halved (the PaLM/MFU convention)."""
        return 4 * self.layers * self.heads * self.head_dim * queries * keys


def forward_flops(shape: ModelShape, seq_lens, lm_head_positions: int, lora_params: int = 0) -> int:
    """One forward pass over sequences of the given lengths (real tokens only): 2 FLOPs per
    weight per token in the blocks (+ LoRA), attention over each sequence, and the lm_head
    over `lm_head_positions` positions (only those whose logits are needed)."""
    tokens = sum(seq_lens)
    return (2 * (shape.block_params + lora_params) * tokens
            + sum(shape.attention_flops(s, s) for s in seq_lens)
            + 2 * shape.lm_head_params * lm_head_positions)


def train_flops(shape: ModelShape, seq_lens, lm_head_positions: int, lora_params: int = 0,
                frozen_base: bool = True, recompute: bool = False) -> int:
    """Forward + backward of one training step.

    Full training (frozen_base=False): 3 × forward (backward = activation + weight gradients).
    LoRA on a frozen base (the convention used here): the frozen linear layers and the lm_head
    need only activation gradients, so their backward ≈ 1 × forward (2 × in total); attention
    has no weights, every backward matmul is needed: 3 × its forward; the LoRA matrices get both
    gradients: 3 × their forward. `recompute` adds one more forward of the blocks (activation
    checkpointing, on by default for the project's TRL trainers on GPU)."""
    tokens = sum(seq_lens)
    linear = 2 * shape.block_params * tokens + 2 * shape.lm_head_params * lm_head_positions
    attention = sum(shape.attention_flops(s, s) for s in seq_lens)
    lora = 2 * lora_params * tokens
    if not frozen_base:
        total = 3 * (linear + attention + lora)
    else:
        total = 2 * linear + 3 * attention + 3 * lora
    if recompute:
        total += 2 * (shape.block_params + lora_params) * tokens + attention
    return total


def generation_flops(shape: ModelShape, prompt_lens, new_tokens: int, lora_params: int = 0) -> int:
    """Prefill each prompt (logits at its last position only) and decode `new_tokens` − 1 more
    tokens one at a time against the key/value cache."""
    total = 0
    for p in prompt_lens:
        total += 2 * (shape.block_params + lora_params) * p + shape.attention_flops(p, p)
        total += 2 * shape.lm_head_params  # the first new token
        for j in range(1, new_tokens):
            total += (2 * (shape.block_params + lora_params + shape.lm_head_params)
                      + shape.attention_flops(1, p + j))
    return total


def ppo_step_flops(shape: ModelShape, prompt_lens, response_len: int, ppo_epochs: int = 1,
                   lora_params: int = 0) -> dict:
    """The work one PPO step needs, defined once for both implementations: sample
    `response_len` tokens per prompt (the sampling pass also yields the policy's log-probs
    and values); one forward of the reference (no adapter) over prompt + response, with the
    lm_head at response positions; `ppo_epochs` LoRA training passes over the same. Value
    heads (hidden → 1) are negligible. A separate policy forward pass is not needed work."""
    seqs = [p + response_len for p in prompt_lens]
    positions = len(prompt_lens) * response_len
    parts = {
        "rollout": generation_flops(shape, prompt_lens, response_len, lora_params),
        "reference_forward": forward_flops(shape, seqs, positions),
        "update": ppo_epochs * train_flops(shape, seqs, positions, lora_params),
    }
    parts["total"] = sum(parts.values())
    return parts


def sft_step_flops(shape: ModelShape, seq_lens, loss_positions: int, lora_params: int = 0) -> int:
    """One LoRA SFT step: blocks over every real token, the lm_head only where there is a
    loss (the completion tokens) — the work needed, whatever an implementation computes."""
    return train_flops(shape, seq_lens, loss_positions, lora_params)


# ====================================================================== Markdown

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
                     "docs/benchmarks.md; print it with `python -m rlnlu.bench --projection`.")
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    lines += ["Baselines: the paper's released inference loop (eval), TRL "
              f"{TRL_BASELINE_VERSION} PPOTrainer (ppo), a plain PEFT + PyTorch loop over the "
              "same batches (sft). Conventions: docs/benchmarks.md.", ""]
    return "\n".join(lines)


# ====================================================================== paper-scale projection

# Official split sizes (train, evaluation split used by the tables). MultiRC counts answer
# options, ReCoRD candidate entities (queries × RECORD_CANDIDATES), since the project makes
# one record per option or candidate.
RECORD_CANDIDATES = 14  # assumed candidates per ReCoRD query: an estimate, not measured here
# Mean tokens with SmolLM2's tokenizer and chat template, zero-shot prompt (eval split),
# 5-shot prompt, and a training row (prompt + completion): measured on ../shared/data
# (100 eval, 100 train rows per task) where the files are there; marked estimates elsewhere
# (few-shot ≈ zero + 5·(zero − 30), a training row ≈ zero + 5).
TASK_SIZES = {
    # key: (train owner, n_train, n_eval, zero_tokens, few_tokens, train_tokens, measured)
    "glue/cola": ("cola", 8551, 1043, 84, 363, 90, True),
    "glue/sst2": ("sst2", 67349, 872, 100, 400, 93, True),
    "glue/mrpc": ("mrpc", 3668, 408, 137, 661, 138, True),
    "glue/qqp": ("qqp", 363846, 40430, 105, 480, 110, False),
    "glue/stsb": ("stsb", 5749, 1500, 140, 678, 145, True),
    "glue/mnli_m": ("mnli_m", 392702, 9815, 115, 540, 120, False),
    "glue/mnli_mm": ("mnli_m", 0, 9832, 115, 540, 120, False),
    "glue/qnli": ("qnli", 104743, 5463, 129, 625, 134, False),
    "glue/rte": ("rte", 2490, 277, 147, 778, 155, True),
    "glue/wnli": ("wnli", 635, 71, 113, 532, 119, True),
    "glue/ax": ("mnli_m", 0, 1104, 126, 606, 120, False),
    "superglue/boolq": ("boolq", 9427, 3270, 225, 1100, 230, False),
    "superglue/cb": ("cb", 250, 56, 176, 874, 173, True),
    "superglue/copa": ("copa", 400, 100, 117, 572, 123, True),
    "superglue/multirc": ("multirc", 27243, 4848, 463, 2533, 465, True),
    "superglue/record": ("record", 100730 * RECORD_CANDIDATES, 10000 * RECORD_CANDIDATES,
                         330, 1630, 335, False),
    "superglue/rte": ("rte", 2490, 277, 147, 777, 155, True),
    "superglue/wic": ("wic", 5428, 638, 107, 508, 114, True),
    "superglue/wsc": ("wsc", 554, 104, 133, 607, 130, True),
    "superglue/axb": ("rte", 0, 1104, 118, 742, 155, True),
    "superglue/axg": ("rte", 0, 356, 105, 728, 155, True),
}
COMPLETION_TOKENS = 5  # label word + </Judgement> + EOS: the positions with an SFT loss
PAPER_MODELS = {  # the paper's models, from their published configs
    "llama2-7b-chat": ModelShape(32, 4096, 11008, 32, 32, 128, 32000),
    "qwen2.5-7b-instruct": ModelShape(28, 3584, 18944, 28, 4, 128, 152064),
    "mpt-7b-chat": ModelShape(32, 4096, 16384, 32, 32, 128, 50432, gated_mlp=False),
}


@dataclass(frozen=True)
class GpuSpec:
    name: str = "H100 SXM"
    peak_flops: float = 989e12  # dense bf16
    utilisation: float = 0.40  # the achieved fraction assumed for prefill and training
    memory_bandwidth: float = 3.35e12  # bytes/s: bounds token-by-token decoding
    bytes_per_param: int = 2  # bf16 weights

    @property
    def flops(self) -> float:
        return self.peak_flops * self.utilisation


PAPER_SETTINGS = {  # configs/paper.yaml over config.yaml, as far as cost goes
    "eval_batch_size": 32, "max_new_tokens": 12, "shots": 5,
    "sft_epochs": 1, "sft_multi_mixing": "upsample",
    "ppo_steps": 1000, "ppo_prompts": 16, "ppo_epochs": 3, "ppo_response": 32,
    "grpo_steps": 1000, "grpo_prompts": 16, "grpo_generations": 4, "grpo_response": 32,
    "lora_rank": 16, "lora_targets": "all-linear",
    "activation_checkpointing": True,  # TRL trainers (SFT, GRPO) on GPU
}


def _decode_seconds(shape: ModelShape, gpu: GpuSpec, rows: int, steps: int) -> float:
    """Token-by-token decoding: each step reads every weight once (memory-bound for small
    batches) or computes for `rows` sequences, whichever is slower."""
    weights = shape.block_params + shape.lm_head_params
    per_step = max(weights * gpu.bytes_per_param / gpu.memory_bandwidth,
                   2 * weights * rows / gpu.flops)
    return steps * per_step


def _eval_cost(shape, gpu, settings, n, prompt_tokens) -> tuple[float, float]:
    """(FLOPs at compute rate, decode seconds) of scoring n examples: prefill + capped decode."""
    batches = math.ceil(n / settings["eval_batch_size"])
    prefill = n * (2 * shape.block_params * prompt_tokens
                   + shape.attention_flops(prompt_tokens, prompt_tokens)
                   + 2 * shape.lm_head_params)
    return prefill, _decode_seconds(shape, gpu, settings["eval_batch_size"], batches * (settings["max_new_tokens"] - 1))


def _rl_cost(shape, gpu, prompt_tokens, prompts, response, epochs, lora, recompute=False,
             policy_forward=True) -> tuple[float, float]:
    """(FLOPs, decode seconds) of one RL step: prefill, decode, the policy forward (unless
    the sampling pass gives its log-probs, as in rlnlu.ppo), the reference forward, `epochs`
    training passes."""
    seqs = [prompt_tokens + response] * prompts
    positions = prompts * response
    flops = prompts * (2 * (shape.block_params + lora) * prompt_tokens
                       + shape.attention_flops(prompt_tokens, prompt_tokens))
    if policy_forward:  # old policy + values
        flops += forward_flops(shape, seqs, positions, lora)
    flops += forward_flops(shape, seqs, positions)  # the reference
    flops += epochs * train_flops(shape, seqs, positions, lora, recompute=recompute)
    return flops, _decode_seconds(shape, gpu, prompts, response - 1)


def project_paper_scale(settings: dict | None = None, gpu: GpuSpec | None = None,
                        models: dict | None = None, tasks: dict | None = None) -> list[dict]:
    """GPU hours of the paper's grid (configs/paper.yaml) per model and method, from FLOP
    counts. Every method scores every task's evaluation split; training is counted once per
    adapter (single-task adapters per training task, multi-task ones per benchmark); PPO and
    GRPO rows exclude the SFT adapter they start from (the sft row has it). Time = FLOPs at
    `gpu.flops` + decode steps at max(weight reads at memory bandwidth, compute)."""
    settings = dict(PAPER_SETTINGS, **(settings or {}))
    gpu = gpu or GpuSpec()
    models = models or PAPER_MODELS
    tasks = tasks or TASK_SIZES
    rows = []
    for model, shape in models.items():
        lora = shape.lora_params(settings["lora_rank"], settings["lora_targets"])
        owners = {}  # (benchmark, owner) -> (n_train, train_tokens)
        for key, (owner, n_train, *_rest) in tasks.items():
            benchmark = key.split("/")[0]
            if n_train:
                owners[(benchmark, owner)] = (n_train, tasks[key][5], tasks[key][3])

        def evaluation(style: str) -> tuple[float, float]:
            flops = seconds = 0.0
            for owner, n_train, n_eval, zero, few, train, measured in tasks.values():
                f, s = _eval_cost(shape, gpu, settings, n_eval, few if style == "few" else zero)
                flops, seconds = flops + f, seconds + s
            return flops, seconds

        def sft_rows(count_and_tokens) -> float:
            flops = 0.0
            for n, tokens in count_and_tokens:
                per_row = train_flops(shape, [tokens], COMPLETION_TOKENS, lora,
                                      recompute=settings["activation_checkpointing"])
                flops += settings["sft_epochs"] * n * per_row
            return flops

        methods = {}
        methods["zero_shot"] = evaluation("zero")
        methods["few_shot"] = evaluation("few")
        sft = sft_rows([(n, t) for n, t, _ in owners.values()])
        methods["sft"] = (sft + methods["zero_shot"][0], methods["zero_shot"][1])
        multi = 0.0
        for benchmark in {b for b, _ in owners}:
            group = [v for (b, _), v in owners.items() if b == benchmark]
            largest = max(n for n, _, _ in group)
            mixed = [(largest if settings["sft_multi_mixing"] == "upsample" else n, t)
                     for n, t, _ in group]
            multi += sft_rows(mixed)
        methods["sft_multi"] = (multi + methods["zero_shot"][0], methods["zero_shot"][1])

        def rl(groups, steps, prompts, response, epochs, recompute=False, policy_forward=True):
            flops = seconds = 0.0
            for prompt_tokens in groups:
                f, s = _rl_cost(shape, gpu, prompt_tokens, prompts, response, epochs, lora,
                                recompute, policy_forward)
                flops, seconds = flops + steps * f, seconds + steps * s
            return flops + methods["zero_shot"][0], seconds + methods["zero_shot"][1]

        single = [zero for _, _, zero in owners.values()]
        per_benchmark = []
        for benchmark in {b for b, _ in owners}:
            group = [zero for (b, _), (_, _, zero) in owners.items() if b == benchmark]
            per_benchmark.append(round(sum(group) / len(group)))
        methods["ppo"] = rl(single, settings["ppo_steps"], settings["ppo_prompts"],
                            settings["ppo_response"], settings["ppo_epochs"],
                            policy_forward=False)
        methods["ppo_multi"] = rl(per_benchmark, settings["ppo_steps"], settings["ppo_prompts"],
                                  settings["ppo_response"], settings["ppo_epochs"],
                                  policy_forward=False)
        methods["grpo"] = rl(single, settings["grpo_steps"],
                             settings["grpo_prompts"] * settings["grpo_generations"],
                             settings["grpo_response"], 1,
                             recompute=settings["activation_checkpointing"])
        for method, (flops, decode) in methods.items():
            compute = flops / gpu.flops
            rows.append({"model": model, "method": method, "pflop": flops / 1e15,
                         "compute_hours": compute / 3600, "decode_hours": decode / 3600,
                         "gpu_hours": (compute + decode) / 3600})
    return rows


def projection_table(rows: list[dict], gpu: GpuSpec | None = None) -> str:
    gpu = gpu or GpuSpec()
    models = list(dict.fromkeys(r["model"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    hours = {(r["model"], r["method"]): r["gpu_hours"] for r in rows}
    body = [[method] + [fmt(hours[(m, method)]) for m in models] for method in methods]
    body.append(["**total**"] + [fmt(sum(hours[(m, x)] for x in methods)) for m in models])
    header = (f"GPU hours on one {gpu.name} at {100 * gpu.utilisation:g}% of "
              f"{gpu.peak_flops / 1e12:g} TFLOP/s dense bf16 "
              f"({gpu.flops / 1e12:g} TFLOP/s), decoding bounded by "
              f"{gpu.memory_bandwidth / 1e12:g} TB/s:\n\n")
    return header + markdown_table(["method"] + models, body)


# ====================================================================== helpers

def _now() -> float:
    return time.perf_counter()


def _cpu_seconds() -> float:
    """CPU time of this process (all threads): on a loaded machine a steadier measure of a
    step's work than its wall time."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux: /proc/self/clear_refs), so
    two measurements in one process each get their own peak; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_since_reset_mib() -> float | None:
    """The peak RSS since `_reset_peak_rss` (VmHWM), or None where /proc is not there."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _rss_mib() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2 ** 20
    except ImportError:  # pragma: no cover
        return float("nan")


def check_model(model: str) -> None:
    if not (Path(model) / "config.json").is_file():
        raise SystemExit(
            f"The benchmark model is missing: {model} has no config.json.\n"
            "Convert the embedded SmolLM2-135M first, with the workflow's convert rule:\n"
            "    snakemake --cores 1 resources/models/smollm2-135m")


def check_data(data: str) -> None:
    from .data import missing_data_message
    from .tasks import get_task

    task = get_task("glue", "sst2")
    for split in ("validation", "train"):
        if message := missing_data_message(task, split, data):
            raise SystemExit(f"The benchmark data is missing: {message}")


def _sst2_rows(data: str, split: str, tokenizer, limit: int | None, seed: int) -> list[dict]:
    from .data import load_split
    from .prompts import PromptStyle, render_split, subsample
    from .tasks import get_task

    task = get_task("glue", "sst2")
    records = subsample(load_split(task, split, "local", data), limit, seed)
    return list(render_split(task, records, None, PromptStyle(shots=0, chat_template=True),
                             tokenizer))


def _project_config() -> dict:
    import yaml

    return yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))


# ====================================================================== matmul

def bench_matmul(device: str, dtype_name: str, quick: bool) -> dict:
    import torch

    from .models import resolve_dtype

    dtype = resolve_dtype(dtype_name, device)
    sizes = [256, 512] if quick else ([1024, 2048] if device == "cpu" else [4096, 8192])
    budget = 0.2 if quick else 1.0  # seconds per size
    best, per_size = 0.0, {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(2):
            a @ b
        _sync(device)
        reps, start = 0, _now()
        while True:
            a @ b
            reps += 1
            if reps % 4 == 0:
                _sync(device)
                if _now() - start >= budget:
                    break
        _sync(device)
        rate = 2 * n ** 3 * reps / (_now() - start)
        per_size[str(n)] = rate
        best = max(best, rate)
    return {"status": "ok", "device": device, "dtype": str(dtype).removeprefix("torch."),
            "flops_per_s": best, "per_size": per_size, "threads": torch.get_num_threads()}


# ====================================================================== evaluation

def paper_generate(model, tokenizer, prompts: list[str], batch_size: int = 4,
                   min_new_tokens: int = 24, max_new_tokens: int = 31, seed: int = 0):
    """The paper's released inference loop: prompts in data order, batches of 4, left-padded,
    a number of new tokens drawn per batch from [24, 31], greedy, stopping only when every
    sequence has written end-of-sequence. Returns (texts, new tokens generated)."""
    import torch

    from .generation import needs_special_tokens

    rng = random.Random(seed)
    device = next(model.parameters()).device
    texts, generated = [], 0
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            encoded = tokenizer(batch, return_tensors="pt", padding=True,
                                add_special_tokens=needs_special_tokens(tokenizer, batch[0])).to(device)
            out = model.generate(**encoded, do_sample=False,
                                 max_new_tokens=rng.randint(min_new_tokens, max_new_tokens),
                                 pad_token_id=tokenizer.pad_token_id, temperature=None,
                                 top_p=None, top_k=None)
            new = out[:, encoded["input_ids"].shape[1]:]
            generated += int(new.numel())
            texts += tokenizer.batch_decode(new, skip_special_tokens=True)
    return texts, generated


def bench_eval(args, device: str) -> dict:
    from .answers import parse_answer
    from .generation import generate_answers
    from .models import load_model, load_tokenizer
    from .tasks import get_task

    inference = _project_config()["inference"]
    batch_size, max_new = inference["batch_size"], inference["max_new_tokens"]
    task = get_task("glue", "sst2")
    tokenizer = load_tokenizer(args.model)
    limit = args.eval_examples or None
    rows = _sst2_rows(args.data, "validation", tokenizer, limit, args.seed)
    prompts = [row["prompt"] for row in rows]
    model = load_model(args.model, args.dtype, device)

    # warm-up of both code paths (first-call allocations, thread pools)
    generate_answers(model, tokenizer, prompts[:2], batch_size=2, max_new_tokens=2, desc="warm-up")
    paper_generate(model, tokenizer, prompts[:2], 2, 2, 2)

    _sync(device)
    start = _now()
    project_texts = generate_answers(model, tokenizer, prompts, batch_size=batch_size,
                                     max_new_tokens=max_new, desc="project evaluator")
    _sync(device)
    project_seconds = _now() - start
    start = _now()
    paper_texts, paper_tokens = paper_generate(model, tokenizer, prompts, seed=args.seed)
    _sync(device)
    paper_seconds = _now() - start

    def side(texts, seconds, **extra):
        parsed = [parse_answer(task, text) for text in texts]
        return dict(examples_per_s=len(texts) / seconds, seconds=seconds,
                    accuracy=sum(a.label == r["label"] for a, r in zip(parsed, rows)) / len(rows),
                    invalid_rate=sum(not a.valid for a in parsed) / len(rows), **extra), parsed

    project, project_parsed = side(
        project_texts, project_seconds, batch_size=batch_size, max_new_tokens=max_new,
        stop="</Judgement> or EOS", order="sorted by prompt length")
    baseline, paper_parsed = side(
        paper_texts, paper_seconds, batch_size=4, new_tokens="24-31 per batch", stop="EOS only",
        order="data order", new_token_slots=paper_tokens)
    agreement = sum(a.label == b.label for a, b in zip(project_parsed, paper_parsed)) / len(rows)
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    return {"status": "ok", "task": "glue/sst2", "split": "validation", "examples": len(rows),
            "mean_prompt_tokens": sum(lengths) / len(lengths), "decoding": "greedy",
            "project": project, "baseline": baseline,
            "speedup": project["examples_per_s"] / baseline["examples_per_s"],
            "agreement": agreement,
            "examples_shown": [{"gold": r["label"], "project": a, "paper": b}
                               for r, a, b in list(zip(rows, project_texts, paper_texts))[:5]]}


# ====================================================================== PPO (one subprocess per side)

def _ppo_spec(args, device: str) -> dict:
    from .models import load_tokenizer

    tokenizer = load_tokenizer(args.model)
    prompts = args.ppo_prompts
    rows = _sst2_rows(args.data, "train", tokenizer, prompts, args.seed)[:prompts]
    return {"model": args.model, "device": device, "dtype": args.dtype, "seed": args.seed,
            "rows": [{"prompt": r["prompt"], "label": r["label"]} for r in rows],
            "response_length": args.ppo_tokens, "steps": args.ppo_steps,
            "warmup_steps": args.ppo_warmup, "learning_rate": 1e-4, "kl_coef": 0.2,
            "lora": {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "lora_rslora": True,
                     "lora_bias": "lora_only", "lora_target_modules": QKVO},
            "workflow": str(REPO / "workflow")}


def _child_ppo_project(spec: dict) -> dict:
    """The project's PPO: rlnlu.ppo.train_ppo for warmup + measured steps, each step timed from
    the start of its rollout to the end of its PPO update."""
    import torch

    from . import ppo
    from .ppo import KLSettings, PPOSettings
    from .tasks import get_task

    n = len(spec["rows"])
    settings = PPOSettings(
        **spec["lora"], kl=KLSettings(init_kl_coef=spec["kl_coef"], adaptive=False),
        learning_rate=spec["learning_rate"], optimizer="adamw", prompts_per_step=n,
        mini_batch_size=n, ppo_epochs=1, steps=spec["warmup_steps"] + spec["steps"],
        response_length_min=spec["response_length"], response_length_max=spec["response_length"],
        save_steps=0, seed=spec["seed"], dtype=spec["dtype"], device=spec["device"])
    marks: list[tuple[str, float]] = []
    response_tokens: list[float] = []
    original_rollout, original_update = ppo.rollout, ppo.ppo_update

    def rollout(*a, **k):
        _sync(spec["device"])
        marks.append(("start", _now()))
        out = original_rollout(*a, **k)
        response_tokens.append(out.mask.sum(dim=1).mean().item())
        return out

    def ppo_update(*a, **k):
        out = original_update(*a, **k)
        _sync(spec["device"])
        marks.append(("end", _now()))
        return out

    ppo.rollout, ppo.ppo_update = rollout, ppo_update
    try:
        with tempfile.TemporaryDirectory(prefix="bench-ppo-") as tmp:
            tmp = Path(tmp)
            summary = ppo.train_ppo(spec["model"], spec["rows"], get_task("glue", "sst2"),
                                    tmp / "adapter", tmp / "work", settings, tmp / "curve.csv",
                                    log=lambda message: None)
    finally:
        ppo.rollout, ppo.ppo_update = original_rollout, original_update
    starts = [t for kind, t in marks if kind == "start"]
    ends = [t for kind, t in marks if kind == "end"]
    steps = [e - s for s, e in zip(starts, ends)]
    return {"implementation": "rlnlu.ppo.train_ppo", "step_seconds_all": steps,
            "response_tokens_mean": response_tokens,
            "reward": summary["final"].get("reward"),
            "notes": "value head on the policy backbone; reference = PPO adapter disabled; "
                     "log-probs at response positions only; stops at </Judgement> or EOS",
            "torch_threads": torch.get_num_threads()}


def _answer_reward_model(tokenizer, rows: list[dict], task, device):
    """A reward 'model' for TRL's PPOTrainer: get_reward() calls `model.<base_model_prefix>(...)`
    and `model.score(hidden_states[-1])`, then reads the score at each sequence's last token.
    Here the backbone decodes the response after its (known) prompt and scores it with
    rlnlu.answers, the project's own reward; every position carries that score."""
    import torch
    from torch import nn

    from .answers import parse_answer, reward
    from .generation import needs_special_tokens

    prompts = [(tokenizer(r["prompt"], add_special_tokens=needs_special_tokens(
        tokenizer, r["prompt"]))["input_ids"], r["label"]) for r in rows]

    class Output:
        def __init__(self, hidden):
            self.hidden_states = (hidden,)

    class AnswerBackbone(nn.Module):
        calls = matched = 0

        def forward(self, input_ids, attention_mask, **kwargs):
            scores = []
            for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
                tokens = [t for t, m in zip(ids, mask) if m]
                gold, response = None, tokens
                for prompt, label in prompts:
                    if tokens[:len(prompt)] == prompt:
                        gold, response = label, tokens[len(prompt):]
                        break
                AnswerBackbone.calls += 1
                AnswerBackbone.matched += gold is not None
                answer = parse_answer(task, tokenizer.decode(response, skip_special_tokens=True))
                scores.append(reward(task, answer, gold) if gold is not None else -3.0)
            values = torch.tensor(scores, dtype=torch.float32, device=input_ids.device)
            return Output(values[:, None, None].expand(-1, input_ids.size(1), 1))

    class AnswerReward(nn.Module):
        base_model_prefix = "backbone"

        def __init__(self):
            super().__init__()
            self.backbone = AnswerBackbone()
            self.score = nn.Identity()

    return AnswerReward().to(device)


def _child_ppo_trl(spec: dict) -> dict:
    """TRL 1.12.0's PPOTrainer (trl.experimental.ppo) with the same model, LoRA, prompts,
    response length, one PPO epoch over one mini-batch of all prompts. TRL needs a separate
    value model (a sequence-classification copy of the model, trained in full, as in TRL's
    examples) and a reward model (the answer parser above)."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if trl.__version__ != TRL_BASELINE_VERSION:
        raise RuntimeError(f"expected trl {TRL_BASELINE_VERSION} first on sys.path, "
                           f"got {trl.__version__} from {trl.__file__}")
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from .generation import needs_special_tokens
    from .models import load_tokenizer, resolve_device, resolve_dtype
    from .tasks import get_task
    from .training import LoraSettings

    device = resolve_device(spec["device"])
    dtype = resolve_dtype(spec["dtype"], device)
    torch.manual_seed(spec["seed"])
    tokenizer = load_tokenizer(spec["model"])
    pad_note = None
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        # TRL treats every pad id as padding, also inside prompts: with pad = EOS = <|im_end|>,
        # the chat template's turn ends would vanish from the model's input. Use another
        # existing special token as pad (no new embeddings); the text tokens are unchanged.
        for candidate in ("<|endoftext|>", tokenizer.unk_token):
            if candidate and candidate in tokenizer.get_vocab() and \
                    tokenizer.convert_tokens_to_ids(candidate) != tokenizer.eos_token_id:
                tokenizer.pad_token = candidate
                pad_note = f"pad token set to {candidate!r} (TRL masks every pad id)"
                break
    rows = spec["rows"]
    n = len(rows)
    dataset = Dataset.from_dict({"input_ids": [
        tokenizer(r["prompt"], add_special_tokens=needs_special_tokens(tokenizer, r["prompt"]))["input_ids"]
        for r in rows]})
    policy = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=dtype)
    value = AutoModelForSequenceClassification.from_pretrained(spec["model"], dtype=dtype, num_labels=1)
    value.config.pad_token_id = tokenizer.pad_token_id
    reward_model = _answer_reward_model(tokenizer, rows, get_task("glue", "sst2"), device)
    steps = spec["warmup_steps"] + spec["steps"]
    on_cpu = device == "cpu"
    marks: list[float] = []

    with tempfile.TemporaryDirectory(prefix="bench-trl-ppo-") as tmp:
        config = PPOConfig(
            output_dir=tmp, report_to="none", save_strategy="no", logging_steps=1,
            per_device_train_batch_size=n, gradient_accumulation_steps=1, num_mini_batches=1,
            local_rollout_forward_batch_size=n, num_ppo_epochs=1, total_episodes=n * steps,
            response_length=spec["response_length"], stop_token="eos", temperature=1.0,
            missing_eos_penalty=None, kl_coef=spec["kl_coef"], learning_rate=spec["learning_rate"],
            num_sample_generations=0, seed=spec["seed"], use_cpu=on_cpu,
            bf16=(not on_cpu and dtype == torch.bfloat16), disable_tqdm=True)
        trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy,
                             ref_model=None, reward_model=reward_model, train_dataset=dataset,
                             value_model=value, eval_dataset=dataset,
                             peft_config=LoraSettings(**spec["lora"]).lora(),
                             callbacks=[step_timer(device, marks)])
        trainer.train()
        scores = [entry.get("objective/scores") for entry in trainer.state.log_history
                  if "objective/scores" in entry]
    steps_seconds = [b - a for a, b in zip(marks, marks[1:])]
    backbone = type(reward_model.backbone)
    if backbone.matched < backbone.calls:
        raise RuntimeError(f"the reward model found the prompt of only {backbone.matched} of "
                           f"{backbone.calls} sequences: rewards would be wrong")
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {"implementation": f"trl {trl.__version__} PPOTrainer (trl.experimental.ppo)",
            "step_seconds_all": steps_seconds, "reward": scores[-1] if scores else None,
            "trainable_parameters": trainable, "pad_note": pad_note,
            "reward_sequences_scored": backbone.calls,
            "notes": "separate value model (full copy, trained in full), reference = policy "
                     "with its adapter disabled, full-vocabulary logits over every position, "
                     "stops at EOS only", "torch_threads": torch.get_num_threads()}


def run_child(kind: str, spec_path: str, result_path: str) -> int:
    """Entry point of a measurement subprocess: run one side, write its result JSON."""
    import torch

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    result = {"status": "ok"}
    try:
        result.update({"ppo-project": _child_ppo_project, "ppo-trl": _child_ppo_trl}[kind](spec))
        measured = result["step_seconds_all"][spec["warmup_steps"]:]
        result["step_seconds"] = sum(measured) / len(measured) if measured else None
    except Exception:  # recorded in the result: the parent reports it and moves on
        result = {"status": "error", "error": traceback.format_exc()}
    result["peak_rss_mib"] = _peak_rss_mib()
    result["rss_end_mib"] = _rss_mib()
    if torch.cuda.is_available():
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    Path(result_path).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


def ensure_trl(cache_dir: Path, version: str = TRL_BASELINE_VERSION) -> Path:
    """trl==version in its own folder (pip --target --no-deps), never in the project's venv."""
    target = Path(cache_dir).expanduser() / f"trl-{version}"
    if (target / "trl" / "__init__.py").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".trl-{version}-", dir=target.parent))
    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                        "--target", str(tmp), f"trl=={version}"], check=True)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _run_side(kind: str, spec: dict, out: Path, extra_path: str | None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = out / f"{kind}.spec.json", out / f"{kind}.result.json"
    log_path = out / "logs" / f"{kind}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    result_path.unlink(missing_ok=True)
    env = dict(os.environ)
    paths = [p for p in (extra_path, spec["workflow"], env.get("PYTHONPATH")) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    start = _now()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.run([sys.executable, "-m", "rlnlu.bench", "--child", kind,
                               "--spec", str(spec_path), "--result", str(result_path)],
                              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    wall = _now() - start
    spec_path.unlink(missing_ok=True)
    if not result_path.is_file():
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        return {"status": "error", "error": f"subprocess exited {proc.returncode}:\n{tail}",
                "log": str(log_path)}
    result = json.loads(result_path.read_text(encoding="utf-8"))
    result_path.unlink()
    result.update(process_seconds=wall, log=str(log_path))
    return result


def bench_ppo(args, device: str, shape: ModelShape, matmul: dict | None) -> dict:
    spec = _ppo_spec(args, device)
    out = Path(args.out)
    print(f"[bench] PPO: project side ({len(spec['rows'])} prompts × {spec['response_length']} "
          "tokens) in a subprocess", file=sys.stderr, flush=True)
    project = _run_side("ppo-project", spec, out, None)
    try:
        trl_dir = ensure_trl(Path(args.cache_dir))
    except Exception as err:  # e.g. no package index reachable
        baseline = {"status": "error", "error": f"could not install trl=={TRL_BASELINE_VERSION} "
                                                f"into {args.cache_dir}: {err}"}
    else:
        print(f"[bench] PPO: TRL {TRL_BASELINE_VERSION} side (from {trl_dir}) in a subprocess",
              file=sys.stderr, flush=True)
        baseline = _run_side("ppo-trl", spec, out, str(trl_dir))
        baseline["trl_path"] = str(trl_dir)

    from .models import load_tokenizer

    tokenizer = load_tokenizer(args.model)
    from .generation import needs_special_tokens

    prompt_lens = [len(tokenizer(r["prompt"], add_special_tokens=needs_special_tokens(
        tokenizer, r["prompt"]))["input_ids"]) for r in spec["rows"]]
    lora = shape.lora_params(spec["lora"]["lora_r"], QKVO)
    flops = ppo_step_flops(shape, prompt_lens, spec["response_length"], 1, lora)
    for side in (project, baseline):
        if side.get("status") == "ok" and side.get("step_seconds") and matmul:
            side["achieved_flops_per_s"] = flops["total"] / side["step_seconds"]
            side["matmul_fraction"] = side["achieved_flops_per_s"] / matmul["flops_per_s"]
    result = {"status": "ok" if project.get("status") == "ok" else "error",
              "prompts": len(spec["rows"]), "response_length": spec["response_length"],
              "mean_prompt_tokens": sum(prompt_lens) / len(prompt_lens),
              "ppo_epochs": 1, "mini_batch": len(spec["rows"]), "lora": spec["lora"],
              "warmup_steps": spec["warmup_steps"], "measured_steps": spec["steps"],
              "flops_per_step": flops, "project": project, "baseline": baseline}
    if project.get("status") == "ok" and baseline.get("status") == "ok":
        result["time_ratio"] = project["step_seconds"] / baseline["step_seconds"]
        result["memory_ratio"] = project["peak_rss_mib"] / baseline["peak_rss_mib"]
    return result


def step_timer(device: str, marks: list[float], cpu_marks: list[float] | None = None):
    """A Trainer callback appending a synchronised timestamp (and, given `cpu_marks`, the
    process's CPU time) at the start and after each step, so both trainers' steps are timed
    the same way."""
    from transformers import TrainerCallback

    def mark():
        _sync(device)
        marks.append(_now())
        if cpu_marks is not None:
            cpu_marks.append(_cpu_seconds())

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            mark()

        def on_step_end(self, args, state, control, **kwargs):
            mark()

    return StepTimer()


# ====================================================================== SFT

def bench_sft(args, device: str, shape: ModelShape, matmul: dict | None) -> dict:
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from .models import load_tokenizer, resolve_dtype
    from .sft import SFTSettings, build_trainer

    batch, warmup, steps = args.sft_batch, args.sft_warmup, args.sft_steps
    tokenizer = load_tokenizer(args.model)
    rows = _sst2_rows(args.data, "train", tokenizer, batch * (warmup + steps), args.seed)
    settings = SFTSettings(lora_r=16, lora_target_modules=QKVO, learning_rate=1e-4,
                           micro_batch_tokens=_project_config()["sft"].get("micro_batch_tokens"),
                           batch_size=batch, max_steps=warmup + steps, save_steps=10 ** 9,
                           logging_steps=1, seed=args.seed, dtype=args.dtype, device=device)
    marks: list[float] = []
    cpu_marks: list[float] = []
    batches: list[dict] = []

    import gc

    peaks = {}
    resettable = _reset_peak_rss()
    with tempfile.TemporaryDirectory(prefix="bench-sft-") as tmp:
        trainer = build_trainer(args.model, rows, tmp, settings)
        trainer.add_callback(step_timer(device, marks, cpu_marks))
        original_step = trainer.training_step

        def training_step(model, inputs, *rest, **kwargs):
            batches.append({k: v.detach().clone() for k, v in inputs.items()
                            if isinstance(v, torch.Tensor)})
            return original_step(model, inputs, *rest, **kwargs)

        trainer.training_step = training_step
        trainer.train()
        del trainer
    peaks["project"] = _peak_rss_since_reset_mib() if resettable else None
    project_steps = [b - a for a, b in zip(marks, marks[1:])][warmup:]
    project_cpu = [b - a for a, b in zip(cpu_marks, cpu_marks[1:])][warmup:]
    gc.collect()
    resettable = _reset_peak_rss()

    # The plain loop: a fresh model with the same LoRA, AdamW at the same rate, gradient
    # clipping as the Trainer does, over exactly the batches the trainer trained on.
    dtype = resolve_dtype(args.dtype, device)
    torch.manual_seed(args.seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype),
                           settings.lora()).to(device)
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=0.0)
    plain_steps, plain_cpu = [], []
    for inputs in batches:
        _sync(device)
        start, cpu_start = _now(), _cpu_seconds()
        labels = inputs.get("labels")
        if labels is None:  # a collator that marks completions instead of labels
            labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
            labels = labels.masked_fill(inputs["attention_mask"] == 0, -100)
        loss = model(input_ids=inputs["input_ids"].to(device),
                     attention_mask=inputs["attention_mask"].to(device),
                     labels=labels.to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        plain_steps.append(_now() - start)
        plain_cpu.append(_cpu_seconds() - cpu_start)
    plain_steps, plain_cpu = plain_steps[warmup:], plain_cpu[warmup:]
    peaks["baseline"] = _peak_rss_since_reset_mib() if resettable else None

    measured = batches[warmup:]
    seq_lens = [[int(n) for n in b["attention_mask"].sum(dim=1).tolist()] for b in measured]
    loss_positions = []
    for b in measured:
        labels = b.get("labels")
        if labels is None:
            loss_positions.append(int((b["completion_mask"] * b["attention_mask"]).sum()))
        else:  # a label at position t is predicted from position t − 1
            loss_positions.append(int((labels[:, 1:] != -100).sum()))
    tokens = sum(sum(s) for s in seq_lens)
    lora = shape.lora_params(settings.lora_r, QKVO)
    flops = sum(sft_step_flops(shape, s, n, lora) for s, n in zip(seq_lens, loss_positions))

    def side(step_seconds, **extra):
        seconds = sum(step_seconds)
        d = {"tokens_per_s": tokens / seconds, "step_seconds": seconds / len(step_seconds),
             "achieved_flops_per_s": flops / seconds, **extra}
        if matmul:
            d["matmul_fraction"] = d["achieved_flops_per_s"] / matmul["flops_per_s"]
        return d

    project = side(project_steps, implementation="rlnlu.sft.build_trainer (TRL SFTTrainer, LM "
                   "head at completion positions, token-capped micro-batches)",
                   step_seconds_all=project_steps, peak_rss_mib=peaks["project"],
                   step_cpu_seconds=sum(project_cpu) / len(project_cpu),
                   micro_batch_tokens=settings.micro_batch_tokens,
                   activation_checkpointing=device != "cpu")
    baseline = side(plain_steps, step_seconds_all=plain_steps, peak_rss_mib=peaks["baseline"],
                    step_cpu_seconds=sum(plain_cpu) / len(plain_cpu),
                    implementation="PEFT get_peft_model + torch AdamW loop, "
                                   "full-vocabulary logits (model(..., labels=))")
    all_lens = [n for s in seq_lens for n in s]
    return {"status": "ok", "batch_size": batch, "warmup_steps": warmup,
            "measured_steps": len(measured), "mean_tokens": sum(all_lens) / len(all_lens),
            "tokens": tokens, "loss_positions": sum(loss_positions), "flops": flops,
            "lora": {"r": settings.lora_r, "alpha": settings.lora_alpha, "targets": QKVO},
            "project": project, "baseline": baseline,
            "speedup": project["tokens_per_s"] / baseline["tokens_per_s"]}


# ====================================================================== planning

def bench_planning(timeout: float = 600) -> dict:
    """Wall time of a dry run of the paper's whole grid, in a scratch working directory
    (`snakemake -n --configfile configs/paper.yaml --directory <tmp>`, HF_HUB_OFFLINE=1)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    command = "snakemake -n --configfile configs/paper.yaml --directory <tmp> (HF_HUB_OFFLINE=1)"
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp:
        cmd = [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"),
               "--directory", tmp, "--configfile", "configs/paper.yaml"]
        start = _now()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                                  cwd=REPO)
        except subprocess.TimeoutExpired:
            return {"status": "error", "error": f"timed out after {timeout} s", "command": command}
        seconds = _now() - start
    output = proc.stdout + proc.stderr
    jobs = None
    for line in output.splitlines():
        if re.match(r"^\s*total\s+\d+\s*$", line):
            jobs = int(line.split()[1])
    result = {"status": "ok" if proc.returncode == 0 else "error", "seconds": seconds,
              "jobs": jobs, "returncode": proc.returncode, "command": command}
    if proc.returncode:
        lines = [line for line in output.splitlines() if line.strip()]
        errors = [line for line in lines if "Error" in line or "error" in line.lower()[:40]]
        result["error"] = "\n".join(errors[:5] + ["..."] + lines[-5:])
    return result


# ====================================================================== driver

def _machine(device: str, dtype: str) -> dict:
    import peft
    import torch
    import transformers

    try:
        import trl

        trl_version = trl.__version__
    except ImportError:  # pragma: no cover
        trl_version = None
    info = {"date": time.strftime("%Y-%m-%d %H:%M"), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": device, "dtype": dtype,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "trl": trl_version, "python": platform.python_version(),
            "loadavg_start": os.getloadavg()[0]}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _section(name: str, func, *a) -> dict:
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    start = _now()
    try:
        result = func(*a)
    except SystemExit:
        raise
    except Exception:
        result = {"status": "error", "error": traceback.format_exc()}
    result["section_seconds"] = _now() - start
    print(f"[bench] {name}: {result.get('status')} in {result['section_seconds']:.1f} s",
          file=sys.stderr, flush=True)
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rlnlu.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke check")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--dtype", default="auto",
                        help="auto (fp32 on CPU, bf16 on GPU) | float32 | bfloat16")
    parser.add_argument("--out", default=DEFAULT_OUT, help="where the JSON files and README go")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--data", default=DEFAULT_DATA, help="GLUE files in the official layout")
    parser.add_argument("--cache-dir", default=os.environ.get(
        "RLNLU_BENCH_CACHE", str(Path.home() / ".cache" / "rlnlu-bench")),
        help=f"where trl=={TRL_BASELINE_VERSION} is installed for the PPO baseline")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run, of {','.join(SECTIONS)}")
    parser.add_argument("--projection", action="store_true",
                        help="print the paper-scale projection and exit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-examples", type=int, default=None,
                        help="SST-2 dev examples (a seeded subsample; 0 = all 872); "
                             "default 256, --quick 8")
    parser.add_argument("--ppo-prompts", type=int, default=None, help="default 8, --quick 2")
    parser.add_argument("--ppo-tokens", type=int, default=None, help="default 16, --quick 4")
    parser.add_argument("--ppo-steps", type=int, default=None, help="measured steps, default 3")
    parser.add_argument("--ppo-warmup", type=int, default=None, help="default 1, --quick 0")
    parser.add_argument("--sft-batch", type=int, default=None, help="default 8, --quick 2")
    parser.add_argument("--sft-steps", type=int, default=None, help="measured, default 4, --quick 1")
    parser.add_argument("--sft-warmup", type=int, default=None, help="default 1")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = {  # name: (full, quick)
        "eval_examples": (256, 8), "ppo_prompts": (8, 2), "ppo_tokens": (16, 4),
        "ppo_steps": (3, 1), "ppo_warmup": (1, 0), "sft_batch": (8, 2), "sft_steps": (4, 1),
        "sft_warmup": (1, 1)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return run_child(args.child, args.spec, args.result)
    if args.projection:
        print(projection_table(project_paper_scale()))
        return 0

    from . import files
    from .models import resolve_device

    # Defaults are relative to the repository, paths given on the command line to the
    # directory the command was started in; everything runs from the repository.
    for name, default in (("model", DEFAULT_MODEL), ("data", DEFAULT_DATA), ("out", DEFAULT_OUT)):
        value = getattr(args, name)
        base = REPO if value == default else Path.cwd()
        setattr(args, name, str((base / value).expanduser().resolve()))
    args.cache_dir = str(Path(args.cache_dir).expanduser().resolve())
    os.chdir(REPO)
    wanted = args.only.split(",")
    needs_model = set(wanted) & {"eval", "ppo", "sft"}
    if needs_model:
        check_model(args.model)
        check_data(args.data)
    device = resolve_device(args.device)
    out = Path(args.out)
    results = {"quick": args.quick, "machine": _machine(device, args.dtype),
               "settings": {k: v for k, v in vars(args).items()
                            if k not in ("child", "spec", "result")}}
    shape = None
    if needs_model:
        from transformers import AutoConfig

        shape = ModelShape.from_config(AutoConfig.from_pretrained(args.model))
        results["model"] = {"path": args.model, "shape": asdict(shape),
                            "block_params": shape.block_params,
                            "lm_head_params": shape.lm_head_params}
    matmul = None
    if "matmul" in wanted or (set(wanted) & {"ppo", "sft"}):
        matmul = results["matmul"] = _section("matmul", bench_matmul, device, args.dtype, args.quick)
        if matmul.get("status") != "ok":
            matmul = None
    if "eval" in wanted:
        results["eval"] = _section("eval", bench_eval, args, device)
    if "ppo" in wanted:
        results["ppo"] = _section("ppo", bench_ppo, args, device, shape, matmul)
    if "sft" in wanted:
        results["sft"] = _section("sft", bench_sft, args, device, shape, matmul)
    if "planning" in wanted:
        results["planning"] = _section("planning", bench_planning)
    if "projection" in wanted:
        rows = project_paper_scale()
        results["projection"] = {"status": "ok", "gpu": asdict(GpuSpec()),
                                 "settings": PAPER_SETTINGS, "rows": rows,
                                 "record_candidates_assumed": RECORD_CANDIDATES}
    results["machine"]["loadavg_end"] = os.getloadavg()[0]

    for name in SECTIONS:
        if name in results:
            files.write_json(out / f"{name}.json", results[name])
    files.write_json(out / "summary.json", results)
    report = format_report(results)
    files.write_text(out / "README.md", report)
    print(report)
    if "projection" in results:
        print(projection_table(results["projection"]["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
