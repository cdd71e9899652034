"""PPO: the math against hand-computed values, the reference policy, response-only
log-probabilities, learning a simple reward, and kill-and-resume determinism."""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlnlu import checkpoints, ppo
from rlnlu.answers import CLOSE_TAG
from rlnlu.models import load_tokenizer
from rlnlu.ppo import (AdaptiveKLController, FixedKLController, PPOSettings, compute_gae,
                       masked_whiten, per_token_rewards, policy_loss, value_loss)
from rlnlu.tasks import get_task

WORKFLOW = Path(__file__).resolve().parents[1] / "workflow"
RTE = get_task("glue", "rte")  # label "entailment" is answered "Yes"
pytestmark = pytest.mark.usefixtures("one_thread")


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


# ---------------------------------------------------------------- settings

def test_settings_from_config_flat_lora_nested_kl_and_unknown_keys():
    settings = PPOSettings.from_config({"learning_rate": 1e-5, "kl": {"target": 3.0},
                                        "lora_r": 8})
    assert (settings.learning_rate, settings.kl.target, settings.kl.horizon) == (1e-5, 3.0, 10000)
    assert (settings.lora_r, settings.lora_alpha, settings.ppo_epochs) == (8, 32, 3)
    with pytest.raises(TypeError, match="unknown ppo setting.*: lora;"):  # LoRA keys are flat
        PPOSettings.from_config({"lora": {"r": 8}})
    with pytest.raises(TypeError, match="bogus, other"):
        PPOSettings.from_config({"bogus": 1, "other": 2})
    with pytest.raises(TypeError, match="ppo.kl.*targett"):
        PPOSettings.from_config({"kl": {"targett": 1}})
    with pytest.raises(ValueError, match="optimizer"):
        PPOSettings.from_config({"optimizer": "sgd"})


# ---------------------------------------------------------------- the math, by hand

def test_compute_gae_undiscounted_by_hand():
    rewards, values, mask = t(0, 0, 1), t(0.5, 0.4, 0.3), t(1, 1, 1)
    advantages, returns = compute_gae(rewards[None], values[None], mask[None], gamma=1.0, lam=0.95)
    # A2 = 1 - 0.3; A1 = (0 + 0.3 - 0.4) + 0.95·A2; A0 = (0 + 0.4 - 0.5) + 0.95·A1
    a2 = 0.7
    a1 = -0.1 + 0.95 * a2
    a0 = -0.1 + 0.95 * a1
    assert torch.allclose(advantages[0], t(a0, a1, a2))
    assert torch.allclose(returns[0], t(a0 + 0.5, a1 + 0.4, a2 + 0.3))


def test_compute_gae_discounted_ignores_padding():
    # Two padding tokens with garbage rewards and values must not change anything.
    rewards, values, mask = t(0, 0, 1, 7, -3), t(0.5, 0.4, 0.3, 9, 9), t(1, 1, 1, 0, 0)
    advantages, returns = compute_gae(rewards[None], values[None], mask[None], gamma=0.9, lam=0.5)
    a2 = 1 - 0.3
    a1 = (0 + 0.9 * 0.3 - 0.4) + 0.45 * a2  # -0.13 + 0.315 = 0.185
    a0 = (0 + 0.9 * 0.4 - 0.5) + 0.45 * a1  # -0.14 + 0.08325 = -0.05675
    assert torch.allclose(advantages[0, :3], t(a0, a1, a2))
    assert torch.allclose(returns[0, :3], t(a0 + 0.5, a1 + 0.4, a2 + 0.3))
    assert torch.allclose(advantages[0, :3], t(-0.05675, 0.185, 0.7))


def test_per_token_rewards_kl_everywhere_score_on_last_real_token():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0, -4.0], [-1.0, -1.0, -1.0, -1.0]])
    ref_logprobs = torch.tensor([[-1.5, -2.0, -2.0, -9.0], [-2.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 0, 0, 0]])
    rewards = per_token_rewards(t(2.0, -1.0), logprobs, ref_logprobs, mask, kl_coef=0.1)
    # row 0: KL = [0.5, 0, -1, (5, padding)]; row 1: KL = [1, ...]; score on the last real token
    assert torch.allclose(rewards, torch.tensor([[-0.05, 0.0, 0.1 + 2.0, 0.0],
                                                 [-0.1 - 1.0, 0.0, 0.0, 0.0]]))


