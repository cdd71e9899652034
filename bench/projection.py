"""The paper-scale projection: GPU hours of the paper's grid for its 7B models, from FLOP
counts. The grid's settings are read when the projection runs, from configs/paper.yaml merged
over config.yaml, and pass through the trainers' own settings classes."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .config import load_config
from .flops import ModelShape, forward_flops, train_flops
from .summary import fmt, markdown_table

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


def paper_config() -> dict:
    """configs/paper.yaml merged over config.yaml: the paper's grid as the workflow reads it."""
    return load_config("config.yaml", "configs/paper.yaml")


def projection_settings(config: dict) -> dict:
    """What sets the grid's cost, per method, from `config` (laid out as config.yaml). Each
    training section is handed over as the workflow hands it to its trainer
    (`Grid.training_settings`, the mixing keys split off by `settings.split_mixing`) and read
    through the settings layer, so what the config leaves out takes the trainer's default."""
    from rlnlu.grid import Grid
    from rlnlu.protocols import get_protocol
    from rlnlu.settings import GRPOSettings, PPOSettings, SFTSettings, split_mixing

    grid = Grid.from_config(config)

    def lora(trainer) -> dict:
        return {"lora_r": trainer.lora_r, "lora_targets": trainer.lora_target_modules}

    inference = config["inference"]
    drawn = get_protocol(config.get("protocol", "suite")).decoding.new_tokens
    settings = {"eval": {
        "batch_size": inference["batch_size"],
        # a protocol that draws the new tokens from [low, high) decodes up to high - 1
        "new_tokens": drawn[1] - 1 if drawn else inference["max_new_tokens"],
        "max_examples": config.get("evaluation", {}).get("max_examples")}}
    for method in ("sft", "sft_multi"):
        section, mixing = split_mixing(grid.training_settings(method))
        sft = SFTSettings.from_config(section)
        # TRL's trainers recompute activations (checkpointing) wherever they run on a GPU
        settings[method] = {"epochs": sft.epochs, "max_examples": sft.max_examples,
                            "recompute": sft.device != "cpu", **lora(sft), "mixing": mixing}
    for method in ("ppo", "ppo_multi"):
        section, mixing = split_mixing(grid.training_settings(method))
        ppo = PPOSettings.from_config(section)
        settings[method] = {
            "steps": ppo.steps, "passes": ppo.passes, "prompts_per_step": ppo.prompts_per_step,
            "ppo_epochs": ppo.ppo_epochs, "response_tokens": ppo.response_length_max,
            # below fp32 the sampling pass's log-probabilities are not exact, and one more
            # forward pass recomputes them (rlnlu.ppo.cached_pass_is_exact)
            "policy_forward": ppo.dtype != "float32", **lora(ppo), "mixing": mixing}
    grpo = GRPOSettings.from_config(grid.training_settings("grpo"))
    settings["grpo"] = {"steps": grpo.steps, "prompts_per_step": grpo.prompts_per_step,
                        "num_generations": grpo.num_generations,
                        "response_tokens": grpo.max_completion_length,
                        "reference": grpo.beta > 0,  # TRL skips the reference pass at β = 0
                        "recompute": grpo.device != "cpu", **lora(grpo)}
    return settings


def mixed_sizes(sizes: dict[str, int], mixing: str = "upsample", cap_per_task: int | None = None,
                lines_per_task: int = 30000) -> dict[str, int]:
    """Rows each task puts into a multi-task mix of tasks with `sizes` rows, by the rules of
    `rlnlu.sampling.mix_tasks` (counted, not drawn: ReCoRD alone has 1.4M rows)."""
    capped = {task: min(n, cap_per_task) if cap_per_task else n for task, n in sizes.items()}
    if mixing == "upsample":
        largest = max(capped.values(), default=0)
        return {task: largest if n else 0 for task, n in capped.items()}
    if mixing == "repeat":
        return {task: n * math.ceil(lines_per_task / n) if 0 < n < lines_per_task else n
                for task, n in capped.items()}
    if mixing == "proportional":
        return capped
    raise ValueError(f"unknown mixing rule {mixing!r}")


