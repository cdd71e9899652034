"""PPO: the math and the update loop against hand-computed values, the reference policy,
response-only log-probabilities, exactness at step 0 (dropout off, bf16), fp32 trainable
parameters, passes over the train split, learning a simple reward (with and without the
paper's KL penalty), multi-task runs, the paper's settings, and kill-and-resume determinism."""
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

import numpy as np
import pytest
import torch
import yaml

from rlnlu import answers, checkpoints, cli, files, ppo
from rlnlu.answers import CLOSE_TAG, RewardScheme
from rlnlu.models import load_tokenizer
from rlnlu.ppo import (AdaptiveKLController, FixedKLController, PPOSettings, compute_gae,
                       explained_variance, masked_whiten, per_token_rewards, policy_loss,
                       value_loss)
from rlnlu.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "workflow"
RTE = get_task("glue", "rte")  # label "entailment" is answered "Yes"
SST2 = get_task("glue", "sst2")  # label "positive" is answered "Positive"
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
    with pytest.raises(ValueError, match="exactly one budget"):
        PPOSettings.from_config({"passes": 3})  # steps keeps its default
    with pytest.raises(ValueError, match="exactly one budget"):
        PPOSettings.from_config({"steps": None})
    with pytest.raises(ValueError, match="score_norm needs"):
        PPOSettings.from_config({"score_norm": True})
    settings = PPOSettings.from_config({"steps": None, "passes": 3, "gradient_accumulation": 2,
                                        "max_grad_norm": None, "ratio_threshold": None})
    assert (settings.gradient_accumulation, settings.max_grad_norm, settings.ratio_threshold) \
        == (2, None, None)


# ---------------------------------------------------------------- the budget

def test_passes_shuffle_the_rows_without_replacement_and_set_the_steps():
    # 10 rows, 4 prompts per step: a pass is 3 steps of 4, 4 and 2 prompts (the paper's loader).
    settings = PPOSettings.from_config({"steps": None, "passes": 2, "prompts_per_step": 4})
    assert settings.total_steps(10) == 6
    assert PPOSettings.from_config({"steps": None, "passes": 0.5, "prompts_per_step": 4}
                                   ).total_steps(10) == 2
    assert PPOSettings.from_config({"steps": 7}).total_steps(10) == 7
    steps = [ppo.prompts_of_step(10, 4, seed=0, step=k) for k in range(6)]
    assert [len(s) for s in steps] == [4, 4, 2, 4, 4, 2]
    for first in (0, 3):  # each pass answers every row exactly once
        assert sorted(sum(steps[first:first + 3], [])) == list(range(10))
    assert sum(steps[:3], []) != sum(steps[3:], [])  # a fresh shuffle per pass
    assert steps[4] == ppo.prompts_of_step(10, 4, seed=0, step=4)  # a function of the step
    assert sum(steps[:3], []) != sum([ppo.prompts_of_step(10, 4, 1, k) for k in range(3)], [])


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
    loss, clipfrac = value_loss(new_values[None], old_values[None], returns[None], mask[None],
                                cliprange_value=0.2)
    # V=0.5→clipped 0.2, R=1: max(0.25, 0.64) = 0.64 (the clipped error);  V=0.1 (inside),
    # R=1: 0.81;  V=0.5→0.2, R=0: max(0.25, 0.04) = 0.25 (the unclipped error)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81 + 0.25) / 3)
    assert clipfrac.item() == pytest.approx(1 / 3)


def test_masked_whiten_uses_real_tokens_only_with_the_unbiased_variance():
    # TRL's whitening: variance with n − 1 (here (1 + 0 + 1) / 2 = 1)
    whitened = masked_whiten(t(1, 2, 3, 100)[None], t(1, 1, 1, 0)[None])
    assert torch.allclose(whitened[0, :3], t(-1, 0, 1), atol=1e-6)
    kept = masked_whiten(t(1, 2, 3, 100)[None], t(1, 1, 1, 0)[None], shift_mean=False)
    assert torch.allclose(kept[0, :3], t(1, 2, 3), atol=1e-6)


