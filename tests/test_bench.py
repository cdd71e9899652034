"""The benchmark's arithmetic and reports, without running any benchmark: FLOP counting on a
tiny model shape, the Markdown table writer on fake measurements, the paper-scale projection."""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from bench.__main__ import parse_args
from bench.config import deep_merge
from bench.flops import (ModelShape, forward_flops, generation_flops, ppo_step_flops,
                         sft_step_flops, train_flops)
from bench.measure import check_model
from bench.projection import (COMPLETION_TOKENS, PAPER_MODELS, TASK_SIZES, GpuSpec, mixed_sizes,
                              paper_config, project_paper_scale, projection_settings,
                              projection_table)
from bench.summary import fmt, format_report, markdown_table

ROOT = Path(__file__).resolve().parents[1]

TINY_CONFIG = SimpleNamespace(num_hidden_layers=2, hidden_size=8, intermediate_size=16,
                              num_attention_heads=2, num_key_value_heads=1, vocab_size=10)
QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.fixture
def tiny():
    return ModelShape.from_config(TINY_CONFIG)


# ---------------------------------------------------------------- FLOP counting

def test_shape_counts_by_hand(tiny):
    assert tiny.head_dim == 4 and tiny.kv_heads == 1
    # per block: q 8x8, k 8x4, v 8x4, o 8x8, gate/up 8x16, down 16x8 = 64+32+32+64+3*128
    assert tiny.block_params == 2 * 576
    assert tiny.lm_head_params == 80
    # LoRA r=2: r*(in+out) per module: q 32, k 24, v 24, o 32
    assert tiny.lora_params(2, QKVO) == 2 * 112
    assert tiny.lora_params(2, "all-linear") == 2 * (112 + 3 * 2 * 24)
    with pytest.raises(ValueError, match="no linear layer"):
        tiny.lora_params(2, ["c_attn"])
    # None: PEFT's default targets, the query and value projections
    assert tiny.lora_params(2, None) == tiny.lora_params(2, ["q_proj", "v_proj"]) == 2 * 56


def test_smollm2_shape_matches_its_parameter_count():
    config = SimpleNamespace(num_hidden_layers=30, hidden_size=576, intermediate_size=1536,
                             num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                             vocab_size=49152)
    shape = ModelShape.from_config(config)
    assert shape.block_params == 30 * 3_538_944
    # + tied embeddings/lm_head (28.3M) + norms ≈ the 134.5M parameters of SmolLM2-135M
    assert 134e6 < shape.block_params + shape.lm_head_params < 135e6


def test_mpt_style_mlp_has_two_matrices():
    shape = ModelShape(1, 8, 32, 2, 2, 4, 10, gated_mlp=False)
    assert set(shape.linear_shapes()) == {"q_proj", "k_proj", "v_proj", "o_proj", "up_proj",
                                          "down_proj"}
    assert shape.block_params == 4 * 64 + 2 * 256
    # PEFT's default for MPT is its fused Wqkv (8 -> 24): r·(8 + 24), as much as q and v apart
    assert shape.lora_params(2, None) == 2 * (8 + 24)


def test_forward_flops_by_hand(tiny):
    # attention per (query, key) pair: 4 * layers * heads * head_dim = 64
    assert tiny.attention_flops(3, 5) == 64 * 15
    expected = 2 * 1152 * 8 + 64 * (9 + 25) + 2 * 80 * 2
    assert forward_flops(tiny, [3, 5], lm_head_positions=2) == expected
    assert forward_flops(tiny, [3, 5], 2, lora_params=224) == expected + 2 * 224 * 8


def test_train_flops_conventions(tiny):
    seqs, positions, lora = [4, 6], 3, 224
    linear = 2 * 1152 * 10 + 2 * 80 * 3
    attention = 64 * (16 + 36)
    # full training: 3 x forward
    assert train_flops(tiny, seqs, positions, lora, frozen_base=False) == \
        3 * forward_flops(tiny, seqs, positions, lora)
    # LoRA on a frozen base: 2 x linear, 3 x attention, 3 x the adapters' forward
    frozen = train_flops(tiny, seqs, positions, lora)
    assert frozen == 2 * linear + 3 * attention + 3 * 2 * lora * 10
    # activation checkpointing recomputes the blocks' forward once
    assert train_flops(tiny, seqs, positions, lora, recompute=True) == \
        frozen + 2 * (1152 + lora) * 10 + attention
    assert sft_step_flops(tiny, seqs, positions, lora) == frozen


