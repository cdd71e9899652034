"""GRPO: the reward function TRL calls against answers.reward, settings and TRL batch sizes,
plain-string prompts, learning a simple reward on a tiny Llama, the SFT seed merged under a
fresh adapter, and resuming from a sealed checkpoint to the same adapter."""
from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlnlu import checkpoints, grpo
from rlnlu.answers import RewardScheme, parse_answer, reward
from rlnlu.grpo import GRPOSettings, build_trainer, reward_function, train_grpo
from rlnlu.models import load_model, load_tokenizer
from rlnlu.tasks import get_task

RTE = get_task("glue", "rte")  # Yes = entailment, No = not_entailment
STSB = get_task("glue", "stsb")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
pytestmark = pytest.mark.usefixtures("one_thread")


def read_curve(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def adapter_tensors(adapter_dir) -> dict[str, torch.Tensor]:
    return load_file(Path(adapter_dir) / ADAPTER_WEIGHTS)


# ---------------------------------------------------------------- the reward

class MetricLog:
    def __init__(self):
        self.values = {}

    def __call__(self, name, value):
        self.values[name] = value


def test_reward_function_scores_classification_like_answers_reward():
    completions = ["Yes</Judgement>", " no </Judgement>", "Yes or No</Judgement>", "maybe",
                   "Yes", "No</Judgement> Yes Yes"]
    labels = ["entailment", "entailment", "entailment", "not_entailment", "not_entailment",
              "not_entailment"]
    metrics = MetricLog()
    function = reward_function(RTE)
    # TRL passes these keyword arguments too; the function must accept and ignore them.
    rewards = function(prompts=["p"] * 6, completions=completions, label=labels,
                       completion_ids=[[1]] * 6, trainer_state=None, log_extra=lambda *a: None,
                       log_metric=metrics)
    assert rewards == [1.0, -1.0, -3.0, -3.0, -1.0, 1.0]
    assert rewards == [reward(RTE, parse_answer(RTE, c), gold) for c, gold in zip(completions, labels)]
    assert metrics.values == {"accuracy": pytest.approx(2 / 6), "invalid_rate": pytest.approx(2 / 6)}
    assert function.__name__ == "label_reward"  # TRL logs rewards/label_reward/mean

    scheme = RewardScheme(correct=2.0, wrong=0.0, invalid=-5.0)
    assert reward_function(RTE, scheme)(["p"] * 3, completions[:3], label=labels[:3]) == [2.0, 0.0, -5.0]


def test_reward_function_scores_stsb_with_float_labels():
    completions = ["3.5</Judgement>", "7</Judgement>", "no number</Judgement>", "1.0 or 2.0"]
    labels = [3.0, 4.2, 1.0, 1.0]
    metrics = MetricLog()
    rewards = reward_function(STSB)(["p"] * 4, completions, label=labels, log_metric=metrics)
    assert rewards == pytest.approx([2.0, 2.5 - 0.8, -2.5, -2.5])  # 7 is clipped to 5
    assert rewards == [reward(STSB, parse_answer(STSB, c), gold) for c, gold in zip(completions, labels)]
    assert metrics.values == {"invalid_rate": 0.5}  # no accuracy for a regression task


def test_reward_function_reads_chat_format_completions():
    completions = [[{"role": "assistant", "content": "Yes</Judgement>"}]]
    assert reward_function(RTE)(["p"], completions, label=["entailment"]) == [1.0]


# ---------------------------------------------------------------- settings and prompts

def test_settings_from_config_and_validation():
    settings = GRPOSettings.from_config({"learning_rate": 1e-4, "num_generations": 8})
    assert (settings.num_generations, settings.prompts_per_step, settings.beta) == (8, 8, 0.04)
    with pytest.raises(TypeError, match="group_size.*lr|lr.*group_size"):
        GRPOSettings.from_config({"lr": 1e-4, "group_size": 4})
    with pytest.raises(ValueError, match="num_generations"):
        GRPOSettings(num_generations=1)
    with pytest.raises(ValueError, match="gradient_accumulation"):
        GRPOSettings(prompts_per_step=3, num_generations=3, gradient_accumulation=2)
    with pytest.raises(ValueError, match="dtype"):
        GRPOSettings(dtype="fp16")


def test_trainer_config_counts_completions_per_step(tmp_path):
    settings = GRPOSettings(prompts_per_step=3, num_generations=4, gradient_accumulation=2,
                            max_completion_length=12, beta=0.1, steps=7, device="cpu")
    config = grpo.trainer_config(settings, tmp_path, "cpu", torch.float32)
    # TRL counts completions: 3 prompts x 4 answers per step, in 2 micro-batches of 6,
    # generated once per step.
    assert (config.per_device_train_batch_size, config.gradient_accumulation_steps) == (6, 2)
    assert (config.generation_batch_size, config.steps_per_generation) == (12, 2)
    assert (config.num_generations, config.max_completion_length, config.beta) == (4, 12, 0.1)
    assert config.max_steps == 7 and config.logging_steps == 1
    assert not (config.bf16 or config.activation_checkpointing or config.use_vllm)


class FakeTokenizer:
    bos_token, bos_token_id = "<s>", 1

    def __init__(self, adds_bos: bool):
        self.adds = adds_bos

    def __call__(self, text):
        return {"input_ids": ([1] if self.adds else []) + [7, 8]}


def test_a_prompt_carrying_its_bos_loses_it_only_where_trl_would_add_another():
    assert grpo.trl_prompt(FakeTokenizer(adds_bos=True), "<s>Human: hi") == "Human: hi"
    assert grpo.trl_prompt(FakeTokenizer(adds_bos=True), "Human: hi") == "Human: hi"
    assert grpo.trl_prompt(FakeTokenizer(adds_bos=False), "<s>Human: hi") == "<s>Human: hi"


# ---------------------------------------------------------------- training

LEARNING = dict(prompts_per_step=4, num_generations=8, max_completion_length=16, steps=30,
                learning_rate=3e-2, beta=0.0, lora_dropout=0.0, save_steps=100, seed=0,
                device="cpu")


def test_mean_reward_rises_on_a_learnable_reward(learnable_model_dir, rte_rows, yes_or_not,
                                                 tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = train_grpo(learnable_model_dir, rte_rows(8), RTE, tmp_path / "adapter",
                        tmp_path / "work", GRPOSettings(**LEARNING), tmp_path / "curve.csv",
                        tmp_path / "curve.png", reward_scheme=yes_or_not)
    curve = read_curve(tmp_path / "curve.csv")
    assert list(curve[0]) == list(grpo.CURVE_SOURCES)
    assert [int(row["step"]) for row in curve] == list(range(1, 31))
    assert all(row["kl"] == "" for row in curve)  # beta = 0: no reference pass, no KL logged
    rewards = [float(row["reward"]) for row in curve]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.5, rewards
    assert float(curve[-1]["accuracy"]) > float(curve[0]["accuracy"])
    # With yes_or_not a wrong answer scores like an invalid one: reward = 2·accuracy − 1.
    assert all(float(row["reward"]) == pytest.approx(2 * float(row["accuracy"]) - 1) for row in curve)
    assert all(0 < float(row["completion_length"]) <= 16 for row in curve)
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["steps"] == 30 and result["resumed_from_step"] is None
    assert result["final"]["step"] == 30

    trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(learnable_model_dir),
                                        tmp_path / "adapter")
    lora_b = {n: p for n, p in trained.named_parameters() if "lora_B" in n}
    assert lora_b and all(torch.count_nonzero(p) > 0 for p in lora_b.values())


def make_seed_adapter(model_dir, folder) -> str:
    """A stand-in for an SFT adapter: a LoRA whose B matrices are random, not zero."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                      init_lora_weights=False, task_type="CAUSAL_LM"))
    model.save_pretrained(folder)
    return str(folder)


def test_seed_adapter_is_merged_under_a_fresh_adapter(tiny_model_dir, rte_rows, tmp_path):
    from trl.data_utils import is_conversational

    seed = make_seed_adapter(tiny_model_dir, tmp_path / "sft")
    rows = rte_rows(4)
    settings = GRPOSettings(prompts_per_step=2, num_generations=2, steps=2, save_steps=100,
                            device="cpu")
    trainer = build_trainer(tiny_model_dir, rows, RTE, tmp_path / "work", settings, seed_adapter=seed)
    tokenizer = load_tokenizer(tiny_model_dir)
    ids = tokenizer(rows[0]["prompt"], return_tensors="pt")["input_ids"]

    def logits(model):
        with torch.no_grad():
            return model.eval()(input_ids=ids).logits

    merged = logits(load_model(tiny_model_dir, device="cpu", adapters=[seed]))
    base = logits(load_model(tiny_model_dir, device="cpu"))
    policy = logits(trainer.model)  # the fresh GRPO adapter starts at zero ...
    with trainer.model.disable_adapter():
        reference = logits(trainer.model)  # ... and the reference is the merged SFT model
    torch.testing.assert_close(policy, merged)
    torch.testing.assert_close(reference, merged)
    assert not torch.allclose(merged, base, atol=1e-3)

    # A plain-string prompt is tokenized as it is: no chat template, nothing added.
    assert not is_conversational(trainer.train_dataset[0])
    prompt_ids, _, _ = trainer._tokenize_prompts([rows[0]["prompt"]])
    assert prompt_ids == [tokenizer(rows[0]["prompt"])["input_ids"]]

    result = train_grpo(tiny_model_dir, rows, RTE, tmp_path / "adapter", tmp_path / "work", settings,
                        tmp_path / "curve.csv", seed_adapter=seed)
    assert result["steps"] == 2 and result["seed_adapter"] == seed
    # Evaluation loads the SFT adapter, then the GRPO adapter on top.
    stacked = logits(load_model(tiny_model_dir, device="cpu", adapters=[seed, str(tmp_path / "adapter")]))
    assert stacked.shape == merged.shape


RESUME = dict(prompts_per_step=2, num_generations=4, steps=6, save_steps=5, learning_rate=2e-2,
              seed=3, device="cpu")


def test_resumed_run_ends_with_the_same_adapter(tiny_model_dir, rte_rows, yes_or_not, tmp_path,
                                                caplog):
    # 8 prompts, 2 a step: 4 steps an epoch. The checkpoint at step 5 sits inside the second
    # epoch, whose prompt order a resumed run must draw as an uninterrupted one did.
    rows = rte_rows(8)
    settings = GRPOSettings(**RESUME)
    reference = tmp_path / "reference"
    train_grpo(tiny_model_dir, rows, RTE, reference / "adapter", reference / "work", settings,
               reference / "curve.csv", reward_scheme=yes_or_not)
    assert [p.name for p in checkpoints.checkpoints_newest_first(reference / "work")] == [
        "checkpoint-6", "checkpoint-5"]
    assert all(checkpoints.problem_with(p) is None
               for p in checkpoints.checkpoints_newest_first(reference / "work"))

    resumed = tmp_path / "resumed"
    shutil.copytree(reference / "work", resumed / "work")
    (resumed / "work" / "checkpoint-6" / checkpoints.MANIFEST).unlink()  # killed while saving
    with caplog.at_level(logging.INFO):
        result = train_grpo(tiny_model_dir, rows, RTE, resumed / "adapter", resumed / "work",
                            settings, resumed / "curve.csv", reward_scheme=yes_or_not)
    assert f"resuming from {resumed / 'work' / 'checkpoint-5'} at step 5" in caplog.text
    assert result["resumed_from_step"] == 5 and result["steps"] == 6

    expected, actual = adapter_tensors(reference / "adapter"), adapter_tensors(resumed / "adapter")
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-6, msg=name)
    curve = read_curve(resumed / "curve.csv")
    assert curve == read_curve(reference / "curve.csv")  # the steps before the resume included
    assert all(row["kl"] != "" for row in curve)  # beta = 0.04 by default