def test_explained_variance_by_hand():
    returns, mask = t(1, 2, 3, 50)[None], t(1, 1, 1, 0)[None]
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    # residuals (0, 0, 1): variance 1/3 against the returns' 1
    assert explained_variance(t(1, 2, 2, 0)[None], returns, mask) == pytest.approx(1 - 1 / 3)
    assert explained_variance(t(2, 2, 2, 0)[None], returns, mask) == pytest.approx(0.0, abs=1e-6)


def test_score_scaling_normalisation_and_clipping_by_hand():
    scores = t(1, -1, -3, 1)
    off = PPOSettings.from_config({})
    assert torch.equal(ppo.process_scores(scores, off, ppo.RunningMoments()), scores)
    # one batch: running mean -0.5, unbiased sd sqrt(11/3) (population variance 11/4)
    sd = math.sqrt(11 / 3)
    scaled = ppo.process_scores(scores, PPOSettings.from_config({"score_scaling": True}),
                                ppo.RunningMoments())
    assert torch.allclose(scaled, scores / sd)
    normed = ppo.process_scores(scores, PPOSettings.from_config(
        {"score_scaling": True, "score_norm": True}), ppo.RunningMoments())
    assert torch.allclose(normed, (scores + 0.5) / sd)
    clipped = ppo.process_scores(scores, PPOSettings.from_config({"score_clip": 2.0}),
                                 ppo.RunningMoments())
    assert torch.equal(clipped, t(1, -1, -2, 1))
    moments = ppo.RunningMoments()  # a second batch merges with the first
    moments.update(scores)
    moments.update(t(3, 3, 3, 3))
    everything = torch.cat([scores, t(3, 3, 3, 3)])
    assert moments.mean == pytest.approx(everything.mean().item())
    assert moments.std == pytest.approx(everything.std().item())


def test_training_reward_can_require_the_closing_tag():
    open_yes, closed_yes = "Yes", f"Yes{CLOSE_TAG}"
    suite = answers.training_reward(RewardScheme())
    assert suite(RTE, open_yes, "entailment") == suite(RTE, closed_yes, "entailment") == 1.0
    closing = answers.training_reward(RewardScheme(require_close=True))
    assert closing(RTE, closed_yes, "entailment") == 1.0
    assert closing(RTE, open_yes, "entailment") == -3.0  # invalid: the tag never closed
    assert closing(RTE, "No", "entailment") == -3.0
    stsb = get_task("glue", "stsb")
    assert closing(stsb, f"3.5{CLOSE_TAG}", 3.0) == pytest.approx(2.0)
    assert closing(stsb, "3.5", 3.0) == -2.5


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

    # A mini-batch without the longest prompt is evaluated at its own width: the columns
    # that are padding in all its rows are dropped, and its numbers do not change.
    shortest = int(attention_mask.sum(-1).argmin())
    widths = []
    hook = base.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: widths.append(kwargs["input_ids"].size(1)), with_kwargs=True)
    with torch.no_grad():
        alone = ppo.evaluate_actions(base, input_ids[shortest:shortest + 1],
                                     attention_mask[shortest:shortest + 1], length,
                                     settings.temperature, value_head)
    hook.remove()
    assert widths == [int(attention_mask[shortest].sum())]
    assert widths[0] < input_ids.size(1)
    for ours, batched in zip(alone, (expected, expected_entropy, expected_values)):
        assert torch.allclose(ours[0], batched[shortest], atol=1e-5)

    # ... and the rollout read the same numbers off its sampling pass (the KV-cached
    # generation), so the update can start from them without another forward pass.
    assert torch.allclose(sampled.logprobs, expected, atol=1e-4)
    assert torch.allclose(sampled.entropy, expected_entropy, atol=1e-4)
    assert torch.allclose(sampled.values, expected_values, atol=1e-4)


