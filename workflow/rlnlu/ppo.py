"""PPO with LoRA: the paper's reinforcement learning for language understanding.

Every token the policy generates is an action; the finished answer is scored by the training
reward (`answers.training_reward`: the label-alignment reward the evaluation's parser reads);
only the LoRA layers, the biases trained beside them and a small value head learn. TRL no
longer ships PPOTrainer, so the algorithm lives here, one step after another, written to do
what TRL 0.11's `PPOTrainer.step` (the trainer the paper's code calls) does, step for step
(`scripts/ppo_oracle.sh` checks it against that trainer):

  1. rollout     the step's prompts (passes over the shuffled train rows, `prompts_per_step`
                 at a time) and a sampled response to each; in fp32 the sampling pass also
                 gives the policy's log-probabilities and values, in lower precision one
                 batched forward pass recomputes them (the cached pass is not exact there)
  2. reward      the training reward of each finished answer against its gold label
  3. evaluate    log-probabilities of the response tokens under the reference policy (same
                 weights, PPO adapter disabled)
  4. shape       per-token rewards: −β·KL on every token, the task reward on the last one
  5. GAE         advantages and returns over the response tokens
  6. optimise    `ppo_epochs` passes over shuffled mini-batches, `gradient_accumulation`
                 mini-batches per optimizer step: clipped surrogate policy loss + vf_coef ·
                 clipped value loss; a mini-batch whose mean ratio exceeds `ratio_threshold`
                 is skipped; gradients optionally clipped
  7. KL control  move β towards the target KL (adaptive) or keep it fixed

Every forward pass runs with dropout off (TRL runs them in eval mode): with LoRA dropout on
in the update only, the ratio would differ from 1 with no change to the policy.

Tensors over response tokens are (batch, response_length); `mask` is 1 on the tokens the
model actually answered with (a prefix: up to EOS or the closing tag) and 0 on padding.
"""
from __future__ import annotations

import logging
import math
import random
import shutil
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import answers, checkpoints
from .answers import CLOSE_TAG, RewardScheme
from .files import exclusive_lock
from .generation import needs_special_tokens
from .models import load_tokenizer, resolve_device, resolve_dtype
from .tasks import Task, get_task
from .settings import PPOSettings, steps_per_pass
from .training import plot_curves, resume_point, run_fingerprint, save_adapter, write_curve_csv

logger = logging.getLogger(__name__)
CURVE_COLUMNS = (
    "step",
    # the sampled answers: raw task reward, the evaluation's reading of them
    "reward", "reward_std", "accuracy", "invalid_rate", "majority_share",
    # the KL-shaped return of a sequence (task reward − β·KL summed over its tokens)
    "shaped_return", "shaped_return_std",
    # distance to the reference: k1 = Σ log π/π_ref, k3 = Σ (ρ − 1 − log ρ), ρ = π_ref/π
    "kl", "kl_k3", "kl_coef", "entropy",
    # the update
    "policy_loss", "value_loss", "clipfrac", "value_clipfrac", "explained_variance",
    "ratio_mean", "ratio_max", "skipped_minibatches", "ppo_epochs_run",
    "response_length")
CURVE_PANELS = (("reward", "shaped_return"), ("accuracy", "invalid_rate", "majority_share"),
                ("kl", "kl_k3"), ("kl_coef",), ("entropy",), ("clipfrac", "value_clipfrac"),
                ("explained_variance",), ("ratio_mean", "ratio_max"), ("policy_loss",),
                ("value_loss",), ("skipped_minibatches",), ("response_length",))


# ---------------------------------------------------------------- settings

# ---------------------------------------------------------------- which prompts

def prompts_of_step(rows: int, prompts_per_step: int, seed: int, step: int) -> list[int]:
    """Indices of the rows a step (from 0) answers: each pass over the rows is a fresh seeded
    shuffle, cut into steps of `prompts_per_step`, the last one shorter (the paper's loader).
    A function of the step alone, so a resumed run draws what an uninterrupted one would."""
    per_pass = steps_per_pass(rows, prompts_per_step)
    pass_index, position = divmod(step, per_pass)
    order = np.random.default_rng([seed, pass_index]).permutation(rows)
    return order[position * prompts_per_step:(position + 1) * prompts_per_step].tolist()


# ---------------------------------------------------------------- the math