def test_policy_loss_clipped_and_unclipped_by_hand():
    advantages = t(1, -1, 2, 1, 5)
    ratios = [1.5, 0.5, 1.1, 0.5, 3.0]
    new_logprobs = torch.log(t(*ratios))
    old_logprobs = torch.zeros(5)
    mask = t(1, 1, 1, 1, 0)  # the last token is padding
    loss, clipfrac = policy_loss(new_logprobs[None], old_logprobs[None], advantages[None],
                                 mask[None], cliprange=0.2)
    # per token max(−A·ρ, −A·clip(ρ, 0.8, 1.2)):
    #   A=1,  ρ=1.5: max(-1.5, -1.2) = -1.2 (clipped)
    #   A=-1, ρ=0.5: max(0.5, 0.8)   =  0.8 (clipped)
    #   A=2,  ρ=1.1: inside the range  = -2.2
    #   A=1,  ρ=0.5: max(-0.5, -0.8) = -0.5 (the pessimistic unclipped term)
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.2 - 0.5) / 4)
    assert clipfrac.item() == pytest.approx(2 / 4)


def test_value_loss_clipped_and_unclipped_by_hand():
    old_values, new_values, returns = t(0, 0, 0, 0), t(0.5, 0.1, 0.5, 4), t(1, 1, 0, 0)
    mask = t(1, 1, 1, 0)
    loss = value_loss(new_values[None], old_values[None], returns[None], mask[None],
                      cliprange_value=0.2)
    # V=0.5→clipped 0.2, R=1: max(0.25, 0.64) = 0.64;  V=0.1 (inside), R=1: 0.81;
    # V=0.5→0.2, R=0: max(0.25, 0.04) = 0.25
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81 + 0.25) / 3)


def test_masked_whiten_uses_real_tokens_only():
    whitened = masked_whiten(t(1, 2, 3, 100)[None], t(1, 1, 1, 0)[None])
    assert torch.allclose(whitened[0, :3], t(-1, 0, 1) / math.sqrt(2 / 3), atol=1e-6)


def test_adaptive_kl_controller_follows_the_formula():
    controller = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    controller.update(6.6, n_steps=16)  # error +0.1
    expected = 0.2 * (1 + 0.1 * 16 / 10000)
    assert controller.value == pytest.approx(expected)
    controller.update(5.4, n_steps=16)  # error -0.1
    expected *= 1 - 0.1 * 16 / 10000
    assert controller.value == pytest.approx(expected)
    controller.update(600.0, n_steps=16)  # error +99, clipped to +0.2
    expected *= 1 + 0.2 * 16 / 10000
    assert controller.value == pytest.approx(expected)
    controller.update(0.0, n_steps=16)  # error -1, clipped to -0.2
    expected *= 1 - 0.2 * 16 / 10000
    assert controller.value == pytest.approx(expected)
    fixed = FixedKLController(0.2)
    fixed.update(600.0, n_steps=16)
    assert fixed.value == 0.2


# ---------------------------------------------------------------- the model