def ppo_steps(ppo: dict, rows: int) -> int:
    """Steps of one PPO adapter trained on `rows` prompt rows, by the trainer's own budget:
    `steps`, or `passes` over the rows, each pass cut into steps of `prompts_per_step`."""
    from rlnlu.settings import PPOSettings

    budget = PPOSettings(steps=ppo["steps"], passes=ppo["passes"],
                         prompts_per_step=ppo["prompts_per_step"])
    return budget.total_steps(rows)


def _decode_seconds(shape: ModelShape, gpu: GpuSpec, rows: int, steps: int) -> float:
    """Token-by-token decoding: each step reads every weight once (memory-bound for small
    batches) or computes for `rows` sequences, whichever is slower."""
    weights = shape.block_params + shape.lm_head_params
    per_step = max(weights * gpu.bytes_per_param / gpu.memory_bandwidth,
                   2 * weights * rows / gpu.flops)
    return steps * per_step


def _eval_cost(shape, gpu, evaluation, n, prompt_tokens) -> tuple[float, float]:
    """(FLOPs at compute rate, decode seconds) of scoring n examples: prefill + capped decode."""
    batches = math.ceil(n / evaluation["batch_size"])
    prefill = n * (2 * shape.block_params * prompt_tokens
                   + shape.attention_flops(prompt_tokens, prompt_tokens)
                   + 2 * shape.lm_head_params)
    return prefill, _decode_seconds(shape, gpu, evaluation["batch_size"],
                                    batches * (evaluation["new_tokens"] - 1))


def _rl_cost(shape, gpu, prompt_tokens, prompts, response, epochs, lora, recompute=False,
             policy_forward=True, reference=True) -> tuple[float, float]:
    """(FLOPs, decode seconds) of one RL step: prefill, decode, the policy forward (unless
    the sampling pass gives its log-probs), the reference forward (unless there is no KL
    term), `epochs` training passes."""
    seqs = [prompt_tokens + response] * prompts
    positions = prompts * response
    flops = prompts * (2 * (shape.block_params + lora) * prompt_tokens
                       + shape.attention_flops(prompt_tokens, prompt_tokens))
    if policy_forward:  # old policy + values
        flops += forward_flops(shape, seqs, positions, lora)
    if reference:
        flops += forward_flops(shape, seqs, positions)
    flops += epochs * train_flops(shape, seqs, positions, lora, recompute=recompute)
    return flops, _decode_seconds(shape, gpu, prompts, response - 1)