def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum()


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The unbiased (n − 1) variance over the real tokens, as TRL computes it."""
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask) * mask.sum() / (mask.sum() - 1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Zero mean (unless `shift_mean` is False: the mean is kept) and unit variance over the
    real tokens."""
    mean = masked_mean(x, mask)
    whitened = (x - mean) * torch.rsqrt(masked_var(x, mask) + 1e-8)
    return whitened if shift_mean else whitened + mean


def per_token_rewards(score, logprobs, ref_logprobs, mask, kl_coef: float) -> torch.Tensor:
    """r_t = −β·(log π(a_t|s_t) − log π_ref(a_t|s_t)) on every response token, plus the
    task reward (`score`, one per sequence) on the sequence's last real token."""
    rewards = -kl_coef * (logprobs - ref_logprobs) * mask
    positions = torch.arange(mask.size(1), device=mask.device)
    last = (positions * mask).argmax(dim=1)  # the last index where the mask is 1
    rewards[torch.arange(len(rewards)), last] += score
    return rewards


def compute_gae(rewards, values, mask, gamma: float, lam: float):
    """Generalised advantage estimation over the response tokens:
    δ_t = r_t + γ·V(s_{t+1}) − V(s_t),  A_t = δ_t + γλ·A_{t+1},  returns R_t = A_t + V(s_t).
    The state after the last real token is terminal (value 0); padding carries nothing."""
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    length = rewards.size(1)
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else 0.0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = next_advantage
    return advantages, advantages + values


def policy_loss(new_logprobs, old_logprobs, advantages, mask, cliprange: float):
    """The clipped surrogate objective, negated to be minimised: with ratio ρ = π/π_old,
    loss = mean(max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε))). Also returns the clip fraction: the share
    of tokens where the clipped term is the one used."""
    ratio = torch.exp(new_logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac


def value_loss(new_values, old_values, returns, mask, cliprange_value: float):
    """½·mean(max((V − R)², (V_clipped − R)²)), where V_clipped stays within ±ε of the value
    estimated during the rollout, so the critic cannot jump far in one update. Also returns
    the value clip fraction: the share of tokens where the clipped error is the larger."""
    clipped_values = old_values + torch.clamp(new_values - old_values,
                                              -cliprange_value, cliprange_value)
    unclipped_errors = (new_values - returns) ** 2
    clipped_errors = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_errors, clipped_errors), mask)
    return loss, masked_mean((clipped_errors > unclipped_errors).float(), mask)


def explained_variance(values, returns, mask) -> float:
    """1 − Var(R − V)/Var(R) over the real tokens: how much of the returns the value head
    predicted (1: all, 0: no better than their mean, negative: worse)."""
    variance = masked_var(returns, mask)
    return float(1 - masked_var(returns - values, mask) / variance) if variance > 0 else math.nan


class AdaptiveKLController:
    """Ziegler et al. (2019): β ← β·(1 + e·n_steps/horizon), where the proportional error
    e = clip(KL/target − 1, −0.2, 0.2) pushes β up when the policy drifts too far."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = float(np.clip(current_kl / self.target - 1, -0.2, 0.2))
        self.value *= 1 + proportional_error * n_steps / self.horizon


class FixedKLController:
    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class RunningMoments:
    """Running mean and standard deviation of the task rewards seen so far (TRL's, for
    `score_scaling`): each batch is merged in with the parallel-variance formula."""

    def __init__(self):
        self.mean, self.std, self.var, self.count = 0.0, 1.0, 1.0, 1e-24

    def update(self, xs: torch.Tensor) -> None:
        xs_var, xs_mean = torch.var_mean(xs.float(), unbiased=False)
        delta = xs_mean.item() - self.mean
        total = self.count + xs.numel()
        old_sum = self.var * self.count + delta ** 2 * self.count * xs.numel() / total
        new_var = (old_sum + xs_var.item() * xs.numel()) / total
        self.mean += delta * xs.numel() / total
        self.std = math.sqrt(new_var * total / (total - 1))
        self.var, self.count = new_var, total


def process_scores(score: torch.Tensor, settings: PPOSettings, moments: RunningMoments):
    """The task rewards as the per-token rewards use them: scaled, normalised and clipped as
    the settings ask (all off by default)."""
    if settings.score_scaling:
        moments.update(score)
        scale = moments.std + torch.finfo(score.dtype).eps
        score = (score - moments.mean) / scale if settings.score_norm else score / scale
    if settings.score_clip is not None:
        score = torch.clamp(score, -settings.score_clip, settings.score_clip)
    return score


# ---------------------------------------------------------------- the model

def build_policy(model_location: str, settings: PPOSettings, seed_adapter: str | None = None):
    """The policy (base model, the SFT adapter merged in when seeding from SFT, plus a fresh
    LoRA adapter for PPO) and its value head. The reference policy is the same model with
    the PPO adapter disabled, so no second copy is ever loaded. The LoRA weights and the
    value head are fp32 whatever the model's dtype (PEFT casts LoRA up itself)."""
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    device = resolve_device(settings.device)
    model = AutoModelForCausalLM.from_pretrained(
        model_location, dtype=resolve_dtype(settings.dtype, device))
    if seed_adapter:
        checkpoints.check_adapter(seed_adapter)  # a damaged SFT adapter is named, never used
        model = PeftModel.from_pretrained(model, seed_adapter).merge_and_unload()
    model = get_peft_model(model, settings.lora())
    value_head = nn.Linear(model.config.hidden_size, 1)  # fp32 even when the model is bf16
    return model.to(device).eval(), value_head.to(device)