def save_with_random_biases(model, folder) -> None:
    """Save `model` with every bias drawn away from zero, so a test sees biases move."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".bias"):
                parameter.normal_(0, 0.5)
    model.save_pretrained(folder)


@pytest.fixture(scope="module")
def biased_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny Llama with random attention and MLP biases, which bias="lora_only" trains."""
    from transformers import AutoConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-biased")
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.attention_bias = config.mlp_bias = True
    torch.manual_seed(1)
    model = LlamaForCausalLM(config)
    save_with_random_biases(model, folder)
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


# ---------------------------------------------------------------- the update, exact

def random_adapter(model, std: float = 0.3) -> None:
    """Make a fresh (zero) PPO adapter non-zero, as after some training."""
    torch.manual_seed(5)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, std)


def update_batch(model, value_head, sampled, **overrides) -> dict:
    """The batch ppo_update reads, with the rollout's own π_old and values."""
    logprobs, values = ppo.old_policy(model, value_head, sampled, PPOSettings())
    batch = {"input_ids": sampled.input_ids, "attention_mask": sampled.attention_mask,
             "mask": sampled.mask, "logprobs": logprobs, "values": values,
             "advantages": torch.ones_like(sampled.mask), "returns": values + 0.1}
    return {**batch, **overrides}


@pytest.mark.parametrize("max_grad_norm", [None, 1e-3], ids=["no-clipping", "clipped"])
def test_ppo_update_mini_batches_accumulation_threshold_and_clipping_by_hand(
        tiny_model_dir, rte_rows, max_grad_norm):
    """One epoch over 4 rows as 2 mini-batches of 2, accumulated into one optimizer step.
    The second mini-batch's mean ratio is 30, above the threshold: skipped. With SGD at
    lr 1 the step moves the weights by exactly minus the (clipped) gradient, so the step
    is checked against the first mini-batch's gradient, halved."""
    settings = PPOSettings.from_config({
        "device": "cpu", "mini_batch_size": 2, "gradient_accumulation": 2, "ppo_epochs": 1,
        "ratio_threshold": 10.0, "max_grad_norm": max_grad_norm, "lora_dropout": 0.05})
    model, value_head = ppo.build_policy(tiny_model_dir, settings)
    random_adapter(model)
    sampled = sampled_batch(model, load_tokenizer(tiny_model_dir), settings, rte_rows(4))
    np.random.seed(0)
    order = np.random.permutation(4)  # the order ppo_update draws after the same seeding
    first, second = order[:2], order[2:]
    ratios = torch.ones(4)
    ratios[first[1]], ratios[second] = 1.5, 30.0
    batch = update_batch(model, value_head, sampled)
    batch["logprobs"] = batch["logprobs"] - torch.log(ratios)[:, None]  # π/π_old = ratios
    trainable = [p for p in model.parameters() if p.requires_grad] + list(value_head.parameters())

    # the expected step: the gradient of the first mini-batch's loss, halved
    mb = {key: tensor[torch.from_numpy(first)] for key, tensor in batch.items()}
    new_logprobs, _, new_values = ppo.evaluate_actions(
        model, mb["input_ids"], mb["attention_mask"], mb["mask"].size(1), 1.0, value_head)
    pg_loss, _ = policy_loss(new_logprobs, mb["logprobs"], mb["advantages"], mb["mask"], 0.2)
    vf_loss, _ = value_loss(new_values, mb["values"], mb["returns"], mb["mask"], 0.2)
    gradients = torch.autograd.grad((pg_loss + 0.1 * vf_loss) / 2, trainable)
    norm = torch.sqrt(sum((g ** 2).sum() for g in gradients))
    scale = 1.0 if max_grad_norm is None else max_grad_norm / (norm.item() + 1e-6)
    assert scale < 0.1 or max_grad_norm is None  # clipping does act in the clipped case

    before = [p.detach().clone() for p in trainable]
    np.random.seed(0)
    stats = ppo.ppo_update(model, value_head, torch.optim.SGD(trainable, lr=1.0), batch,
                           settings)
    for parameter, start, gradient in zip(trainable, before, gradients):
        assert torch.allclose(parameter.detach() - start, -scale * gradient, atol=1e-6,
                              rtol=1e-4)

    # the statistics, by hand: in the first mini-batch every token of row first[0] has ratio
    # 1 (loss −A·ρ = −1) and every token of row first[1] ratio 1.5, clipped to 1.2 (loss
    # −1.2); the skipped mini-batch counts with zero losses; new values = old ones, 0.1 away
    # from the returns: value loss ½·0.01
    tokens = sampled.mask.sum(dim=1)
    n_a, n_b = tokens[first[0]].item(), tokens[first[1]].item()
    assert stats["policy_loss"] == pytest.approx((-n_a - 1.2 * n_b) / (n_a + n_b) / 2, rel=1e-5)
    assert stats["value_loss"] == pytest.approx(0.005 / 2, rel=1e-3)
    assert stats["clipfrac"] == pytest.approx((n_b / (n_a + n_b) + 1.0) / 2, rel=1e-5)
    assert stats["ratio_mean"] == pytest.approx(((n_a + 1.5 * n_b) / (n_a + n_b) + 30) / 2,
                                                rel=1e-4)
    assert stats["ratio_max"] == pytest.approx(30.0, rel=1e-4)
    assert (stats["skipped_minibatches"], stats["ppo_epochs_run"]) == (1, 1)


