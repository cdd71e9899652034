"""Every training method's settings, in one torch-free layer: each setting's name, type,
default and allowed values are written here once. The config schema checks the config's
shape; the planner builds these at parse time (a bad value fails before any job runs); the
trainers and the benchmark read them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

DTYPES = ("auto", "float32", "bfloat16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class LoraSettings:
    """The paper's LoRA (see models.lora_config). Every method's settings inherit these flat
    `lora_*` keys, so a config spells LoRA the same way for SFT, PPO and GRPO."""
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_rslora: bool = True
    lora_bias: str = "lora_only"
    lora_target_modules: str | list[str] | None = "all-linear"  # None: PEFT's per model

    def lora(self):
        from .models import lora_config  # torch: only where a trainer builds its adapter

        return lora_config(r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout,
                           rslora=self.lora_rslora, bias=self.lora_bias,
                           target_modules=self.lora_target_modules)


def settings_from_config(cls, config: dict | None, section: str):
    """`cls` built from a config mapping (`section` names it in errors); a misspelt key is an
    error, not a silently kept default."""
    config = config or {}
    known = {field.name for field in fields(cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise TypeError(f"unknown {section} setting(s): {', '.join(unknown)}; "
                        f"known settings are {', '.join(sorted(known))}")
    return cls(**config)


def check_hardware(settings) -> None:
    if settings.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, not {settings.dtype!r}")
    if settings.device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, not {settings.device!r}")


def check_trainer_settings(settings) -> None:
    """The checks SFT and GRPO settings share: both run on TRL's Trainer."""
    check_hardware(settings)
    if settings.save_total_limit < 2:
        raise ValueError("save_total_limit must be at least 2, or a kill while saving "
                         "could leave no sealed checkpoint")


# ---------------------------------------------------------------- SFT

@dataclass
class SFTSettings(LoraSettings):  # lora_* fields: the paper's LoRA
    # Optimisation.
    learning_rate: float = 2e-4
    batch_size: int = 8
    gradient_accumulation: int = 1
    epochs: float = 1.0
    max_steps: int = -1  # a cap on optimizer steps; -1 trains for `epochs`
    max_examples: int | None = None  # a seeded subsample of the training rows
    max_length: int = 1024  # tokens per prompt+completion; longer ones are cut from the end
    packing: bool = False  # pack examples into max_length windows (the paper's 1024-token packing)
    lr_scheduler: str = "linear"  # "constant": the paper's effective schedule (see docs)
    # Padded tokens per micro-batch (at least one row): caps the activations' memory; the
    # micro-batches of a step add up to the same gradient as the whole batch. None: no cap.
    micro_batch_tokens: int | None = None
    dev_curve_every: int = 0  # steps between dev scores on the curve; 0: none
    dev_curve_examples: int | None = None  # a seeded subsample of the dev rows given; None: all
    seed: int = 0
    # Checkpoints and logging.
    save_steps: int = 100
    save_total_limit: int = 2  # >= 2: the previous sealed checkpoint survives while the next is written
    logging_steps: int = 1
    # Hardware.
    dtype: str = "auto"
    device: str = "auto"

    def __post_init__(self):
        check_trainer_settings(self)
        if any(value is not None and value < 1
               for value in (self.micro_batch_tokens, self.dev_curve_examples)) or \
                self.dev_curve_every < 0:
            raise ValueError("micro_batch_tokens and dev_curve_examples must be positive (or "
                             "null) and dev_curve_every >= 0")

    @classmethod
    def from_config(cls, config: dict) -> "SFTSettings":
        return settings_from_config(cls, config, "sft")


# Keys of a trainer's section that the planner reads and the trainer never sees: where RL
# starts, which tasks' SFT curves score the dev split (the rule gives them dev rows), and
# the per-task budgets (the planner hands each task's job its own max_examples).
PLANNER_KEYS = ("seed_from", "dev_curve_tasks", "max_examples_by_task")

# The multi-task settings: how tasks are mixed, not how the trainer trains.
MIXING_KEYS = ("mixing", "cap_per_task", "lines_per_task")
MIXING_RULES = ("upsample", "proportional", "repeat")