class TrainableParameters:
    """What the optimizer updates, all in fp32. Biases trained beside LoRA live in the base
    layers, in the model's dtype: in bf16 a step of lr 9e-6 is mostly rounded away. Each such
    parameter gets an fp32 master copy that takes the optimizer's steps; the model's copy is
    its rounding, written after every step."""

    def __init__(self, model, value_head):
        self.pairs = []  # (the model's low-precision parameter, its fp32 master)
        self.parameters = []
        for parameter in [p for p in model.parameters() if p.requires_grad] + list(
                value_head.parameters()):
            if parameter.dtype != torch.float32:
                master = nn.Parameter(parameter.detach().float().clone())
                self.pairs.append((parameter, master))
                parameter = master
            self.parameters.append(parameter)

    def collect_gradients(self) -> None:
        """After a backward pass: move the model's low-precision gradients onto the masters
        (summed over accumulated mini-batches in fp32)."""
        for parameter, master in self.pairs:
            if parameter.grad is not None:
                gradient = parameter.grad.float()
                master.grad = gradient if master.grad is None else master.grad + gradient
                parameter.grad = None

    def publish(self) -> None:
        """After an optimizer step: the model's parameters take their masters' values."""
        with torch.no_grad():
            for parameter, master in self.pairs:
                parameter.copy_(master)

    def masters(self) -> list[torch.Tensor]:
        return [master.detach() for _, master in self.pairs]

    def load_masters(self, values: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for (_, master), value in zip(self.pairs, values, strict=True):
                master.copy_(value)
        self.publish()


@contextmanager
def reference_policy(model, initial_biases: dict[str, torch.Tensor]):
    """π_ref: the policy with its PPO adapter disabled. Biases trained beside LoRA
    (bias="lora_only" or "all") live in the base layers, which disabling does not undo, so
    their starting values are swapped in meanwhile."""
    parameters = dict(model.named_parameters())
    trained = {name: parameters[name].detach().clone() for name in initial_biases}
    with warnings.catch_warnings():
        # PEFT warns that disabling leaves trained biases in place: handled right here.
        warnings.filterwarnings("ignore", message="Careful, disabling adapter layers")
        with model.disable_adapter(), torch.no_grad():
            try:
                for name, value in initial_biases.items():
                    parameters[name].copy_(value)
                yield model
            finally:
                for name, value in trained.items():
                    parameters[name].copy_(value)


def trainable_biases(model) -> dict[str, torch.Tensor]:
    """Copies of the base-layer biases PPO will train (none unless bias="lora_only"/"all")."""
    return {name: p.detach().clone() for name, p in model.named_parameters()
            if p.requires_grad and name.endswith(".bias") and "lora_" not in name}


def causal_lm_of(model):
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def action_statistics(logits, actions, temperature: float, value_head=None, hidden=None):
    """Per action: its log-probability under softmax(logits / temperature), the entropy of
    that distribution and, given the hidden states before each action, the state value."""
    all_logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    logprobs = all_logprobs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():  # entropy is only logged
        entropy = -(all_logprobs.exp() * all_logprobs).sum(-1)
    values = value_head(hidden.float()).squeeze(-1) if value_head is not None else None
    return logprobs, entropy, values


def evaluate_actions(model, input_ids, attention_mask, response_length: int,
                     temperature: float = 1.0, value_head: nn.Module | None = None):
    """For each response token (action): its log-probability, the entropy of the distribution
    it was drawn from, and (given a value head) the value of the state before it.

    Only the hidden states at the positions predicting response tokens reach the lm_head, so
    no full-vocabulary logits over the prompt are ever made."""
    causal_lm = causal_lm_of(model)
    # A mini-batch of a left-padded rollout carries the padding of the rollout's longest
    # prompt; the columns that are padding in every row change nothing, so they are dropped
    # (activations, and so the update's memory, grow with the width).
    first_real = int(attention_mask.any(dim=0).int().argmax())
    input_ids, attention_mask = input_ids[:, first_real:], attention_mask[:, first_real:]
    # The positions generate() used for left-padded prompts.
    position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    hidden = causal_lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                     position_ids=position_ids).last_hidden_state
    hidden = hidden[:, -response_length - 1:-1]  # position t predicts token t + 1
    logits = causal_lm.get_output_embeddings()(hidden)
    return action_statistics(logits, input_ids[:, -response_length:], temperature, value_head,
                             hidden)


