"""PPO with LoRA: the paper's reinforcement learning for language understanding.

Every token the policy generates is an action; the finished answer is parsed and scored with
the same label-alignment reward the evaluation uses (`answers.reward`); only the LoRA layers
(and a small value head) learn. TRL no longer ships PPOTrainer, so the algorithm lives here,
one step after another, in the manner of the classic single-file implementations
(Ziegler et al. 2019; the TRL PPOTrainer the paper's code used):

  1. rollout     sample `prompts_per_step` prompts and generate a response to each; the
                 sampling pass also gives the policy's log-probabilities of the sampled
                 tokens and the values of the states before them
  2. reward      parse each finished answer and score it against the gold label
  3. evaluate    log-probabilities of the response tokens under the reference policy (same
                 weights, PPO adapter disabled)
  4. shape       per-token rewards: −β·KL on every token, the task reward on the last one
  5. GAE         advantages and returns over the response tokens
  6. optimise    `ppo_epochs` passes over shuffled mini-batches: clipped surrogate policy
                 loss + vf_coef · clipped value loss, gradients clipped
  7. KL control  move β towards the target KL (adaptive) or keep it fixed

Tensors over response tokens are (batch, response_length); `mask` is 1 on the tokens the
model actually answered with (a prefix: up to EOS or the closing tag) and 0 on padding.
"""
from __future__ import annotations

import logging
import random
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
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
from .training import (LoraSettings, plot_curves, resume_point, run_fingerprint, save_adapter,
                       settings_from_config, write_curve_csv)

logger = logging.getLogger(__name__)
CURVE_COLUMNS = ("step", "reward", "accuracy", "invalid_rate", "kl", "kl_coef", "entropy",
                 "clipfrac", "value_loss", "policy_loss", "response_length")
CURVE_PANELS = (("reward",), ("accuracy", "invalid_rate"), ("kl",), ("kl_coef",), ("entropy",),
                ("response_length",))


# ---------------------------------------------------------------- settings

@dataclass
class KLSettings:
    init_kl_coef: float = 0.2
    adaptive: bool = True
    target: float = 6.0
    horizon: int = 10000


@dataclass
class PPOSettings(LoraSettings):  # lora_* fields: the paper's LoRA, as in SFT and GRPO
    kl: KLSettings = field(default_factory=KLSettings)
    learning_rate: float = 9e-6
    optimizer: str = "adafactor"  # or "adamw"
    prompts_per_step: int = 16
    mini_batch_size: int = 4
    ppo_epochs: int = 3
    steps: int = 100
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filtering
    top_p: float = 1.0
    response_length_min: int = 12  # the response length is drawn per step from [min, max]
    response_length_max: int = 32
    stop_at_close_tag: bool = True  # a sequence ends at </Judgement> as well as at EOS
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    max_grad_norm: float = 1.0
    whiten_advantages: bool = True
    save_steps: int = 50
    seed: int = 0
    dtype: str = "auto"
    device: str = "auto"

    @classmethod
    def from_config(cls, config: dict | None) -> "PPOSettings":
        """Settings from a config mapping, its `kl` section nested; unknown keys are a
        TypeError naming them."""
        config = dict(config or {})
        if "kl" in config:
            config["kl"] = settings_from_config(KLSettings, config["kl"], "ppo.kl")
        settings = settings_from_config(cls, config, "ppo")
        if settings.optimizer not in ("adafactor", "adamw"):
            raise ValueError(f"ppo.optimizer must be adafactor or adamw, "
                             f"not {settings.optimizer!r}")
        if not 1 <= settings.response_length_min <= settings.response_length_max:
            raise ValueError("ppo needs 1 <= response_length_min <= response_length_max")
        return settings


# ---------------------------------------------------------------- the math

def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum()