def test_generation_flops_by_hand(tiny):
    prefill = 2 * 1152 * 3 + 64 * 9 + 2 * 80  # prompt of 3, logits for the first new token
    assert generation_flops(tiny, [3], 1) == prefill
    # a second token: one position through blocks + lm_head, attending to 4 keys
    assert generation_flops(tiny, [3], 2) == prefill + 2 * (1152 + 80) + 64 * 4
    assert generation_flops(tiny, [3, 3], 2) == 2 * generation_flops(tiny, [3], 2)


def test_ppo_step_flops_parts(tiny):
    parts = ppo_step_flops(tiny, [5, 7], response_len=3, ppo_epochs=2, lora_params=224)
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")
    assert parts["reference_forward"] == forward_flops(tiny, [8, 10], 6)
    assert set(parts) == {"rollout", "reference_forward", "update", "total"}
    assert parts["update"] == 2 * train_flops(tiny, [8, 10], 6, 224)
    one_epoch = ppo_step_flops(tiny, [5, 7], 3, 1, 224)
    assert parts["total"] - one_epoch["total"] == train_flops(tiny, [8, 10], 6, 224)


# ---------------------------------------------------------------- the report

def test_markdown_table_escapes_and_blanks():
    text = markdown_table(["a", "b"], [["x|y", None], [1.5, "two\nlines"]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | — |",
                                 "| 1.5 | two lines |"]


def test_fmt_significant_digits():
    assert fmt(None) is None
    assert fmt(0.123456) == "0.123"
    assert fmt(12.3456) == "12.3"
    assert fmt(123456.7) == "123,457"
    assert fmt(42) == "42"
    assert fmt(float("nan")) == "nan"


def fake_results(**overrides):
    results = {
        "quick": False,
        "machine": {"date": "2026-01-01 00:00", "platform": "Linux", "cpus": 2,
                    "torch_threads": 2, "device": "cpu", "dtype": "auto", "torch": "2.13",
                    "transformers": "5.24", "peft": "0.21", "trl": "1.16",
                    "loadavg_start": 0.5, "loadavg_end": 0.7},
        "matmul": {"status": "ok", "device": "cpu", "dtype": "float32", "flops_per_s": 50e9},
        "eval": {"status": "ok", "examples": 256, "speedup": 3.5, "agreement": 0.98,
                 "project": {"examples_per_s": 7.0, "accuracy": 0.9, "invalid_rate": 0.0},
                 "baseline": {"examples_per_s": 2.0, "accuracy": 0.89, "invalid_rate": 0.01}},
        "ppo": {"status": "ok", "prompts": 8, "response_length": 16, "time_ratio": 0.4,
                "memory_ratio": 0.6,
                "project": {"status": "ok", "step_seconds": 4.0, "peak_rss_mib": 600.0,
                            "matmul_fraction": 0.45},
                "baseline": {"status": "ok", "step_seconds": 10.0, "peak_rss_mib": 1000.0,
                             "matmul_fraction": 0.18}},
        "sft": {"status": "ok", "batch_size": 8, "mean_tokens": 95.2, "speedup": 1.25,
                "project": {"tokens_per_s": 500.0, "matmul_fraction": 0.3, "peak_rss_mib": 1500.0,
                            "step_cpu_seconds": 3.0},
                "baseline": {"tokens_per_s": 400.0, "matmul_fraction": 0.24,
                             "peak_rss_mib": 3000.0, "step_cpu_seconds": 4.0}},
        "planning": {"status": "ok", "seconds": 8.5, "jobs": 1265},
    }
    results.update(overrides)
    return results


def rows_by_name(report: str) -> dict[str, list[str]]:
    rows = {}
    for line in report.splitlines():
        if line.startswith("| ") and not line.startswith("| measurement"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0]] = cells[1:]
    return rows