def split_mixing(section: dict) -> tuple[dict, dict]:
    """A method's settings as (what its trainer takes, how its tasks are mixed)."""
    trainer = {key: value for key, value in section.items() if key not in MIXING_KEYS}
    mixing = {key: value for key, value in section.items() if key in MIXING_KEYS}
    return trainer, mixing


# ---------------------------------------------------------------- PPO

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
    # The budget: a fixed number of steps, or (steps: null) passes over the train rows,
    # each pass a fresh shuffle cut into steps of prompts_per_step (the last one shorter).
    steps: int | None = 100
    passes: float | None = None
    mini_batch_size: int = 4
    gradient_accumulation: int = 1  # mini-batches per optimizer step
    ppo_epochs: int = 3
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
    max_grad_norm: float | None = 1.0  # null: no gradient clipping
    ratio_threshold: float | None = 10.0  # skip a mini-batch whose mean ratio exceeds it
    whiten_advantages: bool = True
    # TRL 0.11's optional reward processing and early stop, all off by default:
    score_scaling: bool = False  # divide task rewards by their running standard deviation
    score_norm: bool = False  # ... and subtract their running mean first (needs scaling)
    score_clip: float | None = None  # clip task rewards to ±score_clip
    whiten_rewards: bool = False  # whiten per-token rewards (mean kept) before GAE
    target_kl: float | None = None  # stop the PPO epochs once policy KL > 1.5 · target_kl
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
        check_hardware(settings)
        if settings.optimizer not in ("adafactor", "adamw"):
            raise ValueError(f"ppo.optimizer must be adafactor or adamw, "
                             f"not {settings.optimizer!r}")
        if not 1 <= settings.response_length_min <= settings.response_length_max:
            raise ValueError("ppo needs 1 <= response_length_min <= response_length_max")
        if (settings.steps is None) == (settings.passes is None):
            raise ValueError("ppo needs exactly one budget: steps (a number of steps) or "
                             "passes (over the train split); set the other to null")
        if settings.score_norm and not settings.score_scaling:
            raise ValueError("ppo.score_norm needs ppo.score_scaling: true")
        return settings

    def total_steps(self, rows: int) -> int:
        """The steps of the budget: `steps`, or `passes` over `rows` prompt rows."""
        if self.steps is not None:
            return self.steps
        return math.ceil(self.passes * steps_per_pass(rows, self.prompts_per_step))


def steps_per_pass(rows: int, prompts_per_step: int) -> int:
    return math.ceil(rows / prompts_per_step)


# ---------------------------------------------------------------- GRPO

@dataclass
class GRPOSettings(LoraSettings):  # lora_* fields: the paper's LoRA, as in SFT
    # Optimisation.
    learning_rate: float = 1e-5
    prompts_per_step: int = 8  # prompts per optimizer step; each gets num_generations answers
    num_generations: int = 4  # the group size (at least 2)
    gradient_accumulation: int = 1  # micro-batches per step; must divide prompts × generations
    steps: int = 100  # optimizer steps
    # Sampling and the objective.
    max_completion_length: int = 16
    temperature: float = 1.0
    beta: float = 0.04  # KL coefficient (TRL's own default is 0.0: no KL term)
    seed: int = 0
    # Checkpoints and logging.
    save_steps: int = 50
    save_total_limit: int = 2  # >= 2: the previous sealed checkpoint survives while the next is written
    # Hardware.
    dtype: str = "auto"
    device: str = "auto"

    def __post_init__(self):
        check_trainer_settings(self)
        if self.num_generations < 2:
            raise ValueError("GRPO needs num_generations >= 2: advantages are relative to the group")
        if self.prompts_per_step < 1 or self.steps < 1:
            raise ValueError("prompts_per_step and steps must be at least 1")
        if self.gradient_accumulation < 1 or self.completions_per_step % self.gradient_accumulation:
            raise ValueError(f"gradient_accumulation ({self.gradient_accumulation}) must divide "
                             f"prompts_per_step × num_generations ({self.completions_per_step})")

    @property
    def completions_per_step(self) -> int:
        return self.prompts_per_step * self.num_generations

    @classmethod
    def from_config(cls, config: dict) -> "GRPOSettings":
        return settings_from_config(cls, config, "grpo")
