"""GRPO with LoRA: group-relative policy optimisation (Shao et al. 2024, DeepSeekMath) with
the same label-alignment reward as PPO and evaluation (`answers.reward`).

For each prompt the policy samples a group of `num_generations` answers; each answer's
advantage is its reward minus the group's mean, divided by the group's standard deviation,
so no value model is needed. The loss is TRL's clipped surrogate plus β·KL to the reference
policy. Training runs on TRL's `GRPOTrainer` with a fresh LoRA adapter; like PPO it can be
seeded from SFT: the SFT adapter is merged into the base weights first, so the reference
policy (TRL disables the GRPO adapter to get it) is the SFT model.

Facts about TRL 1.16 this module relies on:
  - `per_device_train_batch_size` counts completions, not prompts, and the generation batch
    must hold whole groups; one optimizer step here is `prompts_per_step` prompts ×
    `num_generations` answers, split over `gradient_accumulation` micro-batches (answers are
    generated once per optimizer step).
  - A plain-string `prompt` column is not conversational: TRL tokenizes it as it is (with
    `add_special_tokens=True`, no chat template) and decodes each completion with
    `skip_special_tokens=True`, so the reward sees plain text. A prompt that already starts
    with the BOS text (rendered by a chat template) would get a second BOS from a tokenizer
    that adds one; such prompts lose their leading BOS text here (`trl_prompt`).
  - Generation stops at EOS or `max_completion_length` tokens, not at `</Judgement>` (TRL
    cannot pass stop strings to `generate`); the parser reads only the text before the
    closing tag, so trailing tokens change no reward, though they share the answer's
    advantage in the loss. An SFT-seeded policy ends with EOS right after the tag.
  - Extra dataset columns reach reward functions as keyword lists (`label=[...]`, one per
    completion), together with `log_metric`, which logs a scalar beside `reward` and `kl`.
  - TRL's default β is 0.0 (no KL term, no reference pass); this module defaults to 0.04,
    the DeepSeekMath value, to keep the policy near its (SFT) starting point as PPO does.
  - With `lora_bias="lora_only"` the trained biases live in the base layers, which TRL's
    reference pass (adapter disabled) does not undo; Llama-family models have no linear
    biases, so there it changes nothing.

Checkpoints are sealed and resumed as in `sft` (see `training`). TRL's prompt sampler keeps
one random generator running across epochs, which a resumed run would restart; here it is
reseeded at each epoch (`resumable_grpo_trainer`), so on CPU a resumed run ends with the same
adapter as an uninterrupted one.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

from . import answers
from .answers import RewardScheme
from .files import exclusive_lock
from .generation import trl_prompt
from .models import load_model, load_tokenizer, resolve_device, resolve_dtype
from .settings import GRPOSettings
from .tasks import Task
from .training import (common_trainer_args, run_fingerprint, save_trainer_curve,
                       sealing_callback, train_and_save_adapter)

log = logging.getLogger(__name__)

REWARD_FUNCTION_NAME = "label_reward"
# Curve column -> the key GRPOTrainer (or the reward function) logs it under.
CURVE_SOURCES = {
    "step": "step",
    "reward": "reward",
    "reward_std": "reward_std",
    "accuracy": "accuracy",
    "invalid_rate": "invalid_rate",
    "kl": "kl",
    "entropy": "entropy",
    "completion_length": "completions/mean_length",
    "loss": "loss",
    "learning_rate": "learning_rate",
}
CURVE_PANELS = (("reward",), ("accuracy", "invalid_rate"), ("kl",), ("entropy",))


# ---------------------------------------------------------------- the reward

def reward_function(task: Task, scheme: RewardScheme | None = None):
    """A TRL reward function: `(prompts, completions, label=[...], **kwargs) -> [float]`,
    scoring each completion with the training reward (`answers.training_reward`: the suite's
    or the paper's rule) against its row's gold label. Inside a
    trainer it also logs the share of sampled answers that are correct (`accuracy`,
    classification only) and unparseable (`invalid_rate`)."""
    score = answers.training_reward(scheme or RewardScheme())

    def label_reward(prompts, completions, label, log_metric=None, **kwargs) -> list[float]:
        texts = [completion_text(c) for c in completions]
        parsed = [answers.parse_answer(task, text) for text in texts]
        rewards = [score(task, text, gold) for text, gold in zip(texts, label)]
        if log_metric is not None and parsed:
            log_metric("invalid_rate", sum(not a.valid for a in parsed) / len(parsed))
            if not task.is_regression:
                log_metric("accuracy", sum(a.valid and a.label == gold
                                           for a, gold in zip(parsed, label)) / len(parsed))
        return rewards

    label_reward.__name__ = label_reward.__qualname__ = REWARD_FUNCTION_NAME  # TRL logs under it
    return label_reward


def completion_text(completion) -> str:
    """The answer text: a string for plain prompts, the last message for chat-format ones."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


# ---------------------------------------------------------------- data and trainer

def training_dataset(rows: list[dict], tokenizer):
    """The prompt-only dataset GRPOTrainer expects, with the gold `label` column beside it."""
    from datasets import Dataset

    rows = [row for row in rows if row.get("label") is not None]
    if not rows:
        raise ValueError("GRPO needs labelled prompt rows")
    return Dataset.from_dict({"prompt": [trl_prompt(tokenizer, row["prompt"]) for row in rows],
                              "label": [row["label"] for row in rows]})


def trainer_config(settings: GRPOSettings, work_dir: Path, device: str, dtype):
    from trl import GRPOConfig

    return GRPOConfig(
        **common_trainer_args(settings, work_dir, device, dtype),
        learning_rate=settings.learning_rate,
        # TRL counts completions; a step is prompts_per_step whole groups.
        per_device_train_batch_size=settings.completions_per_step // settings.gradient_accumulation,
        gradient_accumulation_steps=settings.gradient_accumulation,
        num_generations=settings.num_generations,
        max_completion_length=settings.max_completion_length,
        temperature=settings.temperature,
        top_p=1.0,
        top_k=0,
        beta=settings.beta,
        max_steps=settings.steps,
        logging_steps=1,
        use_vllm=False,
    )


def build_trainer(model_location: str, rows: list[dict], task: Task, work_dir,
                  settings: GRPOSettings, seed_adapter: str | None = None,
                  reward_scheme: RewardScheme | None = None):
    """A TRL GRPOTrainer with a fresh LoRA adapter on the base model (with the SFT adapter
    `seed_adapter` merged into it, when given), checkpointing into `work_dir`."""
    from transformers import set_seed

    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    tokenizer = load_tokenizer(model_location)
    dataset = training_dataset(rows, tokenizer)
    if len(dataset) < settings.prompts_per_step:
        raise ValueError(f"{len(dataset)} labelled prompts cannot fill a step of "
                         f"prompts_per_step={settings.prompts_per_step}")
    log.info("GRPO of %s on %s, %d prompts, seeded from %s, device %s, dtype %s, settings %s",
             model_location, task.key, len(dataset), seed_adapter or "the base model",
             device, dtype, asdict(settings))
    set_seed(settings.seed)
    model = load_model(model_location, settings.dtype, device,
                       adapters=[seed_adapter] if seed_adapter else ())
    return resumable_grpo_trainer()(
        model=model,
        reward_funcs=reward_function(task, reward_scheme),
        args=trainer_config(settings, Path(work_dir), device, dtype),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=settings.lora(),
        callbacks=[sealing_callback()],
    )


def resumable_grpo_trainer():
    """GRPOTrainer whose prompt order depends on the seed and the epoch only, so a resumed run
    draws the prompts an uninterrupted one would. TRL's RepeatSampler keeps one generator
    running across epochs and has no `set_epoch`; a resumed Trainer would start it afresh in a
    later epoch. Trainer calls `set_epoch` before each epoch where a sampler has one."""
    from trl import GRPOTrainer

    class ResumableGRPOTrainer(GRPOTrainer):
        def _get_train_sampler(self, dataset=None):
            sampler = super()._get_train_sampler(dataset)
            if sampler.shuffle:
                sampler.set_epoch = lambda epoch: sampler.generator.manual_seed(
                    (sampler.seed or 0) + epoch)
            return sampler

    return ResumableGRPOTrainer


def train_grpo(model_location: str, rows: list[dict], task: Task, adapter_dir, work_dir,
               settings: GRPOSettings, curve_csv, curve_png=None, seed_adapter: str | None = None,
               reward_scheme: RewardScheme | None = None) -> dict:
    """Train a LoRA adapter with GRPO on prompt rows ("prompt" ending in <Judgement>,
    "label") and save it as a PEFT folder in `adapter_dir`. Seeded from SFT, the adapter
    sits on top of `seed_adapter` (load both, in that order).

    Resumes from the newest sealed checkpoint in `work_dir` if there is one.
    Returns a summary: steps, the last step's curve row, prompts, wall seconds, resumed step.
    """
    started = time.monotonic()
    with exclusive_lock(work_dir, "training job"):  # before loading: a second job fails fast
        trainer = build_trainer(model_location, rows, task, work_dir, settings, seed_adapter,
                                reward_scheme)
        fingerprint = run_fingerprint(model_location, rows, settings, task.key, seed_adapter,
                                      reward_scheme or RewardScheme())
        resumed_from_step = train_and_save_adapter(trainer, work_dir, adapter_dir, fingerprint,
                                                   log)

    # A value the trainer did not log (kl when beta is 0, accuracy for STS-B) is left empty.
    curve = save_trainer_curve(trainer, CURVE_SOURCES, "reward", curve_csv, curve_png,
                               f"GRPO on {task.key}, {Path(model_location).name}", CURVE_PANELS)
    summary = {
        "steps": trainer.state.global_step,
        "final": curve[-1] if curve else {},
        "prompts": len(trainer.train_dataset),
        "seed_adapter": str(seed_adapter) if seed_adapter else None,
        "wall_seconds": round(time.monotonic() - started, 1),
        "resumed_from_step": resumed_from_step,
    }
    log.info("GRPO done: %s", summary)
    return summary

