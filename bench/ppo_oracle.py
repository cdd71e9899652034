"""The PPO oracle: the project's PPO step (`rlnlu.ppo.ppo_step`) against TRL 0.11.4's
`PPOTrainer.step(queries, responses, scores)`, the trainer the paper's ppo.py calls, on
identical inputs. Run it with `bash scripts/ppo_oracle.sh` (it builds TRL 0.11.4's own
environment once); it writes results/bench/ppo_oracle.json and prints the largest differences.

Both sides get the same tiny Llama (random weights and attention biases, written by the TRL
side's transformers so that both can read it), the same LoRA weights (random, so the policy
differs from the reference) and value head, the same queries, responses and scores, and
Adafactor at the same settings. The mini-batch order is drawn from numpy's global generator
on both sides, seeded alike before each step, so even the paper's schedule (4 epochs,
mini-batches of 8 accumulated in pairs) is compared order for order.

Compared, per step: the old and reference log-probabilities, values, per-token rewards,
advantages and returns on the response tokens; the policy and value loss, clip fractions and
mean KL; the KL coefficient after the step; and every trained weight (LoRA, biases, value
head) after it.

This file runs twice: in the project's environment (`main`: inputs, the project's side, the
comparison) and, as a subprocess, in TRL 0.11.4's (`--side trl`: the model and TRL's side).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VOCAB = 96  # token ids: 0 pad, 1 eos, the rest words
SCHEDULES = {
    # name: (rows, ppo_epochs, mini_batch_size, gradient_accumulation, steps, lora_bias)
    "one epoch, one mini-batch": (8, 1, 8, 1, 1, "all"),
    "paper schedule (4 epochs, 8 x 2 accumulated)": (16, 4, 8, 2, 1, "all"),
    "paper schedule, 3 steps, no trained biases": (16, 4, 8, 2, 3, "none"),
}
LEARNING_RATE = 1e-3  # larger than the paper's 9e-6 so that the weights visibly move
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
STEP_STATS = {  # project statistic: TRL's
    "policy_loss": "ppo/loss/policy", "value_loss": "ppo/loss/value",
    "clipfrac": "ppo/policy/clipfrac", "value_clipfrac": "ppo/val/clipfrac",
    "kl": "objective/kl"}
# Clip fractions count tokens on either side of a threshold: one token whose value lands on
# the clip boundary, a float rounding apart, moves them by 1/(tokens in its mini-batch), of
# the order of 1e-2 here; they are held to that, not to the float tolerance.
CLIP_FRACTIONS = ("clipfrac", "value_clipfrac")
CLIP_FRACTION_TOLERANCE = 0.02
TENSORS = ("logprobs", "ref_logprobs", "values", "rewards", "advantages", "returns")


def canonical(name: str) -> str:
    """A trained weight's name with each library's wrapping removed."""
    for prefix in ("pretrained_model.", "base_model.model."):
        name = name.removeprefix(prefix)
    return (name.replace(".default", "").replace("base_layer.", "")
            .replace("v_head.summary.", "v_head."))


# ---------------------------------------------------------------- inputs

def make_inputs(folder: Path, rows: int, seed: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    queries = [rng.integers(2, VOCAB, rng.integers(4, 10)).tolist() for _ in range(rows)]
    responses = [rng.integers(2, VOCAB, rng.integers(2, 9)).tolist() for _ in range(rows)]
    scores = rng.choice([1.0, -1.0, -3.0], rows).tolist()
    return {"queries": queries, "responses": responses, "scores": scores}


def make_model(folder: Path) -> None:
    """A 2-layer Llama with attention biases and a word-level tokenizer (pad 0, eos 1)."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = {"<pad>": 0, "</s>": 1, **{f"w{i}": i for i in range(2, VOCAB)}}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(words, unk_token="<pad>")),
        pad_token="<pad>", eos_token="</s>")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         attention_bias=True, tie_word_embeddings=False, initializer_range=0.1,
                         pad_token_id=0, eos_token_id=1, bos_token_id=None)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".bias"):
                parameter.normal_(0, 0.3)
    model.save_pretrained(folder, safe_serialization=True)