def cached_pass_is_exact(model) -> bool:
    """Whether the sampling pass's log-probabilities equal a full forward pass: in fp32 they
    agree to ~1e-6; in bf16 the KV-cached pass differs by up to ~0.02 nats, enough to make
    the ratio of an unchanged policy 0.98-1.02 and the KL at step 0 non-zero."""
    return model.get_input_embeddings().weight.dtype == torch.float32


# ---------------------------------------------------------------- rollout

def stop_token_ids(model, tokenizer) -> set[int]:
    """The tokenizer's EOS and the generation config's (chat models add end-of-turn ids)."""
    eos = model.generation_config.eos_token_id
    ids = set(eos) if isinstance(eos, list) else {eos}
    return {i for i in ids | {tokenizer.eos_token_id} if i is not None}


@dataclass
class Rollout:
    """One step's sampled responses. Tensors over response tokens are (batch, length);
    `logprobs`, `entropy` and `values` are the policy's own, read off the sampling pass
    (None where that pass is not exact: `old_policy` then computes them)."""
    input_ids: torch.Tensor  # prompt + response
    attention_mask: torch.Tensor
    mask: torch.Tensor  # 1 on the tokens the model answered with
    texts: list[str]  # what the answer parser reads
    logprobs: torch.Tensor | None
    entropy: torch.Tensor | None
    values: torch.Tensor | None


def rollout(model, tokenizer, prompts: list[str], response_length: int, settings: PPOSettings,
            value_head: nn.Module | None = None) -> Rollout:
    """Sample one response per prompt. The log-probabilities of the sampled tokens and the
    values of the states before them come from the sampling pass itself (its logits, and the
    decoder's last hidden state caught by a hook), so no second forward pass is needed."""
    device = next(model.parameters()).device
    batch = tokenizer(prompts, return_tensors="pt", padding=True,
                      add_special_tokens=needs_special_tokens(tokenizer, prompts[0])).to(device)
    stop_ids = stop_token_ids(model, tokenizer)
    stopping = ({"stop_strings": [CLOSE_TAG], "tokenizer": tokenizer}
                if settings.stop_at_close_tag else {})
    causal_lm = causal_lm_of(model)
    states = []  # per forward pass: the hidden state at the position predicting the next token
    hook = causal_lm.get_decoder().register_forward_hook(
        lambda module, args, output: states.append(output[0][:, -1]))
    try:
        # Actions must come from the policy's own distribution: override any penalties the
        # model's generation_config carries.
        out = model.generate(
            **batch, do_sample=True, temperature=settings.temperature, top_k=settings.top_k,
            top_p=settings.top_p, max_new_tokens=response_length, repetition_penalty=1.0,
            no_repeat_ngram_size=0, min_length=0, eos_token_id=sorted(stop_ids),
            pad_token_id=tokenizer.pad_token_id, output_logits=True,
            return_dict_in_generate=True, **stopping)
    finally:
        hook.remove()
    responses = out.sequences[:, batch["input_ids"].size(1):]
    if len(states) != responses.size(1):
        raise RuntimeError(f"generate() ran {len(states)} forward passes for "
                           f"{responses.size(1)} new tokens; the rollout cannot read its values")
    logprobs, entropy, values = action_statistics(
        torch.stack(out.logits, dim=1), responses, settings.temperature, value_head,
        torch.stack(states, dim=1))
    mask = torch.zeros(responses.shape, dtype=torch.float32, device=device)
    texts = []
    for i, ids in enumerate(responses.tolist()):
        end = answer_end(tokenizer, ids, stop_ids, settings.stop_at_close_tag)
        mask[i, :end] = 1.0
        # decoded as evaluation decodes, so reward and metric read the same text
        texts.append(tokenizer.decode(ids[:end], skip_special_tokens=True))
    attention_mask = torch.cat([batch["attention_mask"], torch.ones_like(responses)], dim=1)
    if not cached_pass_is_exact(model):
        logprobs = values = None
    return Rollout(out.sequences, attention_mask, mask, texts, logprobs, entropy, values)


