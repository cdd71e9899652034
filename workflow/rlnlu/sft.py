"""LoRA supervised fine-tuning: teach the model to answer `<label word></Judgement>` after a
rendered prompt.

Training uses TRL's `SFTTrainer` on prompt/completion rows. For such data TRL 1.16 appends
the tokenizer's EOS to each completion and builds labels from the completion mask
(`completion_only_loss` defaults to on when the dataset has `prompt` and `completion`
columns), so the loss covers the answer, `</Judgement>` and EOS, never the prompt.

Each step computes exactly TRL's loss (the mean over the batch's completion tokens) more
cheaply: the LM head runs only at the positions that carry loss (a few per row, instead of
every prompt and padding position), and the batch is split into micro-batches of rows of
similar length, at most `micro_batch_tokens` padded tokens each, whose gradients add up to
the batch's (activations, not the weights, set the peak memory). The opening every prompt
shares (the chat template's system turn: about 40% of an SST-2 row) is encoded once per
micro-batch and its keys and values reused by each row, as evaluation does. The rows are
ordered so that every batch holds the answers in their overall proportions (no early run of one
answer), and the curve logs the loss on the answer's first token and how often it is the
top token, since the loss over all completion tokens is mostly format (`</Judgement>`, EOS)
and hides whether the label is learnt. Given dev rows, the curve also records the dev
score every `dev_curve_every` steps: greedy first-token accuracy, the share of dev prompts
whose most likely next token is the gold answer's first token.

A run can be killed at any moment and rerun: checkpoints are sealed and resumed as
`training` describes. On CPU a resumed run ends with the same adapter weights as an
uninterrupted one.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict
from pathlib import Path

from .files import exclusive_lock
from .generation import reusable_opening_length, trl_prompt
from .models import load_tokenizer, resolve_device, resolve_dtype
from .sampling import stratified_order, subsample_rows
from .settings import SFTSettings
from .training import (common_trainer_args, run_fingerprint, save_trainer_curve,
                       sealing_callback, train_and_save_adapter)

log = logging.getLogger(__name__)

# Curve column -> the key SFTTrainer logs it under.
CURVE_SOURCES = {"step": "step", "loss": "loss", "label_loss": "label_loss",
                 "label_accuracy": "label_accuracy", "dev_accuracy": "dev_accuracy",
                 "learning_rate": "learning_rate", "epoch": "epoch"}
CURVE_PANELS = (("loss", "label_loss"), ("label_accuracy", "dev_accuracy"))


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
        # Rows concatenated and cut into max_length windows, as the paper's ConstantLengthDataset
        # does; TRL's default (best-fit) packing needs padding-free attention, which MPT lacks.
        packing_strategy="wrapped",
        lr_scheduler_type=settings.lr_scheduler,
        logging_steps=settings.logging_steps,
        # The rows come in `stratified_order` already; a resumed run replays the same order.
        train_sampling_strategy="sequential",
    )


def length_groups(lengths: list[int], max_tokens: int | None, max_rows: int) -> list[list[int]]:
    """Indices of `lengths` in ascending length, cut into groups of at most `max_rows` whose
    padded size (rows × longest) stays within `max_tokens` (None: no cap); at least one row
    each."""
    groups, current = [], []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        # Ascending, so a group's padded size is its newest row's length times its rows.
        if current and (len(current) == max_rows or (
                max_tokens is not None and (len(current) + 1) * lengths[i] > max_tokens)):
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


def micro_batches(inputs: dict, max_tokens: int | None, shared: int = 0) -> list[dict]:
    """A right-padded batch split into micro-batches of rows of similar length, each at most
    `max_tokens` padded tokens after the `shared` opening (but at least one row) and cut to
    its own longest row."""
    lengths = inputs["attention_mask"].sum(dim=1).tolist()
    chunks = []
    for group in length_groups([n - shared for n in lengths], max_tokens, len(lengths)):
        width = max(lengths[i] for i in group)
        chunks.append({key: inputs[key][group, :width]
                       for key in ("input_ids", "attention_mask", "labels")})
    return chunks


def answer_positions(labels):
    """Where the loss sits: the mask of positions whose next token is a completion token,
    the targets there, and which of those positions predict each row's first answer token."""
    targets = labels[:, 1:] != -100
    first = targets & (targets.cumsum(dim=1) == 1)
    return targets, labels[:, 1:][targets], first[targets]