def test_answer_end_stops_at_close_tag_or_eos(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    eos = tokenizer.eos_token_id
    answer = tokenizer.encode("Yes" + CLOSE_TAG, add_special_tokens=False)
    junk = tokenizer.encode(" the cat", add_special_tokens=False)
    ids = answer + junk + [eos] + junk
    assert ppo.answer_end(tokenizer, ids, {eos}, stop_at_close_tag=True) == len(answer)
    assert ppo.answer_end(tokenizer, ids, {eos}, stop_at_close_tag=False) == len(answer + junk) + 1
    assert ppo.answer_end(tokenizer, junk + [eos] + answer, {eos}, True) == len(junk) + 1
    assert ppo.answer_end(tokenizer, junk, {eos}, True) == len(junk)


def sampled_batch(model, tokenizer, settings, rows, length=6, value_head=None) -> ppo.Rollout:
    prompts = [row["prompt"] for row in rows]
    prompts[1] = "Short: <Judgement>"  # prompts of different lengths: real left padding
    with torch.no_grad():
        return ppo.rollout(model, tokenizer, prompts, length, settings, value_head)


def test_response_logprobs_equal_full_forward_and_generation(tiny_model_dir, rte_rows):
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(tiny_model_dir)
    settings = PPOSettings.from_config({"device": "cpu", "temperature": 0.7,
                                        "stop_at_close_tag": False})
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    value_head = torch.nn.Linear(base.config.hidden_size, 1)
    sampled = sampled_batch(base, tokenizer, settings, rte_rows(3), value_head=value_head)
    input_ids, attention_mask, mask = sampled.input_ids, sampled.attention_mask, sampled.mask
    assert (attention_mask == 0).any()
    length = mask.size(1)
    with torch.no_grad():
        logprobs, entropy, values = ppo.evaluate_actions(
            base, input_ids, attention_mask, length, settings.temperature, value_head)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        full = base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    output_hidden_states=True)
        all_logprobs = torch.log_softmax(full.logits[:, -length - 1:-1] / 0.7, dim=-1)
        expected = all_logprobs.gather(-1, input_ids[:, -length:, None]).squeeze(-1)
        expected_entropy = -(all_logprobs.exp() * all_logprobs).sum(-1)
        expected_values = value_head(full.hidden_states[-1][:, -length - 1:-1]).squeeze(-1)
    assert torch.allclose(logprobs, expected, atol=1e-5)
    assert torch.allclose(entropy, expected_entropy, atol=1e-5)
    assert torch.allclose(values, expected_values, atol=1e-5)

    # ... and the rollout read the same numbers off its sampling pass (the KV-cached
    # generation), so the update can start from them without another forward pass.
    assert torch.allclose(sampled.logprobs, expected, atol=1e-4)
    assert torch.allclose(sampled.entropy, expected_entropy, atol=1e-4)
    assert torch.allclose(sampled.values, expected_values, atol=1e-4)