def answer_end(tokenizer, ids: list[int], stop_ids: set[int], stop_at_close_tag: bool) -> int:
    """How many response tokens the model answered with: through the first EOS or (when
    stopping there) the token that completes </Judgement>; the rest is padding."""
    end = next((t + 1 for t, token in enumerate(ids) if token in stop_ids), len(ids))
    if stop_at_close_tag and CLOSE_TAG in tokenizer.decode(ids[:end]):
        end = next(t for t in range(1, end + 1) if CLOSE_TAG in tokenizer.decode(ids[:t]))
    return end


def old_policy(model, value_head, sampled: Rollout, settings: PPOSettings):
    """π_old's log-probabilities and the values of the sampled tokens: the rollout's own
    where its pass is exact, else one batched forward pass in the training dtype."""
    if sampled.logprobs is not None and sampled.values is not None:
        return sampled.logprobs, sampled.values
    with torch.no_grad():
        logprobs, _, values = evaluate_actions(model, sampled.input_ids, sampled.attention_mask,
                                               sampled.mask.size(1), settings.temperature,
                                               value_head)
    return logprobs, values


# ---------------------------------------------------------------- optimisation

def make_optimizer(parameters, settings: PPOSettings):
    if settings.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(parameters, lr=settings.learning_rate, scale_parameter=False,
                         relative_step=False, warmup_init=False)
    return torch.optim.AdamW(parameters, lr=settings.learning_rate)


def ppo_update(model, value_head, optimizer, batch: dict, settings: PPOSettings,
               trainable: TrainableParameters | None = None) -> dict:
    """`ppo_epochs` passes over the rollout in a fresh random order, as TRL 0.11 does it:
    the order is cut into mini-batches of `mini_batch_size`, and every `gradient_accumulation`
    of them make one optimizer step, each mini-batch's loss divided by that number. A
    mini-batch whose mean ratio π/π_old exceeds `ratio_threshold` contributes nothing (its
    loss is zeroed; it is counted as skipped). Gradients are clipped to `max_grad_norm`
    (unless null). With `target_kl`, the epochs stop once the last mini-batch's policy KL
    exceeds 1.5 · target_kl.

    `batch` holds input_ids, attention_mask, mask, logprobs, values, advantages, returns
    (rollout-time values, no gradient). Returns the mean policy and value loss, clip
    fractions and ratio over the mini-batches, the largest ratio, the skipped count and how
    many epochs ran. Dropout stays off: every PPO forward pass runs in eval mode."""
    trainable = trainable or TrainableParameters(model, value_head)
    rows, response_length = batch["mask"].shape
    per_step = settings.mini_batch_size * settings.gradient_accumulation
    stats, ratio_max, skipped, epochs_run = [], 0.0, 0, 0
    model.eval()
    for _ in range(settings.ppo_epochs):
        epochs_run += 1
        order = torch.from_numpy(np.random.permutation(rows)).to(batch["mask"].device)
        for start in range(0, rows, per_step):
            optimizer.zero_grad()
            group = order[start:start + per_step]
            for mb_start in range(0, len(group), settings.mini_batch_size):
                mb = {key: tensor[group[mb_start:mb_start + settings.mini_batch_size]]
                      for key, tensor in batch.items()}
                new_logprobs, _, new_values = evaluate_actions(
                    model, mb["input_ids"], mb["attention_mask"], response_length,
                    settings.temperature, value_head)
                pg_loss, clipfrac = policy_loss(new_logprobs, mb["logprobs"], mb["advantages"],
                                                mb["mask"], settings.cliprange)
                vf_loss, vf_clipfrac = value_loss(new_values, mb["values"], mb["returns"],
                                                  mb["mask"], settings.cliprange_value)
                with torch.no_grad():
                    log_ratio = new_logprobs - mb["logprobs"]
                    ratio = masked_mean(torch.exp(log_ratio), mb["mask"]).item()
                    ratio_max = max(ratio_max, torch.exp(log_ratio)[mb["mask"] > 0].max().item())
                    policy_kl = masked_mean(-log_ratio, mb["mask"]).item()
                loss = pg_loss + settings.vf_coef * vf_loss
                if settings.ratio_threshold is not None and ratio > settings.ratio_threshold:
                    loss, pg_loss, vf_loss = loss * 0.0, pg_loss * 0.0, vf_loss * 0.0
                    skipped += 1
                (loss / settings.gradient_accumulation).backward()
                trainable.collect_gradients()
                stats.append((pg_loss.item(), vf_loss.item(), clipfrac.item(),
                              vf_clipfrac.item(), ratio))
            if settings.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(trainable.parameters, settings.max_grad_norm)
            optimizer.step()
            trainable.publish()
        if settings.target_kl is not None and policy_kl > 1.5 * settings.target_kl:
            break
    policy, value, clip, value_clip, ratio_mean = np.mean(stats, axis=0)
    return {"policy_loss": float(policy), "value_loss": float(value), "clipfrac": float(clip),
            "value_clipfrac": float(value_clip), "ratio_mean": float(ratio_mean),
            "ratio_max": ratio_max, "skipped_minibatches": skipped, "ppo_epochs_run": epochs_run}