def masked_whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit (population) variance over the real tokens."""
    mean = masked_mean(x, mask)
    variance = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(variance + 1e-8)


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


def value_loss(new_values, old_values, returns, mask, cliprange_value: float) -> torch.Tensor:
    """½·mean(max((V − R)², (V_clipped − R)²)), where V_clipped stays within ±ε of the value
    estimated during the rollout, so the critic cannot jump far in one update."""
    clipped_values = old_values + torch.clamp(new_values - old_values,
                                              -cliprange_value, cliprange_value)
    squared_errors = torch.max((new_values - returns) ** 2, (clipped_values - returns) ** 2)
    return 0.5 * masked_mean(squared_errors, mask)


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


# ---------------------------------------------------------------- the model

def build_policy(model_location: str, settings: PPOSettings, seed_adapter: str | None = None):
    """The policy (base model, the SFT adapter merged in when seeding from SFT, plus a fresh
    LoRA adapter for PPO) and its value head. The reference policy is the same model with
    the PPO adapter disabled, so no second copy is ever loaded."""
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
    return model.to(device), value_head.to(device)


@contextmanager
def reference_policy(model, initial_biases: dict[str, torch.Tensor]):
    """π_ref: the policy with its PPO adapter disabled. Biases trained beside LoRA
    (bias="lora_only") live in the base layers, which disabling does not undo, so their
    starting values are swapped in meanwhile."""
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
    # The positions generate() used for left-padded prompts.
    position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    hidden = causal_lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                     position_ids=position_ids).last_hidden_state
    hidden = hidden[:, -response_length - 1:-1]  # position t predicts token t + 1
    logits = causal_lm.get_output_embeddings()(hidden)
    return action_statistics(logits, input_ids[:, -response_length:], temperature, value_head,
                             hidden)


# ---------------------------------------------------------------- rollout

def stop_token_ids(model, tokenizer) -> set[int]:
    """The tokenizer's EOS and the generation config's (chat models add end-of-turn ids)."""
    eos = model.generation_config.eos_token_id
    ids = set(eos) if isinstance(eos, list) else {eos}
    return {i for i in ids | {tokenizer.eos_token_id} if i is not None}


@dataclass
class Rollout:
    """One step's sampled responses. Tensors over response tokens are (batch, length);
    `logprobs`, `entropy` and `values` are the policy's own, read off the sampling pass."""
    input_ids: torch.Tensor  # prompt + response
    attention_mask: torch.Tensor
    mask: torch.Tensor  # 1 on the tokens the model answered with
    texts: list[str]  # what the answer parser reads
    logprobs: torch.Tensor
    entropy: torch.Tensor
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
    return Rollout(out.sequences, attention_mask, mask, texts, logprobs, entropy, values)


def answer_end(tokenizer, ids: list[int], stop_ids: set[int], stop_at_close_tag: bool) -> int:
    """How many response tokens the model answered with: through the first EOS or (when
    stopping there) the token that completes </Judgement>; the rest is padding."""
    end = next((t + 1 for t, token in enumerate(ids) if token in stop_ids), len(ids))
    if stop_at_close_tag and CLOSE_TAG in tokenizer.decode(ids[:end]):
        end = next(t for t in range(1, end + 1) if CLOSE_TAG in tokenizer.decode(ids[:t]))
    return end


# ---------------------------------------------------------------- optimisation

def make_optimizer(parameters, settings: PPOSettings):
    if settings.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(parameters, lr=settings.learning_rate, scale_parameter=False,
                         relative_step=False, warmup_init=False)
    return torch.optim.AdamW(parameters, lr=settings.learning_rate)