def test_ppo_epochs_mini_batches_and_kl_early_stop(tiny_model_dir, rte_rows):
    """4 rows, mini-batches of 1, accumulation 2: 2 optimizer steps per epoch, 3 epochs;
    a policy KL far above 1.5 · target_kl stops after the first epoch."""
    settings = PPOSettings.from_config({"device": "cpu", "mini_batch_size": 1,
                                        "gradient_accumulation": 2, "ppo_epochs": 3})
    model, value_head = ppo.build_policy(tiny_model_dir, settings)
    sampled = sampled_batch(model, load_tokenizer(tiny_model_dir), settings, rte_rows(4))
    trainable = [p for p in model.parameters() if p.requires_grad] + list(value_head.parameters())
    optimizer = torch.optim.SGD(trainable, lr=0.0)
    steps = []
    optimizer.register_step_post_hook(lambda *args: steps.append(1))
    batch = update_batch(model, value_head, sampled)
    assert ppo.ppo_update(model, value_head, optimizer, batch, settings)["ppo_epochs_run"] == 3
    assert len(steps) == 3 * 2
    steps.clear()
    batch["logprobs"] = batch["logprobs"] + 5.0  # policy KL = mean(old − new) = 5
    stopped = ppo.ppo_update(model, value_head, optimizer, batch, PPOSettings.from_config(
        {"device": "cpu", "mini_batch_size": 1, "gradient_accumulation": 2, "ppo_epochs": 3,
         "target_kl": 1.0, "ratio_threshold": None}))
    assert stopped["ppo_epochs_run"] == 1 and len(steps) == 2


def test_ratio_is_one_at_step_zero_with_lora_dropout_on(tiny_model_dir, rte_rows):
    """With a non-zero adapter and LoRA dropout 0.05, an update that does not change the
    policy sees ratio 1 and clips nothing: dropout is off in the update as in the rollout."""
    settings = PPOSettings.from_config({"device": "cpu", "lora_dropout": 0.05, "ppo_epochs": 2,
                                        "mini_batch_size": 2, "optimizer": "adamw",
                                        "learning_rate": 0.0})
    model, value_head = ppo.build_policy(tiny_model_dir, settings)
    random_adapter(model)
    sampled = sampled_batch(model, load_tokenizer(tiny_model_dir), settings, rte_rows(4))
    trainable = [p for p in model.parameters() if p.requires_grad] + list(value_head.parameters())
    stats = ppo.ppo_update(model, value_head, ppo.make_optimizer(trainable, settings),
                           update_batch(model, value_head, sampled), settings)
    assert stats["clipfrac"] == 0.0
    assert stats["ratio_max"] == pytest.approx(1.0, abs=1e-4)
    assert stats["ratio_mean"] == pytest.approx(1.0, abs=1e-5)