def project_paper_scale(settings: dict | None = None, gpu: GpuSpec | None = None,
                        models: dict | None = None, tasks: dict | None = None) -> list[dict]:
    """GPU hours of a grid per model and method, from FLOP counts; `settings` is a config laid
    out as config.yaml (by default `paper_config()`, read now). Every method scores every
    task's evaluation split; training is counted once per adapter (single-task adapters per
    training task, multi-task ones per benchmark over the mix its mixing rule makes); PPO and
    GRPO rows exclude the SFT adapter they start from (the sft row has it). Decoding runs to
    the longest length the settings allow and every RL step counts `prompts_per_step` prompts
    (also the shorter last step of a PPO pass): an upper bound. Time = FLOPs at `gpu.flops` +
    decode steps at max(weight reads at memory bandwidth, compute)."""
    resolved = projection_settings(paper_config() if settings is None else settings)
    gpu = gpu or GpuSpec()
    models = models or PAPER_MODELS
    tasks = tasks or TASK_SIZES
    evaluation, ppo, ppo_multi, grpo = (resolved[m] for m in ("eval", "ppo", "ppo_multi", "grpo"))
    sft_mixing = resolved["sft_multi"]["mixing"]
    owners = {}  # (benchmark, train owner) -> (n_train, train_tokens, zero_tokens)
    for key, (owner, n_train, _, zero, _, train, _) in tasks.items():
        if n_train:
            owners[(key.split("/")[0], owner)] = (n_train, train, zero)
    benchmarks = sorted({benchmark for benchmark, _ in owners})

    def mix(benchmark: str, mixing: dict) -> list[tuple[int, int, int]]:
        """(rows in the mix, train tokens, zero-shot tokens) of each task of a benchmark."""
        group = {owner: sizes for (b, owner), sizes in owners.items() if b == benchmark}
        rows = mixed_sizes({owner: n for owner, (n, _, _) in group.items()}, **mixing)
        return [(rows[owner], train, zero) for owner, (_, train, zero) in group.items()]

    rows = []
    for model, shape in models.items():
        def lora(method: str) -> int:
            return shape.lora_params(resolved[method]["lora_r"], resolved[method]["lora_targets"])

        def evaluation_cost(style: str) -> tuple[float, float]:
            flops = seconds = 0.0
            for _, _, n_eval, zero, few, _, _ in tasks.values():
                n = min(n_eval, evaluation["max_examples"] or n_eval)
                f, s = _eval_cost(shape, gpu, evaluation, n, few if style == "few" else zero)
                flops, seconds = flops + f, seconds + s
            return flops, seconds

        def sft_flops(method: str, rows_and_tokens) -> float:
            sft = resolved[method]
            flops = 0.0
            for n, tokens in rows_and_tokens:
                per_row = train_flops(shape, [tokens], COMPLETION_TOKENS, lora(method),
                                      recompute=sft["recompute"])
                flops += sft["epochs"] * min(n, sft["max_examples"] or n) * per_row
            return flops

        def rl(method, adapters, prompts, epochs, recompute=False, policy_forward=True,
               reference=True) -> tuple[float, float]:
            """Training cost of `adapters`, (prompt tokens, steps) each, plus the evaluation."""
            flops, seconds = methods["zero_shot"]
            for prompt_tokens, steps in adapters:
                f, s = _rl_cost(shape, gpu, prompt_tokens, prompts,
                                resolved[method]["response_tokens"], epochs, lora(method),
                                recompute, policy_forward, reference)
                flops, seconds = flops + steps * f, seconds + steps * s
            return flops, seconds

        methods = {"zero_shot": evaluation_cost("zero"), "few_shot": evaluation_cost("few")}
        eval_flops, eval_seconds = methods["zero_shot"]
        methods["sft"] = (sft_flops("sft", [(n, t) for n, t, _ in owners.values()]) + eval_flops,
                          eval_seconds)
        multi = sum(sft_flops("sft_multi", [(n, t) for n, t, _ in mix(b, sft_mixing)])
                    for b in benchmarks)
        methods["sft_multi"] = (multi + eval_flops, eval_seconds)
        methods["ppo"] = rl("ppo", [(zero, ppo_steps(ppo, n)) for n, _, zero in owners.values()],
                            ppo["prompts_per_step"], ppo["ppo_epochs"],
                            policy_forward=ppo["policy_forward"])
        per_benchmark = []
        for benchmark in benchmarks:
            mixed = mix(benchmark, ppo_multi["mixing"])
            n = sum(rows for rows, _, _ in mixed)
            tokens = round(sum(rows * zero for rows, _, zero in mixed) / n)
            per_benchmark.append((tokens, ppo_steps(ppo_multi, n)))
        methods["ppo_multi"] = rl("ppo_multi", per_benchmark, ppo_multi["prompts_per_step"],
                                  ppo_multi["ppo_epochs"],
                                  policy_forward=ppo_multi["policy_forward"])
        methods["grpo"] = rl("grpo", [(zero, grpo["steps"]) for _, _, zero in owners.values()],
                             grpo["prompts_per_step"] * grpo["num_generations"], 1,
                             recompute=grpo["recompute"], reference=grpo["reference"])
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