def ppo_update(model, value_head, optimizer, batch: dict, settings: PPOSettings) -> dict:
    """`ppo_epochs` passes over shuffled mini-batches of the rollout. `batch` holds
    input_ids, attention_mask, mask, logprobs, values, advantages, returns (rollout-time
    values, no gradient). Returns the mean policy loss, value loss and clip fraction."""
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    response_length = batch["mask"].size(1)
    stats = []
    model.train()  # LoRA dropout acts on the updates only
    for _ in range(settings.ppo_epochs):
        order = torch.randperm(len(batch["mask"]))
        for start in range(0, len(order), settings.mini_batch_size):
            rows = order[start:start + settings.mini_batch_size].to(batch["mask"].device)
            mb = {key: tensor[rows] for key, tensor in batch.items()}
            new_logprobs, _, new_values = evaluate_actions(
                model, mb["input_ids"], mb["attention_mask"], response_length,
                settings.temperature, value_head)
            pg_loss, clipfrac = policy_loss(new_logprobs, mb["logprobs"], mb["advantages"],
                                            mb["mask"], settings.cliprange)
            vf_loss = value_loss(new_values, mb["values"], mb["returns"], mb["mask"],
                                 settings.cliprange_value)
            optimizer.zero_grad()
            (pg_loss + settings.vf_coef * vf_loss).backward()
            nn.utils.clip_grad_norm_(parameters, settings.max_grad_norm)
            optimizer.step()
            stats.append((pg_loss.item(), vf_loss.item(), clipfrac.item()))
    model.eval()
    policy, value, clip = np.mean(stats, axis=0)
    return {"policy_loss": float(policy), "value_loss": float(value), "clipfrac": float(clip)}


# ---------------------------------------------------------------- checkpoints and curves

def save_checkpoint(work_dir, step: int, model, value_head, optimizer, kl_controller,
                    rng: random.Random, curve: list[dict]) -> Path:
    folder = Path(work_dir) / f"checkpoint-{step}"
    shutil.rmtree(folder, ignore_errors=True)  # an unsealed leftover of a killed save
    model.save_pretrained(folder / "adapter")
    torch.save(value_head.state_dict(), folder / "value_head.pt")
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    torch.save({"kl_coef": kl_controller.value, "curve": curve,
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


def load_checkpoint(folder: Path, model, value_head, optimizer, kl_controller,
                    rng: random.Random) -> list[dict]:
    """Restore everything a checkpoint holds into the live objects; returns the curve so far."""
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    device = next(model.parameters()).device
    adapter = load_peft_weights(str(folder / "adapter"), device=str(device))
    set_peft_model_state_dict(model, adapter)
    value_head.load_state_dict(torch.load(folder / "value_head.pt", map_location=device))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device))
    # Our own sealed file; RNG states need more than tensors, hence weights_only=False.
    state = torch.load(folder / "trainer_state.pt", weights_only=False)
    kl_controller.value = state["kl_coef"]
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


def train_ppo(model_location: str, rows: list[dict], task: Task | None, adapter_dir, work_dir,
              settings: PPOSettings, curve_csv, curve_png=None, seed_adapter: str | None = None,
              reward_scheme: RewardScheme | None = None,
              log: Callable[[str], None] = logger.info) -> dict:
    """Train a LoRA adapter with PPO on prompt rows ("prompt" ending in <Judgement>, "label")
    and save it as a sealed PEFT folder in `adapter_dir`. Resumes from the newest sound
    checkpoint in `work_dir`; a killed and resumed run ends with the same adapter as an
    uninterrupted one. Only one job at a time may use `work_dir`; a second fails at once."""
    with exclusive_lock(work_dir, "training job"):
        return _train_ppo(model_location, rows, task, adapter_dir, work_dir, settings, curve_csv,
                          curve_png, seed_adapter, reward_scheme, log)