@pytest.fixture(scope="module")
def tiny_qwen2_dir(tiny_model_dir, tmp_path_factory):
    """A 2-layer Qwen2 (the architecture of Qwen2.5, in the paper's grid): q/k/v projections
    with biases, here random, and the tiny tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder = tmp_path_factory.mktemp("tiny-qwen2")
    tokenizer = load_tokenizer(tiny_model_dir)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, initializer_range=0.1)
    torch.manual_seed(2)
    model = Qwen2ForCausalLM(config)
    save_with_random_biases(model, folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def bf16_learner(location: str, **config):
    settings = PPOSettings.from_config({"device": "cpu", "dtype": "bfloat16", "lora_bias": "all",
                                        "lora_target_modules": None, "ppo_epochs": 1,
                                        "mini_batch_size": 2, **config})
    model, value_head = ppo.build_policy(location, settings)
    return settings, ppo.make_learner(model, value_head, settings)


def test_bf16_step_zero_has_ratio_one_and_kl_exactly_zero(tiny_qwen2_dir, rte_rows):
    """In bf16 the sampling pass's log-probabilities are not those of a full forward pass;
    they are recomputed, so at step 0 (policy = reference) the KL is exactly 0 and the
    update's ratio is 1."""
    settings, learner = bf16_learner(tiny_qwen2_dir, learning_rate=0.0)
    tokenizer = load_tokenizer(tiny_qwen2_dir)
    sampled = sampled_batch(learner.model, tokenizer, settings, rte_rows(4), length=8)
    assert sampled.logprobs is None and sampled.values is None  # not read off the cached pass
    stats, tensors = ppo.ppo_step(learner, sampled, torch.zeros(4), settings)
    assert stats["kl"] == 0.0 and stats["kl_k3"] == 0.0
    assert torch.equal(tensors["logprobs"], tensors["ref_logprobs"])
    assert stats["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert stats["ratio_max"] == pytest.approx(1.0, abs=1e-6)
    assert stats["clipfrac"] == 0.0


def test_bf16_model_trains_fp32_lora_biases_and_value_head(tiny_qwen2_dir, rte_rows):
    """bias="all" on a bf16 Qwen2: the optimizer steps fp32 copies, so three Adafactor steps
    at the paper's lr 9e-6 move every bias element (in bf16 most steps round away), the
    model holds their rounding, and the reference policy is still the base model."""
    from transformers import AutoModelForCausalLM

    settings, learner = bf16_learner(tiny_qwen2_dir, optimizer="adafactor",
                                     learning_rate=9e-6)
    model = learner.model
    assert all(p.dtype == torch.float32 for p in learner.trainable.parameters)
    assert all(p.dtype == torch.float32 for name, p in model.named_parameters()
               if "lora_" in name)
    biases = {name: p for name, p in model.named_parameters()
              if p.requires_grad and name.endswith(".bias")}
    assert {name.split(".self_attn.")[1].split(".")[0] for name in biases} == {
        "q_proj", "k_proj", "v_proj"}
    assert all(p.dtype == torch.bfloat16 for p in biases.values())
    initial = ppo.TrainableParameters(model, learner.value_head).masters()
    tokenizer = load_tokenizer(tiny_qwen2_dir)
    sampled = sampled_batch(model, tokenizer, settings, rte_rows(4), length=8)
    for _ in range(3):
        ppo.ppo_step(learner, sampled, torch.tensor([1.0, -1.0, 1.0, -3.0]), settings)
    masters = learner.trainable.masters()
    moved = torch.cat([(m != i).flatten() for m, i in zip(masters, initial)]).float().mean()
    assert moved > 0.99, f"only {moved:.1%} of the bias elements moved"
    for (parameter, master) in learner.trainable.pairs:
        assert torch.equal(parameter, master.to(torch.bfloat16))

    base = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, dtype=torch.bfloat16).eval()
    length = sampled.mask.size(1)
    with torch.no_grad():
        expected = ppo.evaluate_actions(base, sampled.input_ids, sampled.attention_mask, length)[0]
        with ppo.reference_policy(model, learner.initial_biases):
            reference = ppo.evaluate_actions(model, sampled.input_ids, sampled.attention_mask,
                                             length)[0]
    assert torch.equal(reference, expected)