def test_report_rows_and_verdicts():
    report = format_report(fake_results())
    rows = rows_by_name(report)
    evaluation = rows["Evaluation throughput, examples/s (SST-2 dev, 256 examples)"]
    assert evaluation == ["7", "2", "3.5×", "≥ 3×", "yes"]
    assert rows["PPO step wall time, s (8 prompts × 16 tokens)"] == ["4", "10", "0.4×", "≤ 0.5×", "yes"]
    assert rows["PPO peak RSS of the process, MiB"] == ["600", "1,000", "0.6×", "≤ 0.5×", "no"]
    assert rows["PPO step, fraction of the matmul rate"][:2] == ["45.0%", "18.0%"]
    assert rows["PPO step, fraction of the matmul rate"][-1] == "yes"
    assert rows["SFT step, fraction of the matmul rate"][-1] == "no"
    assert rows["SFT throughput, tokens/s (batch 8 × 95 tokens)"][:3] == ["500", "400", "1.25×"]
    assert rows["SFT step CPU time, s (all threads; steadier than wall time under load)"][
        :3] == ["3", "4", "0.75×"]
    assert rows["SFT peak RSS during the steps, MiB (peak reset between the sides)"][:3] == [
        "1,500", "3,000", "0.5×"]
    assert rows["Planning `snakemake -n --configfile configs/paper.yaml`, s (1265 jobs)"] == \
        ["8.5", "—", "—", "≤ 10 s", "yes"]
    assert "smoke check" not in report
    assert "smoke check" in format_report(fake_results(quick=True))


def test_report_shows_a_side_that_failed():
    results = fake_results()
    results["ppo"] = {"status": "ok", "prompts": 8, "response_length": 16,
                      "project": {"status": "ok", "step_seconds": 4.0, "peak_rss_mib": 600.0},
                      "baseline": {"status": "error",
                                   "error": "Traceback ...\nImportError: cannot import name X"}}
    results["planning"] = {"status": "error", "error": "ValidationError: bad config"}
    report = format_report(results)
    rows = rows_by_name(report)
    time_row = rows["PPO step wall time, s (8 prompts × 16 tokens)"]
    assert time_row[:2] == ["4", "error: ImportError: cannot import name X"]
    assert time_row[2:] == ["—", "≤ 0.5×", "—"]
    planning = rows["Planning `snakemake -n --configfile configs/paper.yaml`, s"]
    assert planning == ["error: ValidationError: bad config", "—", "—", "≤ 10 s", "no"]
    assert "PPO baseline side did not run" in report


# ---------------------------------------------------------------- projection

def grid_config(**sections) -> dict:
    """A config laid out as config.yaml with what the projection reads, at toy sizes;
    `sections` are merged over it."""
    lora = {"lora_r": 2, "lora_target_modules": QKVO}
    config = {
        "protocol": "suite",
        "inference": {"batch_size": 2, "max_new_tokens": 3},
        "evaluation": {"max_examples": None},
        "sft": {"epochs": 1, "device": "cpu", **lora},  # on CPU TRL recomputes nothing
        "sft_multi": {"mixing": "upsample"},
        "ppo": {"steps": None, "passes": 1, "prompts_per_step": 2, "ppo_epochs": 1,
                "response_length_min": 2, "response_length_max": 2, "dtype": "float32", **lora},
        "ppo_multi": {"mixing": "upsample"},
        "grpo": {"steps": 1, "prompts_per_step": 1, "num_generations": 2,
                 "max_completion_length": 2, "device": "cpu", **lora},
    }
    return deep_merge(config, sections)


def by_method(config: dict, shape: ModelShape, tasks: dict, gpu: GpuSpec | None = None) -> dict:
    return {r["method"]: r for r in project_paper_scale(config, gpu or GpuSpec(), {"m": shape},
                                                        tasks)}


def test_projection_arithmetic_on_one_tiny_task(tiny):
    gpu = GpuSpec(name="toy", peak_flops=1e6, utilisation=0.5, memory_bandwidth=1e3,
                  bytes_per_param=2)
    tasks = {"glue/t": ("t", 10, 4, 6, 20, 7, True)}  # 10 train, 4 eval rows
    rows = by_method(grid_config(), tiny, tasks, gpu)
    assert list(rows) == ["zero_shot", "few_shot", "sft", "sft_multi", "ppo", "ppo_multi",
                          "grpo"]
    weights = 1152 + 80
    # zero-shot: prefill of 4 prompts of 6 tokens (+ first-token logits) at 0.5e6 FLOP/s,
    # then 2 batches x 2 decode steps, each max(weights*2 bytes / 1e3 B/s, compute)
    prefill = 4 * (2 * 1152 * 6 + 64 * 36 + 2 * 80)
    decode = 2 * 2 * max(weights * 2 / 1e3, 2 * weights * 2 / 0.5e6)
    zero = rows["zero_shot"]
    assert zero["pflop"] == pytest.approx(prefill / 1e15)
    assert zero["gpu_hours"] * 3600 == pytest.approx(prefill / 0.5e6 + decode)
    assert rows["few_shot"]["gpu_hours"] > zero["gpu_hours"]
    # SFT: 10 rows of 7 tokens, loss on COMPLETION_TOKENS positions, 1 epoch, + evaluation
    per_row = train_flops(tiny, [7], COMPLETION_TOKENS, tiny.lora_params(2, QKVO))
    assert rows["sft"]["pflop"] * 1e15 == pytest.approx(10 * per_row + prefill)
    # one task: the multi-task mix is the task itself
    assert rows["sft_multi"]["pflop"] == pytest.approx(rows["sft"]["pflop"])
    assert rows["ppo_multi"]["gpu_hours"] == pytest.approx(rows["ppo"]["gpu_hours"])
    for row in rows.values():
        assert row["gpu_hours"] == pytest.approx(row["compute_hours"] + row["decode_hours"])