def initial_weights(model, value_head, seed: int) -> dict:
    """Random LoRA A and B (a fresh adapter's B is zero: the policy would be the reference)
    and value head, by canonical name."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            weights[canonical(name)] = torch.randn(parameter.shape, generator=generator) * 0.1
    weights["v_head.weight"] = torch.randn(value_head.weight.shape, generator=generator) * 0.1
    weights["v_head.bias"] = torch.zeros(value_head.bias.shape)
    return weights


def load_weights(named_parameters, weights: dict) -> None:
    import torch

    loaded = set()
    with torch.no_grad():
        for name, parameter in named_parameters:
            if canonical(name) in weights:
                parameter.copy_(weights[canonical(name)])
                loaded.add(canonical(name))
    missing = set(weights) - loaded
    if missing:
        raise RuntimeError(f"weights with no parameter to load into: {sorted(missing)[:5]}")


def trained_weights(named_parameters) -> dict:
    return {canonical(name): p.detach().float().clone() for name, p in named_parameters
            if p.requires_grad}


# ---------------------------------------------------------------- the project's side

def project_side(model_dir: Path, inputs: dict, schedule: tuple, seed: int) -> dict:
    import numpy as np
    import torch

    from rlnlu import ppo

    rows, epochs, mini_batch, accumulation, steps, bias = schedule
    settings = ppo.PPOSettings.from_config({
        "device": "cpu", "dtype": "float32", "optimizer": "adafactor",
        "learning_rate": LEARNING_RATE, "prompts_per_step": rows, "ppo_epochs": epochs,
        "mini_batch_size": mini_batch, "gradient_accumulation": accumulation,
        "max_grad_norm": None, "ratio_threshold": 10.0, "lora_r": LORA["r"],
        "lora_alpha": LORA["alpha"], "lora_dropout": LORA["dropout"], "lora_rslora": True,
        "lora_bias": bias, "lora_target_modules": None,
        "kl": {"init_kl_coef": 0.2, "adaptive": True, "target": 6.0, "horizon": 10000}})
    torch.manual_seed(seed)
    model, value_head = ppo.build_policy(str(model_dir), settings)
    weights = initial_weights(model, value_head, seed)
    load_weights(list(model.named_parameters())
                 + [(f"v_head.{n}", p) for n, p in value_head.named_parameters()], weights)
    learner = ppo.make_learner(model, value_head, settings)

    # prompts left-padded, responses right-padded after them, as a rollout lays them out
    queries, responses = inputs["queries"], inputs["responses"]
    query_length, response_length = max(map(len, queries)), max(map(len, responses))
    input_ids = torch.zeros(rows, query_length + response_length, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    mask = torch.zeros(rows, response_length)
    for i, (query, response) in enumerate(zip(queries, responses)):
        input_ids[i, query_length - len(query):query_length] = torch.tensor(query)
        input_ids[i, query_length:query_length + len(response)] = torch.tensor(response)
        attention_mask[i, query_length - len(query):] = 1
        mask[i, :len(response)] = 1
    sampled = ppo.Rollout(input_ids, attention_mask, mask, [""] * rows, None, None, None)

    records = []
    for step in range(steps):
        np.random.seed(seed + step)  # the mini-batch order, drawn alike on both sides
        stats, tensors = ppo.ppo_step(learner, sampled, torch.tensor(inputs["scores"]),
                                      settings)
        records.append({
            "stats": {name: stats[name] for name in STEP_STATS},
            "kl_coef_after": learner.kl_controller.value,
            "tensors": {name: [row[:len(r)].tolist() for row, r in zip(tensors[name], responses)]
                        for name in TENSORS},
            "weights": {name: value.tolist() for name, value in trained_weights(
                list(model.named_parameters())
                + [(f"v_head.{n}", p) for n, p in value_head.named_parameters()]).items()}})
    return {"initial": {name: value.tolist() for name, value in weights.items()},
            "steps": records}


# ---------------------------------------------------------------- TRL 0.11.4's side

def trl_side(model_dir: Path, inputs: dict, schedule: tuple, seed: int,
             initial: dict) -> dict:
    import numpy as np
    import torch
    import trl
    from peft import LoraConfig
    from transformers import Adafactor, AutoTokenizer
    from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

    assert trl.__version__ == "0.11.4", trl.__version__
    rows, epochs, mini_batch, accumulation, steps, bias = schedule
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      bias=bias, task_type="CAUSAL_LM", use_rslora=True)  # PEFT's targets
    model = AutoModelForCausalLMWithValueHead.from_pretrained(
        str(model_dir), peft_config=lora, torch_dtype=torch.float32)
    load_weights(model.named_parameters(),
                 {name: torch.tensor(value) for name, value in initial.items()})
    config = PPOConfig(batch_size=rows, mini_batch_size=mini_batch,
                       gradient_accumulation_steps=accumulation, ppo_epochs=epochs,
                       learning_rate=LEARNING_RATE, init_kl_coef=0.2, adap_kl_ctrl=True,
                       seed=seed)
    optimizer = Adafactor(filter(lambda p: p.requires_grad, model.parameters()),
                          scale_parameter=False, relative_step=False, warmup_init=False,
                          lr=config.learning_rate)
    trainer = PPOTrainer(config, model, None, tokenizer, optimizer=optimizer)

    captured = {}
    compute_rewards, compute_advantages = trainer.compute_rewards, trainer.compute_advantages

    def rewards_of(scores, logprobs, ref_logprobs, masks):
        captured.update(logprobs=logprobs, ref_logprobs=ref_logprobs, masks=masks)
        out = compute_rewards(scores, logprobs, ref_logprobs, masks)
        captured["rewards"] = out[0]
        return out

    def advantages_of(values, rewards, mask):
        out = compute_advantages(values, rewards, mask)
        captured.update(values=out[0], advantages=out[1], returns=out[2])
        return out

    trainer.compute_rewards, trainer.compute_advantages = rewards_of, advantages_of
    queries = [torch.tensor(q) for q in inputs["queries"]]
    responses = [torch.tensor(r) for r in inputs["responses"]]
    scores = [torch.tensor(s) for s in inputs["scores"]]
    records = []
    for step in range(steps):
        np.random.seed(seed + step)
        stats = trainer.step(queries, responses, scores)
        masks = captured["masks"].bool()
        records.append({
            "stats": {name: float(stats[key]) for name, key in STEP_STATS.items()},
            "kl_coef_after": float(trainer.kl_ctl.value),
            "tensors": {name: [captured[name][i][masks[i]].tolist() for i in range(rows)]
                        for name in TENSORS},
            "weights": {name: value.tolist()
                        for name, value in trained_weights(model.named_parameters()).items()}})
    return {"versions": {"trl": trl.__version__,
                         "transformers": __import__("transformers").__version__,
                         "peft": __import__("peft").__version__,
                         "torch": torch.__version__},
            "steps": records}


# ---------------------------------------------------------------- comparison

def largest_differences(project: dict, baseline: dict) -> list[dict]:
    import numpy as np

    def biggest(a, b) -> float:
        return max((float(np.max(np.abs(np.asarray(x, float) - np.asarray(y, float))))
                    for x, y in zip(a, b) if len(x)), default=0.0)

    steps = []
    for ours, theirs in zip(project["steps"], baseline["steps"], strict=True):
        if set(ours["weights"]) != set(theirs["weights"]):
            raise RuntimeError("the two sides train different weights: "
                               f"{sorted(set(ours['weights']) ^ set(theirs['weights']))[:6]}")
        initial = project["initial"]  # the LoRA and value-head weights before training
        moved = max(float(np.max(np.abs(np.asarray(ours["weights"][n]) - np.asarray(initial[n]))))
                    for n in ours["weights"] if n in initial)
        steps.append({
            "stats": {name: abs(ours["stats"][name] - theirs["stats"][name])
                      for name in STEP_STATS},
            "kl_coef_after": abs(ours["kl_coef_after"] - theirs["kl_coef_after"]),
            "tensors": {name: biggest(ours["tensors"][name], theirs["tensors"][name])
                        for name in TENSORS},
            "weights": max(float(np.max(np.abs(np.asarray(ours["weights"][n])
                                                - np.asarray(theirs["weights"][n]))))
                           for n in ours["weights"]),
            "largest_weight_change": moved,
            "project_stats": ours["stats"], "trl_stats": theirs["stats"]})
    return steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--oracle-python", help="the python of TRL 0.11.4's environment")
    parser.add_argument("--out", default=str(REPO / "results" / "bench" / "ppo_oracle.json"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="agreement: every difference at most this")
    parser.add_argument("--side", choices=["model", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--schedule", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side == "model":
        make_model(Path(args.work) / "model")
        return 0
    if args.side == "trl":
        work = Path(args.work)
        spec = json.loads((work / "spec.json").read_text())
        result = trl_side(work / "model", spec["inputs"], tuple(spec["schedule"]), args.seed,
                          spec["initial"])
        (work / "trl.json").write_text(json.dumps(result))
        return 0
    if not args.oracle_python:
        parser.error("--oracle-python is needed (scripts/ppo_oracle.sh gives it)")

    import torch

    torch.set_num_threads(1)  # both sides single-threaded: the same reduction order
    report = {"learning_rate": LEARNING_RATE, "lora": LORA, "tolerance": args.tolerance,
              "schedules": {}}
    with tempfile.TemporaryDirectory(prefix="ppo-oracle-") as tmp:
        work = Path(tmp)
        child = [args.oracle_python, str(Path(__file__).resolve()), "--work", str(work),
                 "--seed", str(args.seed)]
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        subprocess.run(child + ["--side", "model"], check=True, env=env)
        for name, schedule in SCHEDULES.items():
            print(f"[oracle] {name}", file=sys.stderr, flush=True)
            inputs = make_inputs(work, schedule[0], args.seed)
            ours = project_side(work / "model", inputs, schedule, args.seed)
            (work / "spec.json").write_text(json.dumps(
                {"inputs": inputs, "schedule": schedule, "initial": ours["initial"]}))
            subprocess.run(child + ["--side", "trl"], check=True, env=env)
            theirs = json.loads((work / "trl.json").read_text())
            report["versions"] = theirs["versions"]
            steps = largest_differences(ours, theirs)
            worst = max(max(v for k, v in s["stats"].items() if k not in CLIP_FRACTIONS)
                        for s in steps)
            worst = max([worst] + [max(s["tensors"].values()) for s in steps]
                        + [s["weights"] for s in steps] + [s["kl_coef_after"] for s in steps])
            worst_clip = max(s["stats"][k] for s in steps for k in CLIP_FRACTIONS)
            report["schedules"][name] = {
                "rows": schedule[0], "ppo_epochs": schedule[1], "mini_batch_size": schedule[2],
                "gradient_accumulation": schedule[3], "steps": schedule[4],
                "lora_bias": schedule[5], "largest_difference": worst,
                "largest_clip_fraction_difference": worst_clip,
                "agrees": worst <= args.tolerance and worst_clip <= CLIP_FRACTION_TOLERANCE,
                "per_step": steps}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    for name, result in report["schedules"].items():
        print(f"{name}: largest difference {result['largest_difference']:.2e}, clip "
              f"fractions {result['largest_clip_fraction_difference']:.1e} "
              f"({'agrees' if result['agrees'] else 'DIFFERS'}; weights moved up to "
              f"{max(s['largest_weight_change'] for s in result['per_step']):.2e})")
        for k, step in enumerate(result["per_step"], 1):
            print(f"  step {k}: " + ", ".join(
                f"{n} {v:.1e}" for n, v in {**step["stats"], **step["tensors"],
                                           "kl_coef": step["kl_coef_after"],
                                           "weights": step["weights"]}.items()))
    print(f"written to {out}")
    return 0 if all(r["agrees"] for r in report["schedules"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
