"""What the trainers share: LoRA settings, config checking, training curves (SFT, GRPO, PPO),
and TRL Trainer runs whose checkpoints are sealed and resumed (SFT, GRPO).

A TRL run can be killed at any moment and rerun: checkpoints go to a work folder and are
sealed (checksummed) right after the Trainer writes them; a rerun resumes from the newest
sealed one. PPO runs its own loop and seals its own checkpoints (`ppo.save_checkpoint`).
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import shutil
from dataclasses import asdict
from pathlib import Path

from . import checkpoints
from .files import atomic_dir, atomic_path, read_json, write_json

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- TRL Trainer runs

def common_trainer_args(settings, work_dir: Path, device: str, dtype) -> dict:
    """The TrainingArguments SFT and GRPO share: checkpoints, seeds and hardware."""
    import torch

    on_cpu = device == "cpu"
    return dict(
        output_dir=str(work_dir),
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        logging_strategy="steps",
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


RUN_FILE = "run.json"


def run_fingerprint(model_location: str, rows: list[dict], settings, task: str | None = None,
                    seed_adapter=None, reward=None) -> str:
    """A digest of everything that decides what a training run produces: the model, the
    training rows, the settings (a dataclass), and for RL the task, the seed adapter (by its
    sealed checksums) and the reward scheme (a dataclass). Checkpoints are only resumed by
    the same run."""
    inputs = {"model": model_location, "rows": rows, "settings": asdict(settings),
              "task": task, "reward": asdict(reward) if reward is not None else None,
              "seed_adapter": checkpoints.identity(seed_adapter) if seed_adapter else None}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def resume_point(work_dir: Path, fingerprint: str) -> Path | None:
    """The newest sound checkpoint of this very run (`fingerprint`), or None.

    Checkpoints of another run (settings, data, model or seed adapter changed since, which
    is why Snakemake reruns the job) are removed: resuming from them would silently mix two
    runs. Damaged ones after the newest sound one are removed too: training rewrites them,
    and left in place they would count as the newest in the Trainer's checkpoint rotation,
    which could then delete the sound one while the next is still unsealed."""
    work_dir.mkdir(parents=True, exist_ok=True)
    run_file = work_dir / RUN_FILE
    try:
        same_run = read_json(run_file).get("fingerprint") == fingerprint
    except (OSError, ValueError, AttributeError):  # no run file, or an unreadable one
        same_run = False
    if not same_run:
        stale = checkpoints.checkpoints_newest_first(work_dir)
        if stale:
            log.warning("%s holds checkpoints of a run with other settings or inputs; "
                        "removing them and training from the start", work_dir)
        for folder in stale:
            shutil.rmtree(folder)
        write_json(run_file, {"fingerprint": fingerprint})
    found = checkpoints.latest_valid(work_dir)  # logs a warning for each damaged checkpoint
    for folder in checkpoints.checkpoints_newest_first(work_dir):
        if folder == found:
            break
        log.warning("removing damaged checkpoint %s; training will write it again", folder)
        shutil.rmtree(folder)
    return found


def train_and_save_adapter(trainer, work_dir, adapter_dir, fingerprint: str,
                           method_log: logging.Logger) -> int | None:
    """Train from the newest sealed checkpoint of this run (`fingerprint`) in `work_dir`, or
    from the start, then save the adapter as a PEFT folder in `adapter_dir`. Returns the
    step resumed from, or None. Where it starts is logged to `method_log`. The caller holds
    `work_dir`'s lock (`files.exclusive_lock`), taken before it loads the model."""
    resume_from = resume_point(Path(work_dir), fingerprint)
    if resume_from is None:
        method_log.info("no sealed checkpoint in %s; training from the start", work_dir)
    else:
        method_log.info("resuming from %s at step %d",
                        resume_from, checkpoints.step_of(resume_from))
    if resume_from is not None and restore_if_finished(trainer, resume_from):
        method_log.info("%s is the end of training; saving its adapter", resume_from)
    else:
        # An explicit path (or None) keeps the Trainer from choosing a checkpoint itself.
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    save_adapter(trainer.model, adapter_dir)
    return checkpoints.step_of(resume_from) if resume_from else None


def restore_if_finished(trainer, checkpoint: Path) -> bool:
    """If `checkpoint` is the last step of training (a job killed after saving it, before
    saving the adapter), load its weights and state into `trainer` and return True.

    The Trainer cannot resume from there: it would train one step more than an
    uninterrupted run (transformers resumes into the next batch before it checks
    max_steps), so the adapter and curve would differ."""
    from peft.utils import load_peft_weights, set_peft_model_state_dict
    from transformers import TrainerState

    state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    if not state.max_steps or state.global_step < state.max_steps:
        return False
    device = next(trainer.model.parameters()).device
    set_peft_model_state_dict(trainer.model, load_peft_weights(str(checkpoint), device=str(device)))
    trainer.state = state
    return True


def save_adapter(model, adapter_dir) -> None:
    """Save a PEFT adapter folder atomically and sealed (checksummed), so that loading it
    later can tell a damaged adapter from a sound one (`checkpoints.check_adapter`)."""
    with atomic_dir(adapter_dir) as tmp:
        model.save_pretrained(tmp)
        checkpoints.seal(tmp)


# ---------------------------------------------------------------- curves

def curve_from_log_history(log_history: list[dict], sources: dict[str, str],
                           logged_with: str) -> list[dict]:
    """One row per step the Trainer logged (the entries holding `logged_with`; a resumed run's
    history includes the earlier steps): column -> the value logged under `sources[column]`,
    None where that step has none."""
    return [{column: entry.get(key) for column, key in sources.items()}
            for entry in log_history if logged_with in entry]


def save_trainer_curve(trainer, sources: dict[str, str], logged_with: str, curve_csv,
                       curve_png, title: str, panels) -> list[dict]:
    """A TRL run's curve (`curve_from_log_history`) written as CSV, and as a PNG if asked."""
    curve = curve_from_log_history(trainer.state.log_history, sources, logged_with)
    write_curve_csv(curve, curve_csv, tuple(sources))
    if curve_png is not None:
        plot_curves(curve, curve_png, title, panels)
    return curve


def write_curve_csv(curve: list[dict], path, columns) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(curve)


def plot_curves(curve: list[dict], path, title: str, panels) -> None:
    """A PNG of the curve against its `step` column, one panel per tuple of column names in
    `panels`. Values of None are left out; a column whose `<name>_std` is in the curve is
    shaded ± that standard deviation."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    columns = math.ceil(math.sqrt(len(panels)))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(5 * columns, 3 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title)
    all_axes = list(figure.subplots(rows, columns, squeeze=False).flat)
    for axes, names in zip(all_axes, panels):
        for name in names:
            logged = [row for row in curve if row[name] is not None]
            if not logged:
                continue
            steps = [row["step"] for row in logged]
            axes.plot(steps, [row[name] for row in logged], label=name)
            spread = f"{name}_std"
            if spread in logged[0]:
                deviations = [row[spread] or 0.0 for row in logged]
                axes.fill_between(steps, [row[name] - d for row, d in zip(logged, deviations)],
                                  [row[name] + d for row, d in zip(logged, deviations)], alpha=0.2)
        axes.set_xlabel("step")
        if axes.lines:
            axes.legend()
    for unused in all_axes[len(panels):]:
        unused.remove()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
