"""LoRA supervised fine-tuning: teach the model to answer `<label word></Judgement>` after a
rendered prompt.

Training uses TRL's `SFTTrainer` on prompt/completion rows. For such data TRL 1.16 appends
the tokenizer's EOS to each completion and builds labels from the completion mask
(`completion_only_loss` defaults to on when the dataset has `prompt` and `completion`
columns), so the loss covers the answer, `</Judgement>` and EOS, never the prompt.

A run can be killed at any moment and rerun: checkpoints are sealed and resumed as
`training` describes. On CPU a resumed run ends with the same adapter weights as an
uninterrupted one.
"""
from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .files import exclusive_lock
from .generation import trl_prompt
from .models import load_tokenizer, resolve_device, resolve_dtype
from .training import (LoraSettings, check_trainer_settings, common_trainer_args,
                       curve_from_log_history, plot_curves, run_fingerprint,
                       sealing_callback, settings_from_config, train_and_save_adapter,
                       write_curve_csv)

log = logging.getLogger(__name__)

# Curve column -> the key SFTTrainer logs it under.
CURVE_SOURCES = {"step": "step", "loss": "loss", "learning_rate": "learning_rate", "epoch": "epoch"}
CURVE_COLUMNS = tuple(CURVE_SOURCES)
CURVE_PANELS = (("loss",),)


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

    @classmethod
    def from_config(cls, config: dict) -> "SFTSettings":
        return settings_from_config(cls, config, "sft")


# The multi-task settings: how tasks are mixed, not how the trainer trains.
MIXING_KEYS = ("mixing", "cap_per_task", "lines_per_task")
MIXING_RULES = ("upsample", "proportional", "repeat")


def mix_tasks(rows_by_task: dict[str, list[dict]], rule: str, seed: int,
              cap_per_task: int | None = None, lines_per_task: int = 30000) -> list[dict]:
    """Training rows for one multi-task adapter, shuffled with `seed`.

    `cap_per_task` first takes a seeded subsample of each larger task. Then "upsample" draws
    every smaller task with replacement up to the size of the largest, so small tasks are not
    drowned out; "repeat" is the paper's released rule (its sft.py, `lines_per_file`): a task
    with fewer than `lines_per_task` rows is repeated whole, ceil(lines_per_task / rows)
    times; "proportional" keeps each task as it is.
    """
    if rule not in MIXING_RULES:
        raise ValueError(f"mixing rule must be one of {', '.join(MIXING_RULES)}, not {rule!r}")
    rng = random.Random(seed)
    capped = {task: _subsample(rows, cap_per_task, rng) for task, rows in sorted(rows_by_task.items())}
    target = max((len(rows) for rows in capped.values()), default=0)
    mixed = []
    for rows in capped.values():
        if rule == "upsample" and rows:
            rows = rows + rng.choices(rows, k=target - len(rows))
        elif rule == "repeat" and rows and len(rows) < lines_per_task:
            rows = rows * math.ceil(lines_per_task / len(rows))
        mixed.extend(rows)
    rng.shuffle(mixed)
    return mixed


def _subsample(rows: list[dict], limit: int | None, rng: random.Random) -> list[dict]:
    """At most `limit` rows, drawn without replacement, in their original order."""
    if not limit or len(rows) <= limit:
        return list(rows)
    return [rows[i] for i in sorted(rng.sample(range(len(rows)), limit))]


def training_dataset(rows: list[dict], tokenizer):
    """The prompt/completion dataset TRL expects, prompts as TRL must get them to tokenize them
    as evaluation does (`trl_prompt`); other row keys (idx, label, ...) are dropped."""
    from datasets import Dataset

    unlabelled = sum(1 for row in rows if "completion" not in row)
    if unlabelled:
        raise ValueError(f"{unlabelled} of {len(rows)} training rows have no completion (no gold label)")
    if not rows:
        raise ValueError("no training rows")
    # Under the paper's protocol SFT has prompts of its own, worded unlike evaluation's.
    return Dataset.from_dict({"prompt": [trl_prompt(tokenizer, row.get("sft_prompt", row["prompt"]))
                                         for row in rows],
                              "completion": [row["completion"] for row in rows]})


def trainer_config(settings: SFTSettings, work_dir: Path, device: str, dtype):
    from trl import SFTConfig

    return SFTConfig(
        **common_trainer_args(settings, work_dir, device, dtype),
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        max_length=settings.max_length,
        packing=settings.packing,
        lr_scheduler_type=settings.lr_scheduler,
        logging_steps=settings.logging_steps,
    )


def build_trainer(model_location: str, rows: list[dict], work_dir, settings: SFTSettings):
    """A TRL SFTTrainer with a fresh LoRA adapter on the base model, checkpointing into
    `work_dir`; its dataset is already tokenized, with labels on completion tokens only."""
    from transformers import AutoModelForCausalLM, set_seed
    from trl import SFTTrainer

    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    tokenizer = load_tokenizer(model_location)
    dataset = training_dataset(rows, tokenizer)
    log.info("SFT of %s on %d examples, device %s, dtype %s, settings %s",
             model_location, len(rows), device, dtype, asdict(settings))
    set_seed(settings.seed)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_location, dtype=dtype),
        args=trainer_config(settings, Path(work_dir), device, dtype),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=settings.lora(),
        callbacks=[sealing_callback()],
    )
    dropped = len(dataset) - len(trainer.train_dataset)
    if dropped:
        log.warning("%d examples dropped: their prompt alone fills max_length=%d",
                    dropped, settings.max_length)
    return trainer


def train_sft(model_location: str, rows: list[dict], adapter_dir, work_dir,
              settings: SFTSettings, curve_csv, curve_png=None) -> dict:
    """Train a LoRA adapter on prompt/completion rows and save it as a PEFT folder.

    Resumes from the newest sealed checkpoint in `work_dir` if there is one.
    Returns a summary: steps, final training loss, examples, wall seconds, resumed step.
    """
    started = time.monotonic()
    rows = _subsample(rows, settings.max_examples, random.Random(settings.seed))
    with exclusive_lock(work_dir, "training job"):  # before loading: a second job fails fast
        trainer = build_trainer(model_location, rows, work_dir, settings)
        resumed_from_step = train_and_save_adapter(
            trainer, work_dir, adapter_dir, run_fingerprint(model_location, rows, settings), log)

    curve = curve_from_log_history(trainer.state.log_history, CURVE_SOURCES, logged_with="loss")
    write_curve_csv(curve, curve_csv, CURVE_COLUMNS)
    if curve_png is not None:
        plot_curves(curve, curve_png, f"SFT loss on completion tokens, {Path(model_location).name}",
                    CURVE_PANELS)
    summary = {
        "steps": trainer.state.global_step,
        "final_train_loss": curve[-1]["loss"] if curve else None,
        "examples": len(rows),
        "wall_seconds": round(time.monotonic() - started, 1),
        "resumed_from_step": resumed_from_step,
    }
    log.info("SFT done: %s", summary)
    return summary

