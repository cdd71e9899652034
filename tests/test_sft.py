"""Tests of rlnlu.sft on a tiny random Llama (tests/conftest.py): the adapter learns, only the
answer carries loss, a killed run resumes to the same weights, damaged checkpoints are
skipped, and multi-task mixing is sized and seeded as documented."""
from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlnlu import checkpoints, prompts
from rlnlu.sampling import mix_tasks, stratified_order
from rlnlu.sft import SFTSettings, build_trainer, first_token_accuracy, train_sft

WORKFLOW = Path(__file__).resolve().parents[1] / "workflow"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
WORDS = ["cat", "dog", "mat", "man", "plays", "sat", "the cat sat on the mat", "someone"]


def prompt_rows(n: int) -> list[dict]:
    """Rows shaped like prompts.render_split's, with prompts of varying length."""
    return [{"idx": i, "label": i % 2,
             "prompt": ("Human: Is the sentence grammatical? Allowed answers: Yes, No.\n\n"
                        f"Sentence: {' '.join(WORDS[:1 + i % len(WORDS)])}\n\n"
                        "Assistant: <Judgement>"),
             "completion": ("Yes" if i % 2 else "No") + "</Judgement>"}
            for i in range(n)]


def settings(**overrides) -> SFTSettings:
    base = dict(batch_size=2, max_steps=6, save_steps=2, learning_rate=1e-3, max_length=128,
                seed=7, device="cpu")
    return SFTSettings(**{**base, **overrides})


def adapter_tensors(adapter_dir) -> dict[str, torch.Tensor]:
    return load_file(Path(adapter_dir) / ADAPTER_WEIGHTS)


def assert_same_tensors(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-6, msg=name)