@pytest.fixture(scope="module")
def biased_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny Llama with random attention and MLP biases, which bias="lora_only" trains."""
    from transformers import AutoConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-biased")
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.attention_bias = config.mlp_bias = True
    torch.manual_seed(1)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".bias"):
                parameter.normal_(0, 0.5)
    model.save_pretrained(folder)
    for name in os.listdir(tiny_model_dir):
        if name.startswith("tokenizer"):
            shutil.copy(Path(tiny_model_dir) / name, folder)
    return str(folder)


@pytest.mark.parametrize("with_biases", [False, True], ids=["no-biases", "trained-biases"])
def test_reference_policy_is_the_base_model(tiny_model_dir, biased_model_dir, rte_rows,
                                            with_biases):
    from transformers import AutoModelForCausalLM

    location = biased_model_dir if with_biases else tiny_model_dir
    tokenizer = load_tokenizer(location)
    settings = PPOSettings.from_config({"device": "cpu", "optimizer": "adamw",
                                        "learning_rate": 1e-2, "ppo_epochs": 1,
                                        "lora_dropout": 0.0})
    torch.manual_seed(0)
    model, value_head = ppo.build_policy(location, settings)
    model.eval()
    initial_biases = ppo.trainable_biases(model)
    assert bool(initial_biases) == with_biases
    base = AutoModelForCausalLM.from_pretrained(location).eval()
    sampled = sampled_batch(model, tokenizer, settings, rte_rows(3))
    input_ids, attention_mask, mask = sampled.input_ids, sampled.attention_mask, sampled.mask
    length = mask.size(1)

    def logprobs_of(m, reference=False):
        with torch.no_grad():
            if reference:
                with ppo.reference_policy(m, initial_biases):
                    return ppo.evaluate_actions(m, input_ids, attention_mask, length)[0]
            return ppo.evaluate_actions(m, input_ids, attention_mask, length)[0]

    base_logprobs = logprobs_of(base)
    assert torch.allclose(logprobs_of(model, reference=True), base_logprobs, atol=1e-6)

    # One PPO update that pushes every sampled token up changes the policy, not the reference.
    with torch.no_grad():
        logprobs, _, values = ppo.evaluate_actions(model, input_ids, attention_mask, length,
                                                   1.0, value_head)
    trainable = [p for p in model.parameters() if p.requires_grad] + list(value_head.parameters())
    ppo.ppo_update(model, value_head, ppo.make_optimizer(trainable, settings), {
        "input_ids": input_ids, "attention_mask": attention_mask, "mask": mask,
        "logprobs": logprobs, "values": values, "advantages": torch.ones_like(mask),
        "returns": torch.zeros_like(mask)}, settings)
    policy_logprobs = logprobs_of(model)
    assert (policy_logprobs - base_logprobs).abs().max() > 1e-3
    assert torch.allclose(logprobs_of(model, reference=True), base_logprobs, atol=1e-6)
    assert torch.equal(logprobs_of(model), policy_logprobs)  # trained biases are back


def test_seed_adapter_is_merged_into_the_reference(tiny_model_dir, rte_rows, tmp_path,
                                                    random_lora_model):
    from transformers import AutoModelForCausalLM

    from rlnlu.models import load_model

    seed_adapter = tmp_path / "sft"
    random_lora_model().save_pretrained(seed_adapter)  # a trained-looking SFT adapter

    settings = PPOSettings.from_config({"device": "cpu"})
    model, _ = ppo.build_policy(tiny_model_dir, settings, seed_adapter=str(seed_adapter))
    model.eval()
    tokenizer = load_tokenizer(tiny_model_dir)
    sampled = sampled_batch(model, tokenizer, settings, rte_rows(3))
    input_ids, attention_mask, mask = sampled.input_ids, sampled.attention_mask, sampled.mask
    length = mask.size(1)
    with torch.no_grad():
        with ppo.reference_policy(model, ppo.trainable_biases(model)):
            reference = ppo.evaluate_actions(model, input_ids, attention_mask, length)[0]
        merged = load_model(tiny_model_dir, "float32", "cpu", adapters=[str(seed_adapter)])
        sft_logprobs = ppo.evaluate_actions(merged, input_ids, attention_mask, length)[0]
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
        base_logprobs = ppo.evaluate_actions(base, input_ids, attention_mask, length)[0]
    assert torch.allclose(reference, sft_logprobs, atol=1e-5)
    assert (reference - base_logprobs).abs().max() > 1e-2


# ---------------------------------------------------------------- training

def test_mean_reward_rises_on_a_learnable_reward(learnable_model_dir, rte_rows, yes_or_not,
                                                 tmp_path):
    settings = PPOSettings.from_config({
        "optimizer": "adamw", "learning_rate": 5e-3, "steps": 40, "save_steps": 0,
        "response_length_min": 8, "response_length_max": 16, "seed": 0, "device": "cpu",
        "kl": {"init_kl_coef": 0.0, "adaptive": False}})
    curve_csv, curve_png = tmp_path / "curve.csv", tmp_path / "curve.png"
    result = ppo.train_ppo(learnable_model_dir, rte_rows(32), RTE, tmp_path / "adapter",
                           tmp_path / "work", settings, curve_csv, curve_png,
                           reward_scheme=yes_or_not, log=lambda message: None)
    curve = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(open(curve_csv))]
    assert list(curve[0]) == list(ppo.CURVE_COLUMNS)
    assert [row["step"] for row in curve] == list(range(1, 41))
    # "Yes" starts rare, so when the rise sets in varies with the sampled trajectory:
    # compare the first and last quarters, not single steps.
    rewards = [row["reward"] for row in curve]
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    assert last > first + 0.3, rewards
    assert curve[-1]["accuracy"] > curve[0]["accuracy"]
    assert all(1 <= row["response_length"] <= 16 for row in curve)
    assert curve_png.stat().st_size > 0
    saved = set(os.listdir(tmp_path / "adapter"))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= saved
    assert result["resumed_from_step"] is None and result["final"]["step"] == 40


RESUME_CONFIG = {"learning_rate": 5e-3, "steps": 10, "save_steps": 2,
                 "prompts_per_step": 4, "mini_batch_size": 2, "ppo_epochs": 2,
                 "response_length_min": 4, "response_length_max": 8, "seed": 3, "device": "cpu"}

RUN_SCRIPT = """
import json, sys, torch
torch.set_num_threads(1)
from rlnlu import ppo
from rlnlu.answers import RewardScheme
from rlnlu.tasks import get_task
args = json.loads(sys.argv[1])
ppo.train_ppo(args["model"], args["rows"], get_task("glue", "rte"), args["adapter"], args["work"],
              ppo.PPOSettings.from_config(args["config"]), args["curve"],
              reward_scheme=RewardScheme(1.0, -1.0, -1.0), log=lambda m: print(m, flush=True))