@dataclass
class Learner:
    """Everything one PPO step changes: the policy, its value head, the optimizer over their
    fp32 trainable parameters, the KL controller and the running reward moments; and the
    starting biases the reference policy swaps back in."""
    model: nn.Module
    value_head: nn.Module
    trainable: TrainableParameters
    optimizer: torch.optim.Optimizer
    kl_controller: AdaptiveKLController | FixedKLController
    score_moments: RunningMoments
    initial_biases: dict[str, torch.Tensor]


def make_learner(model, value_head, settings: PPOSettings) -> Learner:
    trainable = TrainableParameters(model, value_head)
    kl = settings.kl
    kl_controller = (AdaptiveKLController(kl.init_kl_coef, kl.target, kl.horizon)
                     if kl.adaptive else FixedKLController(kl.init_kl_coef))
    return Learner(model, value_head, trainable, make_optimizer(trainable.parameters, settings),
                   kl_controller, RunningMoments(), trainable_biases(model))


def ppo_step(learner: Learner, sampled: Rollout, score: torch.Tensor,
             settings: PPOSettings) -> tuple[dict, dict]:
    """Steps 3-7 for one rollout and its task rewards (`score`, one per sequence): what TRL
    0.11's `PPOTrainer.step(queries, responses, scores)` does. Returns the step's statistics
    and its tensors (old and reference log-probabilities, values, rewards, advantages,
    returns), the latter for the oracle comparison."""
    model, mask = learner.model, sampled.mask
    response_length = mask.size(1)
    logprobs, values = old_policy(model, learner.value_head, sampled, settings)

    # 3. evaluate: the reference policy (adapter off) on the sampled actions, no gradient
    with torch.no_grad(), reference_policy(model, learner.initial_biases):
        ref_logprobs, _, _ = evaluate_actions(model, sampled.input_ids, sampled.attention_mask,
                                              response_length, settings.temperature)

    # 4. shape: KL penalty on every token, the (processed) task reward on the last
    kl_coef = learner.kl_controller.value
    rewards = per_token_rewards(process_scores(score, settings, learner.score_moments),
                                logprobs, ref_logprobs, mask, kl_coef)

    # 5. GAE
    gae_rewards = masked_whiten(rewards, mask, shift_mean=False) if settings.whiten_rewards \
        else rewards
    advantages, returns = compute_gae(gae_rewards, values, mask, settings.gamma, settings.lam)
    if settings.whiten_advantages:
        advantages = masked_whiten(advantages, mask)

    # 6. optimise: PPO epochs over shuffled mini-batches
    update = ppo_update(model, learner.value_head, learner.optimizer, {
        "input_ids": sampled.input_ids, "attention_mask": sampled.attention_mask, "mask": mask,
        "logprobs": logprobs, "values": values, "advantages": advantages,
        "returns": returns}, settings, learner.trainable)

    # 7. KL control, with the mean KL of a whole sequence
    log_ratio = (ref_logprobs - logprobs) * mask  # log π_ref/π on the real tokens
    kl = (-log_ratio).sum(dim=1).mean().item()
    learner.kl_controller.update(kl, len(mask))
    shaped_return = (rewards * mask).sum(dim=1)
    k3 = (torch.exp(log_ratio) - 1 - log_ratio) * mask
    stats = {"kl": kl, "kl_k3": k3.sum(dim=1).mean().item(), "kl_coef": kl_coef,
             "shaped_return": shaped_return.mean().item(),
             "shaped_return_std": shaped_return.std(unbiased=False).item(),
             "explained_variance": explained_variance(values, returns, mask), **update}
    tensors = {"logprobs": logprobs, "ref_logprobs": ref_logprobs, "values": values,
               "rewards": rewards, "advantages": advantages, "returns": returns}
    return stats, tensors