def _train_ppo(model_location, rows, task, adapter_dir, work_dir, settings, curve_csv, curve_png,
               seed_adapter, reward_scheme, log) -> dict:
    from tqdm.auto import tqdm

    rows = [row for row in rows if row.get("label") is not None]
    if not rows:
        raise ValueError("PPO needs labelled prompt rows")
    scheme = reward_scheme or RewardScheme()
    rng = random.Random(settings.seed)  # draws prompts and response lengths
    np.random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    tokenizer = load_tokenizer(model_location)
    model, value_head = build_policy(model_location, settings, seed_adapter)
    model.eval()
    initial_biases = trainable_biases(model)  # taken before a resume changes them
    trainable = [p for p in model.parameters() if p.requires_grad] + list(value_head.parameters())
    optimizer = make_optimizer(trainable, settings)
    kl_settings = settings.kl
    kl_controller = (AdaptiveKLController(kl_settings.init_kl_coef, kl_settings.target,
                                          kl_settings.horizon)
                     if kl_settings.adaptive else FixedKLController(kl_settings.init_kl_coef))
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
        curve = load_checkpoint(checkpoint, model, value_head, optimizer, kl_controller, rng)

    progress = tqdm(range(start, settings.steps), initial=start, total=settings.steps,
                    desc=f"PPO {task.key if task else 'multi-task'}")
    for step in progress:
        # 1. rollout: the policy answers a seeded sample of prompts
        sample = rng.sample(rows, min(settings.prompts_per_step, len(rows)))
        length = rng.randint(settings.response_length_min, settings.response_length_max)
        with torch.no_grad():
            sampled = rollout(model, tokenizer, [row["prompt"] for row in sample], length,
                              settings, value_head)
        input_ids, attention_mask, mask = sampled.input_ids, sampled.attention_mask, sampled.mask
        logprobs, values = sampled.logprobs, sampled.values  # π_old and V, from the rollout
        response_length = mask.size(1)

        # 2. reward: the finished answers, scored against the gold labels
        tasks = [task_of(row, task) for row in sample]
        parsed = [answers.parse_answer(t, text) for t, text in zip(tasks, sampled.texts)]
        score = torch.tensor([answers.reward(t, answer, row["label"], scheme)
                              for t, answer, row in zip(tasks, parsed, sample)],
                             dtype=torch.float32, device=mask.device)

        # 3. evaluate: the reference policy (adapter off) on the sampled actions, no gradient
        with torch.no_grad():
            with reference_policy(model, initial_biases):
                ref_logprobs, _, _ = evaluate_actions(
                    model, input_ids, attention_mask, response_length, settings.temperature)

        # 4. shape: KL penalty on every token, task reward on the last
        rewards = per_token_rewards(score, logprobs, ref_logprobs, mask, kl_controller.value)

        # 5. GAE
        advantages, returns = compute_gae(rewards, values, mask, settings.gamma, settings.lam)
        if settings.whiten_advantages:
            advantages = masked_whiten(advantages, mask)

        # 6. optimise: PPO epochs over shuffled mini-batches
        update = ppo_update(model, value_head, optimizer, {
            "input_ids": input_ids, "attention_mask": attention_mask, "mask": mask,
            "logprobs": logprobs, "values": values, "advantages": advantages,
            "returns": returns}, settings)

        # 7. KL control, with the mean KL of a whole sequence
        kl = ((logprobs - ref_logprobs) * mask).sum(dim=1).mean().item()
        kl_coef = kl_controller.value
        kl_controller.update(kl, len(sample))

        # a similarity score is never exactly "correct": STS-B answers have no accuracy
        correct = [a.valid and a.label == row["label"]
                   for t, a, row in zip(tasks, parsed, sample) if not t.is_regression]
        curve.append({
            "step": step + 1, "reward": score.mean().item(),
            "accuracy": float(np.mean(correct)) if correct else float("nan"),
            "invalid_rate": float(np.mean([not a.valid for a in parsed])),
            "kl": kl, "kl_coef": kl_coef, "entropy": masked_mean(sampled.entropy, mask).item(),
            **update, "response_length": mask.sum(dim=1).mean().item()})
        progress.set_postfix(reward=f"{curve[-1]['reward']:.3f}", kl=f"{kl:.3f}")
        if settings.save_steps and (step + 1) % settings.save_steps == 0:
            save_checkpoint(work_dir, step + 1, model, value_head, optimizer, kl_controller,
                            rng, curve)
    progress.close()

    save_adapter(model, adapter_dir)
    write_curve_csv(curve, curve_csv, CURVE_COLUMNS)
    if curve_png:
        plot_curves(curve, curve_png, f"PPO on {task.key if task else 'all tasks'}", CURVE_PANELS)
    log(f"PPO finished {settings.steps} steps; adapter in {adapter_dir}")
    return {"steps": settings.steps, "resumed_from_step": start if checkpoint else None,
            "final": curve[-1] if curve else {}, "settings": asdict(settings)}