def training_cost(config: dict, shape: ModelShape, tasks: dict) -> dict:
    """(PFLOP, decode hours) of each method's training: its row less the evaluation."""
    rows = by_method(config, shape, tasks)
    zero = rows["zero_shot"]
    return {method: (row["pflop"] - zero["pflop"], row["decode_hours"] - zero["decode_hours"])
            for method, row in rows.items()}


def test_projected_ppo_makes_passes_over_each_train_split(tiny):
    # two tasks with the same prompt lengths, so that every step costs the same
    tasks = {"glue/a": ("a", 100, 1, 6, 20, 7, True), "glue/b": ("b", 40, 1, 6, 20, 7, True)}
    ppo = {"passes": 3, "prompts_per_step": 16}
    passes = training_cost(grid_config(ppo=ppo), tiny, tasks)
    one_step = training_cost(grid_config(ppo=dict(ppo, steps=1, passes=None)), tiny, tasks)
    step = {method: (one_step[method][0] / adapters, one_step[method][1] / adapters)
            for method, adapters in (("ppo", 2), ("ppo_multi", 1))}  # one step per adapter
    # A pass over 100 rows is 6 steps of 16 prompts and a last one of 4 (rlnlu.ppo cuts each
    # pass so), 3 passes are 21 steps; over 40 rows, 2 steps of 16 and one of 8: 9 steps.
    assert passes["ppo"] == pytest.approx(tuple((21 + 9) * x for x in step["ppo"]))
    # ppo_multi: one adapter per benchmark over the mix; upsampled, b draws 100 rows too:
    # 200 rows, 13 steps a pass (12 of 16, one of 8), 39 steps
    assert passes["ppo_multi"] == pytest.approx(tuple(39 * x for x in step["ppo_multi"]))
    # kept in proportion: 140 rows, 9 steps a pass, 27 steps
    proportional = training_cost(grid_config(ppo=ppo, ppo_multi={"mixing": "proportional"}),
                                 tiny, tasks)
    assert proportional["ppo_multi"] == pytest.approx(tuple(27 * x for x in step["ppo_multi"]))


def test_projected_grpo_runs_its_configured_steps_per_task(tiny):
    tasks = {"glue/a": ("a", 100, 1, 6, 20, 7, True), "glue/b": ("b", 40, 1, 6, 20, 7, True)}
    five = training_cost(grid_config(grpo={"steps": 5}), tiny, tasks)["grpo"]
    one = training_cost(grid_config(grpo={"steps": 1}), tiny, tasks)["grpo"]
    assert five == pytest.approx(tuple(5 * x for x in one))  # whatever the tasks' sizes
    # β = 0: TRL makes no reference pass, and the step costs that forward pass less
    without_kl = training_cost(grid_config(grpo={"steps": 1, "beta": 0.0}), tiny, tasks)["grpo"]
    reference = 2 * forward_flops(tiny, [6 + 2] * 2, 2 * 2)  # 2 tasks, 2 answers of 2 tokens
    assert (one[0] - without_kl[0]) * 1e15 == pytest.approx(reference)


def test_projection_mixes_multi_task_sft_by_the_configured_rule(tiny):
    tasks = {"glue/a": ("a", 10, 1, 5, 10, 5, True), "glue/b": ("b", 2, 1, 5, 10, 5, True),
             "glue/c": ("a", 0, 1, 5, 10, 5, True)}  # c trains on a's data: no adapter of its own

    def multi_over_single(mixing: dict) -> float:
        cost = training_cost(grid_config(sft_multi=mixing), tiny, tasks)
        return cost["sft_multi"][0] / cost["sft"][0]

    assert multi_over_single({"mixing": "upsample"}) == pytest.approx(20 / 12)  # b: 2 -> 10 rows
    assert multi_over_single({"mixing": "proportional"}) == pytest.approx(1)
    # the paper's rule: a task under lines_per_task rows repeated whole up to it, b 3 times
    assert multi_over_single({"mixing": "repeat", "lines_per_task": 5}) == pytest.approx(16 / 12)