# ---------------------------------------------------------------- checkpoints and curves

def save_checkpoint(work_dir, step: int, learner: Learner, rng: random.Random,
                    curve: list[dict]) -> Path:
    folder = Path(work_dir) / f"checkpoint-{step}"
    shutil.rmtree(folder, ignore_errors=True)  # an unsealed leftover of a killed save
    learner.model.save_pretrained(folder / "adapter")
    torch.save(learner.value_head.state_dict(), folder / "value_head.pt")
    torch.save(learner.optimizer.state_dict(), folder / "optimizer.pt")
    torch.save({"kl_coef": learner.kl_controller.value, "curve": curve,
                "score_moments": vars(learner.score_moments),
                "masters": learner.trainable.masters(),
                "rng": {"python": rng.getstate(), "numpy": np.random.get_state(),
                        "torch": torch.get_rng_state(),
                        "cuda": (torch.cuda.get_rng_state_all()
                                 if torch.cuda.is_available() else None)}},
               folder / "trainer_state.pt")
    write_curve_csv(curve, folder / "curve.csv", CURVE_COLUMNS)
    checkpoints.seal(folder)  # last: only now does the checkpoint count
    for older in checkpoints.checkpoints_newest_first(work_dir)[2:]:
        shutil.rmtree(older)  # the previous one stays, in case this one is damaged later
    return folder


def load_checkpoint(folder: Path, learner: Learner, rng: random.Random) -> list[dict]:
    """Restore everything a checkpoint holds into the live objects; returns the curve so far."""
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    device = next(learner.model.parameters()).device
    adapter = load_peft_weights(str(folder / "adapter"), device=str(device))
    set_peft_model_state_dict(learner.model, adapter)
    learner.value_head.load_state_dict(torch.load(folder / "value_head.pt", map_location=device))
    learner.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device))
    # Our own sealed file; RNG states need more than tensors, hence weights_only=False.
    state = torch.load(folder / "trainer_state.pt", weights_only=False)
    learner.kl_controller.value = state["kl_coef"]
    vars(learner.score_moments).update(state["score_moments"])
    learner.trainable.load_masters(state["masters"])
    rng.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["curve"]


# ---------------------------------------------------------------- the training loop

def task_of(row: dict, default: Task) -> Task:
    """The task a prompt row belongs to: multi-task PPO mixes rows that name their task."""
    if "task" in row:
        benchmark, name = row["task"].split("/")
        return get_task(benchmark, name)
    return default


def answer_statistics(tasks: list[Task], texts: list[str], golds: list) -> dict:
    """What the sampled answers say, read by the evaluation's parser: accuracy (classification
    rows only: a similarity score is never exactly "correct"), invalid rate, and the share of
    the most common valid answer (near 1: the policy answers the same whatever the input)."""
    parsed = [answers.parse_answer(task, text) for task, text in zip(tasks, texts)]
    correct = [a.valid and a.label == gold
               for task, a, gold in zip(tasks, parsed, golds) if not task.is_regression]
    valid = [(task.key, a.label) for task, a in zip(tasks, parsed) if a.valid]
    return {"accuracy": float(np.mean(correct)) if correct else math.nan,
            "invalid_rate": float(np.mean([not a.valid for a in parsed])),
            "majority_share": (Counter(valid).most_common(1)[0][1] / len(valid)
                               if valid else math.nan)}


def train_ppo(model_location: str, rows: list[dict], task: Task | None, adapter_dir, work_dir,
              settings: PPOSettings, curve_csv, curve_png=None, seed_adapter: str | None = None,
              reward_scheme: RewardScheme | None = None,
              log: Callable[[str], None] = logger.info,
              on_step: Callable[[dict], None] | None = None) -> dict:
    """Train a LoRA adapter with PPO on prompt rows ("prompt" ending in <Judgement>, "label")
    and save it as a sealed PEFT folder in `adapter_dir`. Resumes from the newest sound
    checkpoint in `work_dir`; a killed and resumed run ends with the same adapter as an
    uninterrupted one. Only one job at a time may use `work_dir`; a second fails at once.
    `on_step`, if given, is called after every step with {"step", "step_seconds" (from just
    before the rollout to just after the update, synchronised on CUDA), "reward",
    "response_tokens_mean"}: how the benchmark times steps."""
    with exclusive_lock(work_dir, "training job"):
        return _train_ppo(model_location, rows, task, adapter_dir, work_dir, settings, curve_csv,
                          curve_png, seed_adapter, reward_scheme, log, on_step)