def read_curve(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# 8 rows in batches of 2 give 4 steps an epoch, so 6 steps cross into a second epoch, and
# the checkpoint at step 2 sits mid-epoch.
ROWS = prompt_rows(8)


@pytest.fixture(scope="module")
def reference_run(tiny_model_dir, tmp_path_factory):
    """One uninterrupted 6-step run; its checkpoints and adapter are the yardstick."""
    out = tmp_path_factory.mktemp("reference")
    summary = train_sft(tiny_model_dir, ROWS, out / "adapter", out / "work", settings(),
                        out / "curve.csv", out / "curve.png")
    return out, summary


def test_settings_from_config_names_every_unknown_key():
    assert SFTSettings.from_config({"learning_rate": 1e-4, "epochs": 2}).epochs == 2
    with pytest.raises(TypeError, match="batchsize.*lr|lr.*batchsize"):
        SFTSettings.from_config({"lr": 1e-4, "batchsize": 4, "epochs": 2})
    with pytest.raises(ValueError, match="dtype"):
        SFTSettings.from_config({"dtype": "fp16"})


def test_training_moves_lora_weights_and_writes_a_loadable_adapter(tiny_model_dir, reference_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, summary = reference_run
    assert summary["steps"] == 6 and summary["examples"] == 8
    assert summary["resumed_from_step"] is None

    untrained = build_trainer(tiny_model_dir, ROWS, out / "unused", settings()).model
    before = {n: p.detach().clone() for n, p in untrained.named_parameters() if "lora_B" in n}
    assert before and all(torch.count_nonzero(b) == 0 for b in before.values())

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trained = PeftModel.from_pretrained(base, out / "adapter")
    after = {n: p for n, p in trained.named_parameters() if "lora_B" in n}
    assert after.keys() == before.keys()
    assert all(torch.count_nonzero(b) > 0 for b in after.values())

    curve = read_curve(out / "curve.csv")
    assert [int(row["step"]) for row in curve] == [1, 2, 3, 4, 5, 6]
    assert float(curve[-1]["loss"]) == pytest.approx(summary["final_train_loss"])
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_loss_falls_on_a_repeated_batch(tiny_model_dir, tmp_path):
    rows = prompt_rows(2)  # one batch, seen at every step
    train_sft(tiny_model_dir, rows, tmp_path / "adapter", tmp_path / "work",
              settings(max_steps=8, save_steps=100, learning_rate=1e-2, lora_dropout=0.0),
              tmp_path / "curve.csv")
    losses = [float(row["loss"]) for row in read_curve(tmp_path / "curve.csv")]
    assert len(losses) == 8
    assert losses[-1] < 0.5 * losses[0], losses


def test_only_completion_tokens_and_eos_carry_loss(tiny_model_dir, tmp_path):
    from rlnlu.models import load_tokenizer

    rows = prompt_rows(3)
    trainer = build_trainer(tiny_model_dir, rows, tmp_path / "work", settings())
    tokenizer = load_tokenizer(tiny_model_dir)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    for row, input_ids, labels in zip(rows, batch["input_ids"], batch["labels"]):
        prompt_ids = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        answer_ids = answer_ids + [tokenizer.eos_token_id]
        end = len(prompt_ids) + len(answer_ids)
        assert input_ids[:end].tolist() == prompt_ids + answer_ids
        assert (labels[:len(prompt_ids)] == -100).all()
        assert labels[len(prompt_ids):end].tolist() == answer_ids  # incl. "</Judgement>" and EOS
        assert (labels[end:] == -100).all()  # padding
    assert (batch["labels"] == -100).any(dim=1).all()


@pytest.fixture(scope="module")
def paper_standins(tmp_path_factory):
    """The paper's three architectures as tiny random stand-ins (conftest.py)."""
    # Imported here: the kill test's job process imports this module without tests/ on its path.
    from conftest import TINY_SENTENCES, write_paper_standins

    return write_paper_standins(tmp_path_factory.mktemp("standins"), [*TINY_SENTENCES, prompts.SYSTEM])


@pytest.mark.parametrize("architecture", ["tiny", "llama2-7b-chat", "qwen2.5-7b-instruct", "mpt-7b-chat"])
def test_a_step_in_micro_batches_has_the_whole_batchs_loss_and_gradient(
        architecture, tiny_model_dir, paper_standins, tmp_path):
    """The step runs the LM head only at completion positions, encodes the prompts' shared
    opening once and splits the batch by tokens; its loss and gradient must still be the
    plain mean over the batch's completion tokens."""
    rows = [{**row, "prompt": f"{prompts.SYSTEM}\n\n{row['prompt']}"} for row in prompt_rows(6)]
    model_dir = tiny_model_dir if architecture == "tiny" else paper_standins[architecture]
    trainer = build_trainer(model_dir, rows, tmp_path / "work",
                            settings(batch_size=6, lora_dropout=0.0, micro_batch_tokens=40))
    model = trainer.model
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    lora = {n: p for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():  # fresh B matrices are zero, which would leave A without gradient
        for name, p in lora.items():
            if "lora_B" in name:
                p.normal_(0, 0.1)

    expected_loss = model(**batch).loss  # full logits, mean over the completion tokens
    expected_loss.backward()
    expected = {n: p.grad.clone() for n, p in lora.items()}
    model.zero_grad(set_to_none=True)

    loss = trainer.training_step(model, batch)
    assert trainer.micro_batch_tokens * 2 < batch["attention_mask"].numel()  # it did split
    assert trainer.shared_tokens >= 8  # and did reuse the opening
    assert float(loss) == pytest.approx(float(expected_loss.detach()), rel=1e-5)
    for name, p in lora.items():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_rows_are_ordered_so_that_every_batch_holds_both_answers():
    rows = [{"idx": i, "completion": "Yes" if i < 20 else "No"} for i in range(30)]
    ordered = stratified_order(rows, seed=0)
    assert sorted(r["idx"] for r in ordered) == list(range(30))
    assert stratified_order(rows, seed=0) == ordered and stratified_order(rows, seed=1) != ordered
    for start in range(0, 30 - 3):  # one "No" in three: any four consecutive rows hold both
        assert {r["completion"] for r in ordered[start:start + 4]} == {"Yes", "No"}


def test_dev_score_is_the_greedy_first_answer_token(tiny_model_dir, random_lora_model):
    """Batched with left padding, the dev score must agree with one-by-one greedy decoding."""
    from rlnlu.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    model = random_lora_model().eval()

    def greedy_first_token(prompt: str) -> int:
        with torch.no_grad():
            return int(model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1].argmax())

    rows = prompt_rows(8)
    for row in rows[::2]:  # half the rows answered as the model would: hits and misses both
        row["completion"] = tokenizer.decode([greedy_first_token(row["prompt"])]) + "</Judgement>"
    hits = [greedy_first_token(row["prompt"]) == tokenizer(row["prompt"] + row["completion"])
            ["input_ids"][len(tokenizer(row["prompt"])["input_ids"])] for row in rows]
    assert 0 < sum(hits) < len(hits)
    for max_tokens, max_rows in ((64, 8), (None, 3)):
        assert first_token_accuracy(model, tokenizer, rows, max_tokens, max_rows) == \
            pytest.approx(sum(hits) / len(hits))


def test_curve_records_the_answer_tokens_loss_and_the_dev_score(tiny_model_dir, tmp_path):
    rows = prompt_rows(2)
    train_sft(tiny_model_dir, rows, tmp_path / "adapter", tmp_path / "work",
              settings(max_steps=6, save_steps=100, learning_rate=1e-2, lora_dropout=0.0,
                       dev_curve_every=4),
              tmp_path / "curve.csv", dev_rows=rows)
    curve = read_curve(tmp_path / "curve.csv")
    assert [row["dev_accuracy"] != "" for row in curve] == [False, False, False, True, False, True]
    assert all(0 <= float(row["label_accuracy"]) <= 1 for row in curve)
    assert float(curve[-1]["label_loss"]) < float(curve[0]["label_loss"])


KILLED_RUN = """
import json, sys, time
from rlnlu import checkpoints
from rlnlu.sft import SFTSettings, train_sft

seal = checkpoints.seal
def seal_then_hang(folder):
    seal(folder)
    time.sleep(600)  # the test kills the job here, after its first sealed checkpoint
checkpoints.seal = seal_then_hang

model, out, config = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
rows = [json.loads(line) for line in open(out + "/rows.jsonl")]
train_sft(model, rows, out + "/adapter", out + "/work", SFTSettings(**config), out + "/curve.csv")
"""


def run_until_first_checkpoint_then_kill(model_dir: str, out: Path, config: dict) -> None:
    (out / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    env = {**os.environ, "PYTHONPATH": str(WORKFLOW), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    job_log = out / "job.log"  # a file, not a pipe: a full pipe would stall the job
    with open(job_log, "wb") as log_file:
        job = subprocess.Popen([sys.executable, "-c", KILLED_RUN, model_dir, str(out), json.dumps(config)],
                               env=env, stdout=log_file, stderr=subprocess.STDOUT)
    sealed = out / "work" / "checkpoint-2" / checkpoints.MANIFEST
    deadline = time.monotonic() + 120
    while not sealed.exists():
        if job.poll() is not None:
            pytest.fail("training job ended before its first checkpoint:\n" + job_log.read_text()[-3000:])
        if time.monotonic() > deadline:
            job.kill()
            job.wait()
            pytest.fail("no sealed checkpoint within 120 s")
        time.sleep(0.1)
    job.send_signal(signal.SIGKILL)
    assert job.wait() == -signal.SIGKILL


def test_killed_run_resumes_to_the_same_adapter(tiny_model_dir, reference_run, tmp_path, caplog):
    reference, _ = reference_run
    run_until_first_checkpoint_then_kill(tiny_model_dir, tmp_path, asdict(settings()))
    assert not (tmp_path / "adapter").exists()
    assert checkpoints.latest_valid(tmp_path / "work").name == "checkpoint-2"

    with caplog.at_level(logging.INFO, logger="rlnlu.sft"):
        summary = train_sft(tiny_model_dir, ROWS, tmp_path / "adapter", tmp_path / "work",
                            settings(), tmp_path / "curve.csv")
    assert f"resuming from {tmp_path / 'work' / 'checkpoint-2'} at step 2" in caplog.text
    assert summary["resumed_from_step"] == 2 and summary["steps"] == 6
    assert_same_tensors(adapter_tensors(tmp_path / "adapter"), adapter_tensors(reference / "adapter"))
    # The curve covers the steps before the kill too, with the same losses.
    assert read_curve(tmp_path / "curve.csv") == read_curve(reference / "curve.csv")


def unseal(folder: Path) -> str:
    (folder / checkpoints.MANIFEST).unlink()
    return "not sealed"


def garble(folder: Path) -> str:
    optimizer = folder / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    return "does not match its checksum"


@pytest.mark.parametrize("damage", [unseal, garble])
def test_damaged_latest_checkpoint_is_skipped_for_an_earlier_one(
        tiny_model_dir, reference_run, tmp_path, caplog, damage):
    reference, _ = reference_run
    shutil.copytree(reference / "work", tmp_path / "work")
    assert sorted(p.name for p in checkpoints.checkpoints_newest_first(tmp_path / "work")) == [
        "checkpoint-4", "checkpoint-6"]
    reason = damage(tmp_path / "work" / "checkpoint-6")

    with caplog.at_level(logging.INFO):
        summary = train_sft(tiny_model_dir, ROWS, tmp_path / "adapter", tmp_path / "work",
                            settings(), tmp_path / "curve.csv")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("checkpoint-6" in w and reason in w for w in warnings), warnings
    assert "at step 4" in caplog.text and summary["resumed_from_step"] == 4
    assert_same_tensors(adapter_tensors(tmp_path / "adapter"), adapter_tensors(reference / "adapter"))
    # Step 6 was trained again and sealed afresh.
    assert checkpoints.problem_with(tmp_path / "work" / "checkpoint-6") is None


def test_changed_settings_train_from_the_start_not_from_the_old_runs_checkpoints(
        tiny_model_dir, reference_run, tmp_path, caplog):
    """Snakemake reruns a cell whose settings changed; the old run's checkpoints are still
    in its work folder (the last one even marks training as finished) and must not be used."""
    reference, _ = reference_run
    shutil.copytree(reference / "work", tmp_path / "work")
    changed = settings(learning_rate=5e-4)
    with caplog.at_level(logging.WARNING):
        summary = train_sft(tiny_model_dir, ROWS, tmp_path / "adapter", tmp_path / "work",
                            changed, tmp_path / "curve.csv")
    assert "other settings or inputs" in caplog.text
    assert summary["resumed_from_step"] is None and summary["steps"] == 6
    train_sft(tiny_model_dir, ROWS, tmp_path / "fresh", tmp_path / "fresh_work", changed,
              tmp_path / "fresh.csv")
    assert_same_tensors(adapter_tensors(tmp_path / "adapter"), adapter_tensors(tmp_path / "fresh"))


def task_rows(task: str, n: int) -> list[dict]:
    return [{"task": task, "idx": i} for i in range(n)]


def test_mix_tasks_upsamples_every_task_to_the_largest():
    rows_by_task = {"rte": task_rows("rte", 2), "sst2": task_rows("sst2", 7), "cola": task_rows("cola", 4)}
    mixed = mix_tasks(rows_by_task, "upsample", seed=3, cap_per_task=None)
    assert Counter(row["task"] for row in mixed) == {"rte": 7, "sst2": 7, "cola": 7}
    for task, rows in rows_by_task.items():  # upsampling adds copies, never loses a row
        assert all(row in mixed for row in rows)
    assert [row["task"] for row in mixed] != sorted(row["task"] for row in mixed)  # shuffled

    assert mix_tasks(rows_by_task, "upsample", seed=3, cap_per_task=None) == mixed
    assert mix_tasks(rows_by_task, "upsample", seed=4, cap_per_task=None) != mixed


def test_mix_tasks_proportional_and_capped():
    rows_by_task = {"rte": task_rows("rte", 2), "sst2": task_rows("sst2", 7)}
    proportional = mix_tasks(rows_by_task, "proportional", seed=0, cap_per_task=None)
    assert sorted(map(json.dumps, proportional)) == sorted(
        json.dumps(row) for rows in rows_by_task.values() for row in rows)

    capped = mix_tasks(rows_by_task, "upsample", seed=0, cap_per_task=5)
    assert Counter(row["task"] for row in capped) == {"rte": 5, "sst2": 5}
    assert len({row["idx"] for row in capped if row["task"] == "sst2"}) == 5  # drawn without replacement
    with pytest.raises(ValueError, match="mixing rule"):
        mix_tasks(rows_by_task, "temperature", seed=0, cap_per_task=None)


def test_mix_tasks_repeat_is_the_papers_whole_copies_up_to_lines_per_task():
    """The paper's sft.py: a task under `lines_per_file` rows is repeated whole
    ceil(lines / rows) times; a larger one is kept as it is."""
    rows_by_task = {"rte": task_rows("rte", 3), "sst2": task_rows("sst2", 12)}
    mixed = mix_tasks(rows_by_task, "repeat", seed=0, lines_per_task=10)
    counts = Counter((row["task"], row["idx"]) for row in mixed)
    assert {idx: counts[("rte", idx)] for idx in range(3)} == {0: 4, 1: 4, 2: 4}  # ceil(10/3)
    assert all(counts[("sst2", idx)] == 1 for idx in range(12))


def test_the_papers_packed_recipe_trains(tiny_model_dir, tmp_path):
    """`sft.packing` (the paper's 1024-token windows) has no per-row attention mask: the step
    is TRL's own, and the run ends with an adapter."""
    summary = train_sft(tiny_model_dir, ROWS, tmp_path / "adapter", tmp_path / "work",
                        settings(max_steps=2, packing=True, lr_scheduler="constant",
                                 micro_batch_tokens=64), tmp_path / "curve.csv")
    assert summary["steps"] == 2
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