@pytest.mark.parametrize("mixing", [
    {"mixing": "upsample"}, {"mixing": "proportional"}, {"mixing": "repeat", "lines_per_task": 7},
    {"mixing": "upsample", "cap_per_task": 3}, {"mixing": "repeat", "cap_per_task": 3,
                                                "lines_per_task": 7}])
def test_mixed_sizes_count_what_mix_tasks_draws(mixing):
    from rlnlu.sampling import mix_tasks

    sizes = {"a": 5, "b": 2, "c": 9}
    rows = {task: [{"task": task, "i": i} for i in range(n)] for task, n in sizes.items()}
    rule = dict(mixing)
    drawn = mix_tasks(rows, rule.pop("mixing"), 0, **rule)
    assert Counter(row["task"] for row in drawn) == mixed_sizes(sizes, **mixing)


def test_projection_reads_the_paper_config_merged_over_the_default():
    default = yaml.safe_load((ROOT / "config.yaml").read_text())
    paper = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())
    settings = projection_settings(paper_config())
    for key in ("passes", "prompts_per_step", "ppo_epochs"):
        assert settings["ppo"][key] == paper["ppo"][key]
    assert settings["ppo"]["steps"] is None  # the paper's budget is passes, not steps
    assert settings["ppo"]["response_tokens"] == paper["ppo"]["response_length_max"]
    assert settings["grpo"]["steps"] == paper["grpo"]["steps"]
    assert settings["eval"]["batch_size"] == paper["inference"]["batch_size"]
    # ppo_multi: ppo's keys under its own, as the workflow merges them
    assert settings["ppo_multi"]["mixing"]["mixing"] == paper["ppo_multi"]["mixing"]
    assert settings["ppo_multi"]["passes"] == paper["ppo"]["passes"]
    # the paper protocol draws 24-31 new tokens per batch; the suite's stops at config.yaml's cap
    assert settings["eval"]["new_tokens"] == 31
    suite = projection_settings(deep_merge(paper_config(), {"protocol": "suite"}))
    assert suite["eval"]["new_tokens"] == default["inference"]["max_new_tokens"]
    assert settings["sft_multi"]["mixing"]["mixing"] == paper["sft_multi"]["mixing"]


def test_deep_merge_merges_mappings_and_replaces_the_rest():
    base = {"ppo": {"steps": 12, "kl": {"adaptive": False, "target": 6}}, "models": ["a"]}
    over = {"ppo": {"steps": None, "kl": {"adaptive": True}}, "models": ["b", "c"]}
    assert deep_merge(base, over) == {"ppo": {"steps": None, "kl": {"adaptive": True, "target": 6}},
                                      "models": ["b", "c"]}
    assert base["ppo"] == {"steps": 12, "kl": {"adaptive": False, "target": 6}}  # not changed


def test_projection_of_the_paper_grid_is_complete_and_positive():
    rows = project_paper_scale()
    assert len(rows) == len(PAPER_MODELS) * 7
    assert all(r["gpu_hours"] > 0 and math.isfinite(r["gpu_hours"]) for r in rows)
    table = projection_table(rows)
    assert "**total**" in table and "llama2-7b-chat" in table
    # every task of configs/paper.yaml has sizes
    assert len(TASK_SIZES) == 21


# ---------------------------------------------------------------- the command

def test_quick_defaults_and_unknown_sections():
    args = parse_args(["--quick"])
    assert (args.eval_examples, args.ppo_prompts, args.ppo_tokens, args.sft_batch) == (8, 2, 4, 2)
    args = parse_args([])
    assert (args.eval_examples, args.ppo_prompts, args.ppo_tokens, args.sft_batch) == (256, 8, 16, 8)
    with pytest.raises(SystemExit):
        parse_args(["--only", "eval,bogus"])


def test_missing_model_names_the_convert_rule(tmp_path):
    with pytest.raises(SystemExit, match="snakemake --cores 1 resources/models/smollm2-135m"):
        check_model(str(tmp_path / "nowhere"))