def _settled_clock(model) -> float:
    """time.perf_counter() once the model's device has finished the work queued on it (CUDA
    runs asynchronously: without the wait a step's time would land in the next one)."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _train_ppo(model_location, rows, task, adapter_dir, work_dir, settings, curve_csv, curve_png,
               seed_adapter, reward_scheme, log, on_step) -> dict:
    from tqdm.auto import tqdm

    rows = [row for row in rows if row.get("label") is not None]
    if not rows:
        raise ValueError("PPO needs labelled prompt rows")
    scheme = reward_scheme or RewardScheme()
    reward_fn = answers.training_reward(scheme)
    total = settings.total_steps(len(rows))
    rng = random.Random(settings.seed)  # draws response lengths
    np.random.seed(settings.seed)  # mini-batch order
    torch.manual_seed(settings.seed)
    tokenizer = load_tokenizer(model_location)
    model, value_head = build_policy(model_location, settings, seed_adapter)
    learner = make_learner(model, value_head, settings)
    curve, start = [], 0
    # Damaged checkpoints newer than the sound one are removed: left in place they would
    # count among the newest two that save_checkpoint keeps, and push sound ones out.
    # So are those of another run: only this run's settings and inputs may resume.
    fingerprint = run_fingerprint(model_location, rows, settings, task.key if task else None,
                                  seed_adapter, scheme)
    checkpoint = resume_point(Path(work_dir), fingerprint)
    if checkpoint is not None:
        start = checkpoints.step_of(checkpoint)
        log(f"resuming from {checkpoint} at step {start}")
        curve = load_checkpoint(checkpoint, learner, rng)

    progress = tqdm(range(start, total), initial=start, total=total,
                    desc=f"PPO {task.key if task else 'multi-task'}")
    for step in progress:
        # 1. rollout: the policy answers this step's prompts
        sample = [rows[i] for i in prompts_of_step(len(rows), settings.prompts_per_step,
                                                   settings.seed, step)]
        length = rng.randint(settings.response_length_min, settings.response_length_max)
        if on_step:
            started = _settled_clock(model)
        with torch.no_grad():
            sampled = rollout(model, tokenizer, [row["prompt"] for row in sample], length,
                              settings, value_head)

        # 2. reward: the finished answers, scored against the gold labels by each row's task
        tasks = [task_of(row, task) for row in sample]
        golds = [row["label"] for row in sample]
        score = torch.tensor([reward_fn(t, text, gold)
                              for t, text, gold in zip(tasks, sampled.texts, golds)],
                             dtype=torch.float32, device=sampled.mask.device)

        # 3-7. reference, shaping, GAE, PPO epochs, KL control
        stats, _ = ppo_step(learner, sampled, score, settings)
        if on_step:
            step_seconds = _settled_clock(model) - started

        curve.append({
            "step": step + 1, "reward": score.mean().item(),
            "reward_std": score.std(unbiased=False).item(),
            **answer_statistics(tasks, sampled.texts, golds),
            "entropy": masked_mean(sampled.entropy, sampled.mask).item(),
            "response_length": sampled.mask.sum(dim=1).mean().item(), **stats})
        progress.set_postfix(reward=f"{curve[-1]['reward']:.3f}", kl=f"{stats['kl']:.3f}")
        if settings.save_steps and (step + 1) % settings.save_steps == 0:
            save_checkpoint(work_dir, step + 1, learner, rng, curve)
        if on_step:
            on_step({"step": step + 1, "step_seconds": step_seconds,
                     "reward": curve[-1]["reward"],
                     "response_tokens_mean": curve[-1]["response_length"]})
    progress.close()

    save_adapter(model, adapter_dir)
    write_curve_csv(curve, curve_csv, CURVE_COLUMNS)
    if curve_png:
        plot_curves(curve, curve_png, f"PPO on {task.key if task else 'all tasks'}", CURVE_PANELS)
    log(f"PPO finished {total} steps; adapter in {adapter_dir}")
    return {"steps": total, "resumed_from_step": start if checkpoint else None,
            "final": curve[-1] if curve else {}, "settings": asdict(settings)}