def shared_opening_length(labels: list[list[int]], input_ids: list[list[int]]) -> int:
    """How many leading prompt tokens (labels -100) every row shares; 0 when too few to pay
    for a forward pass of their own."""
    return reusable_opening_length([ids[:next(i for i, t in enumerate(row) if t != -100)]
                                    for ids, row in zip(input_ids, labels)])


def completion_losses(model, chunk: dict, shared: int = 0):
    """Per-token cross-entropy at the completion positions of a micro-batch (the LM head runs
    only there), the targets, and which of them are each row's first answer token. The first
    `shared` tokens, the same in every row, are encoded once; their keys and values (with
    their gradient) are repeated for each row."""
    import torch.nn.functional as F

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder()
    input_ids, labels, opening = chunk["input_ids"], chunk["labels"], {}
    if shared:
        cache = decoder(input_ids=input_ids[:1, :shared], use_cache=True).past_key_values
        cache.batch_repeat_interleave(len(input_ids))
        input_ids, labels, opening = input_ids[:, shared:], labels[:, shared:], {"cache": cache}
    # The mask still spans the opening; positions continue from the cache's length.
    hidden = decoder(input_ids=input_ids, attention_mask=chunk["attention_mask"],
                     use_cache=bool(shared), **opening).last_hidden_state
    targets, gold, first = answer_positions(labels)
    logits = base.get_output_embeddings()(hidden[:, :-1][targets]).float()
    return F.cross_entropy(logits, gold, reduction="none"), logits.argmax(dim=-1) == gold, first


def first_token_accuracy(model, tokenizer, rows: list[dict], max_tokens: int | None,
                         max_rows: int) -> float:
    """The share of `rows` whose most likely next token after the prompt is the first token
    of the gold completion, tokenized as TRL tokenizes the training rows; scored in groups
    of similar length as `length_groups` cuts them."""
    import torch

    from .generation import needs_special_tokens

    special = needs_special_tokens(tokenizer, rows[0]["prompt"])
    prompts = [tokenizer(r["prompt"], add_special_tokens=special)["input_ids"] for r in rows]
    gold = [tokenizer(r["prompt"] + r["completion"], add_special_tokens=special)["input_ids"][len(p)]
            for r, p in zip(rows, prompts)]
    pad = tokenizer.pad_token_id
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = next(model.parameters()).device
    correct = 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for group in length_groups([len(p) for p in prompts], max_tokens, max_rows):
            width = max(len(prompts[i]) for i in group)
            ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in group],
                               device=device)
            mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i])
                                 for i in group], device=device)
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # left padding: count real tokens
            hidden = base.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=positions,
                                        use_cache=False).last_hidden_state[:, -1]
            top = base.get_output_embeddings()(hidden).argmax(dim=-1).tolist()
            correct += sum(t == gold[i] for t, i in zip(top, group))
    model.train(was_training)
    return correct / len(rows)


def _trainer_class():
    from trl import SFTTrainer

    class CompletionSFTTrainer(SFTTrainer):
        """TRL's SFTTrainer whose step computes the same loss with the LM head only at
        completion positions, in token-capped micro-batches (see the module docstring)."""

        micro_batch_tokens = None
        shared_tokens = 0  # the opening every training prompt shares (shared_opening_length)

        def training_step(self, model, inputs, num_items_in_batch=None):
            import torch

            if "attention_mask" not in inputs:  # packed rows (sft.packing): TRL's own step
                return super().training_step(model, inputs, num_items_in_batch)
            model.train()
            inputs = self._prepare_inputs(inputs)
            total = max(int((inputs["labels"][:, 1:] != -100).sum()), 1)
            step_loss, label_losses, label_hits = 0.0, [], []
            for chunk in micro_batches(inputs, self.micro_batch_tokens, self.shared_tokens):
                with self.compute_loss_context_manager():
                    losses, top1, first = completion_losses(model, chunk, self.shared_tokens)
                    loss = losses.sum() / total
                self.accelerator.backward(loss)
                step_loss += loss.detach()
                label_losses.append(losses.detach()[first])
                label_hits.append(top1[first])
            metrics = self._metrics["train"]  # SFTTrainer.log averages these into the step's log
            metrics["label_loss"].append(torch.cat(label_losses).mean().item())
            metrics["label_accuracy"].append(torch.cat(label_hits).float().mean().item())
            return step_loss

    return CompletionSFTTrainer