def test_paper_config_expresses_the_papers_trainer(tiny_model_dir):
    """configs/paper.yaml over config.yaml: TRL 0.11's schedule as the paper's ppo.py set it,
    three passes over the train split, PEFT's default LoRA targets per architecture (q_proj
    and v_proj for Llama) with every bias trained, and the closing tag required."""
    merged = {}
    for name in ("config.yaml", "configs/paper.yaml"):
        config = yaml.safe_load((ROOT / name).read_text())
        for section in ("ppo", "reward"):
            merged.setdefault(section, {}).update(config.get(section, {}))
    config = {k: v for k, v in merged["ppo"].items() if k != "seed_from"}
    settings = PPOSettings.from_config(config)
    assert (settings.prompts_per_step, settings.mini_batch_size, settings.gradient_accumulation,
            settings.ppo_epochs) == (16, 8, 2, 4)
    assert (settings.max_grad_norm, settings.ratio_threshold, settings.steps,
            settings.passes) == (None, 10.0, None, 3)
    assert (settings.optimizer, settings.learning_rate, settings.kl.init_kl_coef,
            settings.kl.adaptive) == ("adafactor", 9e-6, 0.2, True)
    assert (settings.lora_bias, settings.lora_target_modules) == ("all", None)
    assert merged["reward"]["require_close"] is True
    model, _ = ppo.build_policy(tiny_model_dir, PPOSettings.from_config(
        {**config, "device": "cpu", "dtype": "float32"}))
    adapted = {name.split(".")[-4] for name, _ in model.named_parameters() if "lora_A" in name}
    assert adapted == {"q_proj", "v_proj"}


# ---------------------------------------------------------------- training