"""


def test_killed_and_resumed_run_equals_uninterrupted(learnable_model_dir, rte_rows, yes_or_not,
                                                     tmp_path):
    from safetensors.torch import load_file

    rows = rte_rows(12)
    killed = tmp_path / "killed"
    args = {"model": learnable_model_dir, "rows": rows, "adapter": str(killed / "adapter"),
            "work": str(killed / "work"), "curve": str(killed / "curve.csv"),
            "config": RESUME_CONFIG}
    env = {**os.environ, "PYTHONPATH": str(WORKFLOW), "HF_HUB_OFFLINE": "1"}
    with open(tmp_path / "killed.log", "w") as output:
        process = subprocess.Popen([sys.executable, "-c", RUN_SCRIPT, json.dumps(args)],
                                   env=env, stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while not list((killed / "work").glob("checkpoint-*/MANIFEST.json")):
            assert process.poll() is None, (tmp_path / "killed.log").read_text()
            assert time.monotonic() < deadline, "no sealed checkpoint appeared"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert not (killed / "adapter").exists(), "the run finished before it could be killed"

    settings = PPOSettings.from_config(RESUME_CONFIG)
    messages = []
    resumed = ppo.train_ppo(learnable_model_dir, rows, RTE, killed / "adapter", killed / "work",
                            settings, killed / "curve.csv", reward_scheme=yes_or_not,
                            log=messages.append)
    assert any(m.startswith("resuming from") for m in messages), messages
    assert resumed["resumed_from_step"] >= 2

    straight = tmp_path / "straight"
    ppo.train_ppo(learnable_model_dir, rows, RTE, straight / "adapter", straight / "work",
                  settings, straight / "curve.csv", reward_scheme=yes_or_not,
                  log=lambda message: None)
    resumed_tensors = load_file(killed / "adapter" / "adapter_model.safetensors")
    straight_tensors = load_file(straight / "adapter" / "adapter_model.safetensors")
    assert resumed_tensors.keys() == straight_tensors.keys()
    assert all(torch.equal(resumed_tensors[k], straight_tensors[k]) for k in straight_tensors)
    assert (killed / "curve.csv").read_text() == (straight / "curve.csv").read_text()


def test_rerun_with_changed_settings_does_not_resume_the_old_runs_checkpoints(
        learnable_model_dir, rte_rows, yes_or_not, tmp_path, caplog):
    """Snakemake reruns a cell whose settings changed; the old run's checkpoints are still
    in its work folder and must not be resumed."""
    rows = rte_rows(12)
    first = PPOSettings.from_config(RESUME_CONFIG)
    ppo.train_ppo(learnable_model_dir, rows, RTE, tmp_path / "adapter", tmp_path / "work", first,
                  tmp_path / "curve.csv", reward_scheme=yes_or_not, log=lambda message: None)
    assert checkpoints.latest_valid(tmp_path / "work") is not None

    changed = PPOSettings.from_config({**RESUME_CONFIG, "learning_rate": first.learning_rate / 2})
    with caplog.at_level(logging.WARNING, logger="rlnlu.training"):
        rerun = ppo.train_ppo(learnable_model_dir, rows, RTE, tmp_path / "adapter2",
                              tmp_path / "work", changed, tmp_path / "curve2.csv",
                              reward_scheme=yes_or_not, log=lambda message: None)
    assert rerun["resumed_from_step"] is None
    assert "other settings or inputs" in caplog.text