def dev_curve_callback(trainer, dev_rows: list[dict], every: int):
    """A Trainer callback that adds `dev_accuracy` (first_token_accuracy on `dev_rows`) to the
    step's log every `every` steps and at the last step (before the step is logged)."""
    from transformers import TrainerCallback

    class DevCurve(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % every == 0 or state.global_step == state.max_steps:
                accuracy = first_token_accuracy(trainer.model, trainer.processing_class,
                                                dev_rows, trainer.micro_batch_tokens,
                                                args.per_device_train_batch_size)
                trainer._metrics["train"]["dev_accuracy"].append(accuracy)
                log.info("step %d: dev first-token accuracy %.3f on %d rows",
                         state.global_step, accuracy, len(dev_rows))

    return DevCurve()


def build_trainer(model_location: str, rows: list[dict], work_dir, settings: SFTSettings,
                  dev_rows: list[dict] | None = None):
    """A TRL SFTTrainer with a fresh LoRA adapter on the base model, checkpointing into
    `work_dir`; its dataset is already tokenized, with labels on completion tokens only.
    With `dev_rows` and `settings.dev_curve_every`, it logs the dev score as it trains."""
    from transformers import AutoModelForCausalLM, set_seed

    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    tokenizer = load_tokenizer(model_location)
    dataset = training_dataset(stratified_order(rows, settings.seed), tokenizer)
    log.info("SFT of %s on %d examples, device %s, dtype %s, settings %s",
             model_location, len(rows), device, dtype, asdict(settings))
    set_seed(settings.seed)
    trainer = _trainer_class()(
        model=AutoModelForCausalLM.from_pretrained(model_location, dtype=dtype),
        args=trainer_config(settings, Path(work_dir), device, dtype),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=settings.lora(),
        callbacks=[sealing_callback()],
    )
    trainer.micro_batch_tokens = settings.micro_batch_tokens
    if not settings.packing:
        trainer.shared_tokens = shared_opening_length(trainer.train_dataset["labels"],
                                                      trainer.train_dataset["input_ids"])
        log.info("the opening all %d training prompts share: %d tokens, encoded once per "
                 "micro-batch", len(trainer.train_dataset), trainer.shared_tokens)
    if dev_rows and settings.dev_curve_every:
        trainer.add_callback(dev_curve_callback(trainer, dev_rows, settings.dev_curve_every))
    dropped = len(dataset) - len(trainer.train_dataset)
    if dropped and not settings.packing:  # packing merges rows: fewer rows is no loss
        log.warning("%d examples dropped: their prompt alone fills max_length=%d",
                    dropped, settings.max_length)
    return trainer


def train_sft(model_location: str, rows: list[dict], adapter_dir, work_dir,
              settings: SFTSettings, curve_csv, curve_png=None,
              dev_rows: list[dict] | None = None) -> dict:
    """Train a LoRA adapter on prompt/completion rows and save it as a PEFT folder.

    Resumes from the newest sealed checkpoint in `work_dir` if there is one. `dev_rows`
    (prompt/completion rows of the dev split) only feed the curve's dev score.
    Returns a summary: steps, final training loss, examples, wall seconds, resumed step.
    """
    started = time.monotonic()
    rows = subsample_rows(rows, settings.max_examples, random.Random(settings.seed))
    if dev_rows:
        dev_rows = subsample_rows(dev_rows, settings.dev_curve_examples, random.Random(settings.seed))
    with exclusive_lock(work_dir, "training job"):  # before loading: a second job fails fast
        trainer = build_trainer(model_location, rows, work_dir, settings, dev_rows)
        resumed_from_step = train_and_save_adapter(
            trainer, work_dir, adapter_dir, run_fingerprint(model_location, rows, settings), log)

    curve = save_trainer_curve(trainer, CURVE_SOURCES, "loss", curve_csv, curve_png,
                               f"SFT on completion tokens, {Path(model_location).name}",
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