# While every sampled answer earns −1, the policy only drifts; the rise starts once "Yes" has
# been sampled and rewarded, which takes a varying number of steps. Each case runs a seed
# where that happens within the 40 steps (seed 0 without the KL penalty drifts away instead).
@pytest.mark.parametrize("kl, seed", [
    ({"init_kl_coef": 0.0, "adaptive": False}, 1),
    ({"init_kl_coef": 0.2, "adaptive": True, "target": 6.0, "horizon": 10000}, 0),  # the paper's
], ids=["no-kl", "paper-kl"])
def test_mean_reward_rises_on_a_learnable_reward(learnable_model_dir, rte_rows, yes_or_not,
                                                 tmp_path, kl, seed):
    settings = PPOSettings.from_config({
        "optimizer": "adamw", "learning_rate": 5e-3, "steps": 40, "save_steps": 0,
        "response_length_min": 8, "response_length_max": 16, "seed": seed, "device": "cpu",
        "kl": kl})
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
    assert curve[-1]["majority_share"] > 0.5  # the answers converge on "Yes"
    kls = [row["kl"] for row in curve]
    if kl["init_kl_coef"]:
        # the penalty is paid: the shaped return is the task reward less β·KL
        assert all(row["shaped_return"] < row["reward"] + 1e-6 for row in curve if row["kl"] > 0)
    # β is adapted after each step: at step 0 the KL is 0, below the target, so β falls
    # by the controller's largest step, 0.2 · 16 prompts / horizon
    assert curve[1]["kl_coef"] == pytest.approx(kl["init_kl_coef"] * (1 - 0.2 * 16 / 10000)
                                                if kl["adaptive"] else kl["init_kl_coef"])
    assert curve[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # policy = reference at step 0
    assert max(kls) > 0.1 and all(row["kl_k3"] >= -1e-6 for row in curve)
    assert curve_png.stat().st_size > 0
    saved = set(os.listdir(tmp_path / "adapter"))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= saved
    assert result["resumed_from_step"] is None and result["final"]["step"] == 40


def test_multi_task_rows_are_scored_by_their_own_task(tmp_path, learnable_model_dir):
    """ppo_multi end to end through the command its rule runs: two tasks' prompt files, one
    pass over their mix; every row's answer is read by its own task's labels."""
    rte = [{"idx": i, "label": "entailment",
            "prompt": f"Premise: A man plays {i}. Hypothesis: Someone plays. <Judgement>"}
           for i in range(6)]
    sst2 = [{"idx": i, "label": "positive",
             "prompt": f"Sentence: The cat sat {i}. <Judgement>"} for i in range(4)]
    files.write_jsonl(tmp_path / "rte.jsonl", rte)
    files.write_jsonl(tmp_path / "sst2.jsonl", sst2)
    settings = {"steps": None, "passes": 1, "prompts_per_step": 4, "mini_batch_size": 2,
                "ppo_epochs": 1, "response_length_min": 4, "response_length_max": 6,
                "save_steps": 0, "device": "cpu", "mixing": "proportional"}
    status = cli.main([
        "train-rl", "--algorithm", "ppo", "--model-location", learnable_model_dir,
        "--train", f"glue/rte={tmp_path / 'rte.jsonl'}",
        "--train", f"glue/sst2={tmp_path / 'sst2.jsonl'}",
        "--settings", json.dumps(settings), "--reward", json.dumps({"require_close": True}),
        "--adapter", str(tmp_path / "adapter"), "--work-dir", str(tmp_path / "work"),
        "--curve-csv", str(tmp_path / "curve.csv"), "--curve-png", str(tmp_path / "curve.png")])
    assert status == 0
    curve = list(csv.DictReader(open(tmp_path / "curve.csv")))
    assert len(curve) == 3  # one pass over 10 mixed rows, 4 per step: 4 + 4 + 2
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "curve.png").stat().st_size > 0

    # the reward of a batch mixing both tasks: each row by its own task's label words
    reward_fn = answers.training_reward(RewardScheme(require_close=True))
    rows = [dict(rte[0], task="glue/rte"), dict(sst2[0], task="glue/sst2")]
    texts = [f"Yes{CLOSE_TAG}", f"Positive{CLOSE_TAG}"]
    tasks = [ppo.task_of(row, None) for row in rows]
    assert [reward_fn(t, text, row["label"]) for t, text, row in zip(tasks, texts, rows)] \
        == [1.0, 1.0]
    assert reward_fn(SST2, texts[0], "positive") == reward_fn(RTE, texts[1], "entailment") == -3
    statistics = ppo.answer_statistics(tasks, texts, [row["label"] for row in rows])
    assert statistics == {"accuracy": 1.0, "invalid_rate": 0.0, "majority_share": 0.5}


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

    straight = tmp_path / "straight"  # timed by a step callback, which changes nothing
    timed = []
    ppo.train_ppo(learnable_model_dir, rows, RTE, straight / "adapter", straight / "work",
                  settings, straight / "curve.csv", reward_scheme=yes_or_not,
                  log=lambda message: None, on_step=timed.append)
    assert [t["step"] for t in timed] == list(range(1, settings.total_steps(len(rows)) + 1))
    assert all(t["step_seconds"] > 0 and t["response_tokens_mean"] > 0 for t in timed)
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
