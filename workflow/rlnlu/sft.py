"""LoRA supervised fine-tuning: teach the model to answer `<label word></Judgement>` after a
rendered prompt.

Training uses TRL's `SFTTrainer` on prompt/completion rows. For such data TRL 1.16 appends
the tokenizer's EOS to each completion and builds labels from the completion mask
(`completion_only_loss` defaults to on when the dataset has `prompt` and `completion`
columns), so the loss covers the answer, `</Judgement>` and EOS, never the prompt.

A run can be killed at any moment and rerun: checkpoints go to a work folder and are sealed
(checksummed) right after the Trainer writes them; a rerun resumes from the newest sealed
one. On CPU a resumed run ends with the same adapter weights as an uninterrupted one.
"""
from __future__ import annotations

import csv
import logging
import random
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from . import checkpoints
from .files import atomic_dir, atomic_path
from .models import load_tokenizer, lora_config, resolve_device, resolve_dtype

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16")
DEVICES = ("auto", "cpu", "cuda")
CURVE_COLUMNS = ("step", "loss", "learning_rate", "epoch")


@dataclass
class SFTSettings:
    # The paper's LoRA (see models.lora_config).
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_rslora: bool = True
    lora_bias: str = "lora_only"
    lora_target_modules: str | list[str] = "all-linear"
    # Optimisation.
    learning_rate: float = 2e-4
    batch_size: int = 8
    gradient_accumulation: int = 1
    epochs: float = 1.0
    max_steps: int = -1  # a cap on optimizer steps; -1 trains for `epochs`
    max_examples: int | None = None  # a seeded subsample of the training rows
    max_length: int = 1024  # tokens per prompt+completion; longer ones are cut from the end
    seed: int = 0
    # Checkpoints and logging.
    save_steps: int = 100
    save_total_limit: int = 2  # >= 2: the previous sealed checkpoint survives while the next is written
    logging_steps: int = 1
    # Hardware.
    dtype: str = "auto"
    device: str = "auto"

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, not {self.dtype!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, not {self.device!r}")
        if self.save_total_limit < 2:
            raise ValueError("save_total_limit must be at least 2, or a kill while saving "
                             "could leave no sealed checkpoint")

    @classmethod
    def from_config(cls, config: dict) -> "SFTSettings":
        """Build settings from a config mapping; a misspelt key is an error, not a default."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise TypeError(f"unknown SFT setting(s): {', '.join(unknown)}; "
                            f"known settings are {', '.join(sorted(known))}")
        return cls(**config)

    def lora(self):
        return lora_config(r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout,
                           rslora=self.lora_rslora, bias=self.lora_bias,
                           target_modules=self.lora_target_modules)


def mix_tasks(rows_by_task: dict[str, list[dict]], rule: str, seed: int,
              cap_per_task: int | None = None) -> list[dict]:
    """Training rows for one multi-task adapter, shuffled with `seed`.

    `cap_per_task` first takes a seeded subsample of each larger task. Then "upsample" draws
    every smaller task with replacement up to the size of the largest (as the paper's code
    does, so small tasks are not drowned out); "proportional" keeps each task as it is.
    """
    if rule not in ("upsample", "proportional"):
        raise ValueError(f"mixing rule must be 'upsample' or 'proportional', not {rule!r}")
    rng = random.Random(seed)
    capped = {task: _subsample(rows, cap_per_task, rng) for task, rows in sorted(rows_by_task.items())}
    target = max((len(rows) for rows in capped.values()), default=0)
    mixed = []
    for rows in capped.values():
        if rule == "upsample" and rows:
            rows = rows + rng.choices(rows, k=target - len(rows))
        mixed.extend(rows)
    rng.shuffle(mixed)
    return mixed


def _subsample(rows: list[dict], limit: int | None, rng: random.Random) -> list[dict]:
    """At most `limit` rows, drawn without replacement, in their original order."""
    if not limit or len(rows) <= limit:
        return list(rows)
    return [rows[i] for i in sorted(rng.sample(range(len(rows)), limit))]


def training_dataset(rows: list[dict]):
    """The prompt/completion dataset TRL expects; other row keys (idx, label, ...) are dropped."""
    from datasets import Dataset

    unlabelled = sum(1 for row in rows if "completion" not in row)
    if unlabelled:
        raise ValueError(f"{unlabelled} of {len(rows)} training rows have no completion (no gold label)")
    if not rows:
        raise ValueError("no training rows")
    return Dataset.from_dict({"prompt": [row["prompt"] for row in rows],
                              "completion": [row["completion"] for row in rows]})


def trainer_config(settings: SFTSettings, work_dir: Path, device: str, dtype):
    import torch
    from trl import SFTConfig

    on_cpu = device == "cpu"
    return SFTConfig(
        output_dir=str(work_dir),
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        max_length=settings.max_length,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        logging_strategy="steps",
        logging_steps=settings.logging_steps,
        # The same seed for model init, dropout and the data order, so a resumed run replays
        # the batches an uninterrupted one would see (Trainer skips the ones already trained).
        seed=settings.seed,
        data_seed=settings.seed,
        dataloader_num_workers=0,
        # TRL defaults bf16 and gradient checkpointing on, which fail to build on CPU.
        # (`activation_checkpointing` is transformers 5's name for `gradient_checkpointing`.)
        use_cpu=on_cpu,
        bf16=not on_cpu and dtype == torch.bfloat16,
        activation_checkpointing=not on_cpu,
        report_to="none",
        disable_tqdm=False,  # the progress bar goes to the job's log
    )


def sealing_callback():
    """A Trainer callback that seals each checkpoint just after the Trainer wrote it; a kill
    before that leaves the checkpoint unsealed, and resume ignores it."""
    from transformers import TrainerCallback

    class SealCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            checkpoints.seal(folder)
            log.info("sealed checkpoint %s", folder)

    return SealCheckpoints()


def resume_point(work_dir: Path) -> Path | None:
    """The newest sound checkpoint. Damaged ones after it are removed: training rewrites them,
    and left in place they would count as the newest in the Trainer's checkpoint rotation,
    which could then delete the sound one while the next is still unsealed."""
    found = checkpoints.latest_valid(work_dir)  # logs a warning for each damaged checkpoint
    for folder in checkpoints.checkpoints_newest_first(work_dir):
        if folder == found:
            break
        log.warning("removing damaged checkpoint %s; training will write it again", folder)
        shutil.rmtree(folder)
    return found


def build_trainer(model_location: str, rows: list[dict], work_dir, settings: SFTSettings):
    """A TRL SFTTrainer with a fresh LoRA adapter on the base model, checkpointing into
    `work_dir`; its dataset is already tokenized, with labels on completion tokens only."""
    from transformers import AutoModelForCausalLM, set_seed
    from trl import SFTTrainer

    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    dataset = training_dataset(rows)
    log.info("SFT of %s on %d examples, device %s, dtype %s, settings %s",
             model_location, len(rows), device, dtype, asdict(settings))
    set_seed(settings.seed)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_location, dtype=dtype),
        args=trainer_config(settings, Path(work_dir), device, dtype),
        train_dataset=dataset,
        processing_class=load_tokenizer(model_location),
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
    trainer = build_trainer(model_location, rows, work_dir, settings)

    resume_from = resume_point(Path(work_dir))
    if resume_from is None:
        log.info("no sealed checkpoint in %s; training from the start", work_dir)
    else:
        log.info("resuming from %s at step %d", resume_from, checkpoints.step_of(resume_from))
    # An explicit path (or None) keeps the Trainer from choosing a checkpoint itself.
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    with atomic_dir(adapter_dir) as tmp:
        trainer.model.save_pretrained(tmp)
    curve = loss_curve(trainer.state.log_history)
    write_curve_csv(curve, curve_csv)
    if curve_png is not None:
        plot_curve(curve, curve_png, title=f"SFT loss, {Path(model_location).name}")
    summary = {
        "steps": trainer.state.global_step,
        "final_train_loss": curve[-1]["loss"] if curve else None,
        "examples": len(rows),
        "wall_seconds": round(time.monotonic() - started, 1),
        "resumed_from_step": checkpoints.step_of(resume_from) if resume_from else None,
    }
    log.info("SFT done: %s", summary)
    return summary


def loss_curve(log_history: list[dict]) -> list[dict]:
    """One row per logged training step (a resumed run's history includes the earlier steps)."""
    return [{column: entry.get(column) for column in CURVE_COLUMNS}
            for entry in log_history if "loss" in entry]


def write_curve_csv(curve: list[dict], path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=CURVE_COLUMNS)
        writer.writeheader()
        writer.writerows(curve)


def plot_curve(curve: list[dict], path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([row["step"] for row in curve], [row["loss"] for row in curve])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (completion tokens)")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
