"""Faults and bad input: kills, damaged files, bad configs and data, hostile model output,
and concurrent runs. Each case, what the suite does about it and the test that checks it
are listed in docs/faults.md.

Kill points are drawn from a seeded generator (RLNLU_FAULT_SEED, default 2410), so a
failure can be replayed, and other points tried by changing the seed.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import unicodedata
from pathlib import Path
from typing import Callable

import pytest

from rlnlu import checkpoints, cli, files
from rlnlu.answers import CLOSE_TAG, OPEN_TAG, RewardScheme, parse_answer, reward
from rlnlu.tasks import TASKS, get_task
import workflow_runs
from workflow_runs import (SHARED_DATA, job_env, needs_data, snakemake_command, tiny_config,
                           without_timing)

SEED = int(os.environ.get("RLNLU_FAULT_SEED", "2410"))
RTE = get_task("glue", "rte")
pytestmark = pytest.mark.usefixtures("one_thread")  # as the jobs below (OMP_NUM_THREADS=1)


# ================================================================ 1. kill and resume

# A CLI job that SIGKILLs itself at a chosen point: right after checkpoint-N is sealed
# ("sealed"), or halfway through writing checkpoint-N's optimizer state ("writing": the
# checkpoint's other files are there, its manifest is not).
KILLABLE_CLI = r"""
import io, json, os, signal, sys
import torch
torch.set_num_threads(1)
from rlnlu import checkpoints, cli

kind, step = json.loads(sys.argv[1])

def die():
    sys.stdout.flush(); sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)

if kind == "sealed":
    seal = checkpoints.seal
    def seal_then_die(folder):
        seal(folder)
        if os.path.basename(os.fspath(folder)) == f"checkpoint-{step}":
            die()
    checkpoints.seal = seal_then_die
else:
    save = torch.save
    target = os.path.join(f"checkpoint-{step}", "optimizer.pt")
    def save_half_then_die(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and os.fspath(f).endswith(target):
            buffer = io.BytesIO()
            save(obj, buffer, *args, **kwargs)
            with open(f, "wb") as out:
                out.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                out.flush()
                os.fsync(out.fileno())
            die()
        return save(obj, f, *args, **kwargs)
    torch.save = save_half_then_die
sys.exit(cli.main(sys.argv[2:]))
"""


def run_until_killed(argv: list[str], point: tuple[str, int], log_path: Path) -> None:
    with open(log_path, "w") as log_file:
        job = subprocess.run([sys.executable, "-c", KILLABLE_CLI, json.dumps(point), *argv],
                             env=job_env(), stdout=log_file, stderr=subprocess.STDOUT,
                             timeout=300)
    assert job.returncode == -signal.SIGKILL, (
        f"the job was to die at {point}, but exited {job.returncode}:\n"
        + log_path.read_text()[-3000:])


def kill_points(first: tuple[int, ...], last_step: int) -> list[tuple[str, int]]:
    """Seeded kill points for one training job: after a sealed checkpoint, then while
    writing a later one, then after the last checkpoint (before the adapter is saved)."""
    rng = random.Random(f"{SEED}")
    sealed = rng.choice(first)
    writing = rng.randint(sealed + 1, last_step - 1)
    return [("sealed", sealed), ("writing", writing), ("sealed", last_step)]


def expected_resume_steps(points: list[tuple[str, int]]) -> list[int]:
    """Where each rerun resumes: at a sealed checkpoint, or the one before a half-written one."""
    return [step if kind == "sealed" else step - 1 for kind, step in points]


def resumed_at(log_text: str) -> int | None:
    found = re.findall(r"resuming from \S*checkpoint-(\d+) at step (\d+)", log_text)
    return int(found[-1][1]) if found else None


def training_rows(n: int) -> list[dict]:
    """Rendered-prompt rows as `render-prompts` writes them, half Yes and half No."""
    words = ["cat", "dog", "mat", "man", "plays", "sat", "someone", "the cat sat on the mat"]
    return [{"idx": i, "label": "entailment" if i % 2 else "not_entailment",
             "prompt": (f"Human: Premise: {' '.join(words[:1 + i % len(words)])}. "
                        f"Hypothesis: Someone plays.\n\nAssistant: {OPEN_TAG}"),
             "completion": ("Yes" if i % 2 else "No") + CLOSE_TAG} for i in range(n)]


def adapter_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def assert_same_adapter(actual: Path, expected: Path) -> None:
    import torch

    got, want = adapter_tensors(actual), adapter_tensors(expected)
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


SFT_SETTINGS = {"batch_size": 2, "max_steps": 6, "save_steps": 1, "learning_rate": 1e-3,
                "max_length": 128, "device": "cpu"}
PPO_SETTINGS = {"steps": 6, "save_steps": 1, "prompts_per_step": 4, "mini_batch_size": 2,
                "ppo_epochs": 1, "optimizer": "adamw", "learning_rate": 5e-3,
                "response_length_min": 3, "response_length_max": 5, "device": "cpu"}
GRPO_SETTINGS = {"steps": 2, "save_steps": 1, "prompts_per_step": 2, "num_generations": 2,
                 "max_completion_length": 4, "device": "cpu"}


def sft_argv(model: str, train: Path, out: Path) -> list[str]:
    return ["train-sft", "--train", str(train), "--model-location", model,
            "--settings", json.dumps(SFT_SETTINGS), "--seed", "3", "--adapter",
            str(out / "adapter"), "--work-dir", str(out / "work"), "--curve-csv",
            str(out / "curve.csv")]


def ppo_argv(model: str, train: Path, out: Path, algorithm: str = "ppo") -> list[str]:
    settings = PPO_SETTINGS if algorithm == "ppo" else GRPO_SETTINGS
    return ["train-rl", "--algorithm", algorithm, "--train", f"glue/rte={train}",
            "--model-location", model, "--settings", json.dumps(settings),
            "--reward", json.dumps({"correct": 1.0, "wrong": -1.0, "invalid": -1.0}),
            "--seed", "5", "--adapter", str(out / "adapter"), "--work-dir", str(out / "work"),
            "--curve-csv", str(out / "curve.csv")]


def straight_run(model: str, tmp_path: Path, argv_of) -> tuple[Callable, Path, Path]:
    """Training rows and one uninterrupted run in `straight/`, the yardstick. Returns the
    command line for a run writing into a given folder, and the straight and killed folders."""
    train = tmp_path / "train.jsonl"
    files.write_jsonl(train, training_rows(8))
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert cli.main(argv_of(model, train, straight)) == 0
    return (lambda out: argv_of(model, train, out)), straight, killed


def assert_last_rerun_equals_straight(argv: list[str], killed: Path, straight: Path, caplog,
                                      resume_step: int) -> None:
    """The final rerun resumes at `resume_step` and ends with the uninterrupted run's
    adapter, bit for bit, and its curve; the adapter is sealed too."""
    caplog.set_level("INFO")
    assert cli.main(argv) == 0
    assert resumed_at(caplog.text) == resume_step
    assert_same_adapter(killed / "adapter", straight / "adapter")
    assert (killed / "curve.csv").read_text() == (straight / "curve.csv").read_text()
    assert checkpoints.problem_with(killed / "adapter") is None


def test_sft_job_killed_at_seeded_points_resumes_to_the_uninterrupted_adapter(
        tiny_model_dir, tmp_path, caplog):
    argv, straight, killed = straight_run(tiny_model_dir, tmp_path, sft_argv)

    points = kill_points(first=(1, 2), last_step=SFT_SETTINGS["max_steps"])
    for number, (point, resume_step) in enumerate(zip(points, expected_resume_steps(points))):
        log_path = tmp_path / f"killed-{number}.log"
        run_until_killed(argv(killed), point, log_path)
        if number:
            assert resumed_at(log_path.read_text()) == expected_resume_steps(points)[number - 1]
        assert not (killed / "adapter").exists()
        # the previous checkpoint is usable, a half-written one is not
        assert checkpoints.step_of(checkpoints.latest_valid(killed / "work")) == resume_step
        if point[0] == "writing":
            assert checkpoints.problem_with(killed / "work" / f"checkpoint-{point[1]}")

    assert_last_rerun_equals_straight(argv(killed), killed, straight, caplog,
                                      expected_resume_steps(points)[-1])


def test_ppo_job_killed_at_seeded_points_and_a_damaged_checkpoint_resume_to_the_same_adapter(
        tiny_model_dir, tmp_path, caplog):
    argv, straight, killed = straight_run(tiny_model_dir, tmp_path, ppo_argv)

    points = kill_points(first=(2, 3), last_step=PPO_SETTINGS["steps"])
    # After the first kill the newest checkpoint is garbled on disk: the rerun names the
    # file, removes that checkpoint and resumes from the one before it.
    garbled = killed / "work" / f"checkpoint-{points[0][1]}" / "value_head.pt"
    resumes_from = [points[0][1] - 1] + expected_resume_steps(points)[1:]
    for number, point in enumerate(points):
        log_path = tmp_path / f"killed-{number}.log"
        run_until_killed(argv(killed), point, log_path)
        log_text = log_path.read_text()
        if number:
            assert resumed_at(log_text) == resumes_from[number - 1]
        if number == 1:
            assert f"skipping checkpoint {garbled.parent}: {garbled} does not match its " \
                   f"checksum" in log_text
        assert not (killed / "adapter").exists()
        assert checkpoints.step_of(checkpoints.latest_valid(killed / "work")) == \
            expected_resume_steps(points)[number]
        if number == 0:
            data = garbled.read_bytes()
            garbled.write_bytes(data[:100] + bytes(len(data) - 100))

    assert_last_rerun_equals_straight(argv(killed), killed, straight, caplog, resumes_from[-1])


# ---------------------------------------------------------------- through Snakemake

# `python` for the workflow's jobs: the real interpreter, with a hook that can pause one
# job at a chosen point (writing a marker file) so that the test can kill the whole
# Snakemake session there, as a crash or a lost terminal would.
PAUSING_PYTHON = r"""
import json, os, runpy, sys, time
from pathlib import Path
from typing import Callable

args = sys.argv[1:]
if args[:2] != ["-m", "rlnlu"]:
    os.execv(sys.executable, [sys.executable, *args])
spec = json.loads(os.environ.get("RLNLU_FAULT_PAUSE") or "null")

def pause(what):
    Path(spec["marker"]).write_text(f"{os.getpid()} {what}")
    while True:
        time.sleep(1)

if spec and args[2:3] == [spec["command"]]:
    if spec["at"] == "start":
        pause("start")
    elif spec["at"] == "generate":  # before the n-th batch of generation
        from transformers.generation.utils import GenerationMixin
        generate, calls = GenerationMixin.generate, [0]
        def counted(self, *a, **k):
            calls[0] += 1
            if calls[0] == spec["call"]:
                pause(f"generation batch {calls[0]}")
            return generate(self, *a, **k)
        GenerationMixin.generate = counted
    elif spec["at"] == "before-run-record":  # predictions written, run record not yet
        from rlnlu import files
        write_json = files.write_json
        def paused(path, obj):
            if str(path).endswith(".run.json"):
                pause("between the two outputs")
            return write_json(path, obj)
        files.write_json = paused
sys.argv = ["rlnlu", *args[2:]]
try:
    runpy.run_module("rlnlu", run_name="__main__", alter_sys=True)
finally:
    if spec and args[2:3] == [spec["command"]] and spec["at"] == "end":
        pause("done, before Snakemake saw it finish")  # every output is written
"""


@pytest.fixture(scope="module")
def pausing_bin(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pausing-bin")
    (folder / "hook.py").write_text(PAUSING_PYTHON)
    wrapper = folder / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{folder / "hook.py"}" "$@"\n')
    wrapper.chmod(0o755)
    return folder


def snakemake(workdir: Path, config: Path | None, *args: str, **options):
    """On one core, as the jobs' kill points assume; a hung run fails after 10 minutes."""
    return workflow_runs.snakemake(workdir, "--cores", "1", *args, config=config, timeout=600,
                                   **options)


def run_until_paused_then_kill(workdir: Path, config: Path, target: str, pausing_bin: Path,
                               pause: dict) -> str:
    """Run Snakemake until the job named in `pause` reaches its point, then SIGKILL the
    whole session (Snakemake and its jobs). Returns where the job was."""
    marker = workdir / "paused.txt"
    marker.unlink(missing_ok=True)
    env = job_env(RLNLU_FAULT_PAUSE=json.dumps(dict(pause, marker=str(marker))),
                  PATH=f"{pausing_bin}{os.pathsep}{job_env()['PATH']}")
    with open(workdir / "session.log", "w") as log_file:
        command = snakemake_command(workdir, "--cores", "1", "--", target, config=config)
        session = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        deadline = time.monotonic() + 300
        while not marker.exists():
            if session.poll() is not None:
                pytest.fail(f"the session ended before {pause}:\n"
                            + (workdir / "session.log").read_text()[-4000:])
            if time.monotonic() > deadline:
                os.killpg(session.pid, signal.SIGKILL)
                pytest.fail(f"{pause} not reached in 300 s")
            time.sleep(0.05)
        os.killpg(session.pid, signal.SIGKILL)  # Snakemake, the shell and the job
        session.wait()
    return marker.read_text()


CELL = "results/metrics/tiny/glue/rte/zero_shot/seed0.json"
PREDICTIONS = "results/predictions/tiny/glue/rte/zero_shot/seed0.jsonl"


def cell_result(workdir: Path) -> dict:
    return without_timing(json.loads((workdir / CELL).read_text()))


@pytest.fixture(scope="module")
def finished_workflow(tiny_model_dir, tmp_path_factory):
    """An uninterrupted run of one cell: the yardstick the killed and damaged runs meet."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    workdir = tmp_path_factory.mktemp("finished")
    config = tiny_config(workdir, tiny_model_dir)
    snakemake(workdir, config, "--", CELL)
    return workdir, config


@needs_data
def test_evaluation_killed_mid_generation_and_between_its_outputs_restarts_to_the_same_metrics(
        finished_workflow, tiny_model_dir, tmp_path, pausing_bin):
    reference, _ = finished_workflow
    config = tiny_config(tmp_path, tiny_model_dir)
    batches = 8 // 2  # evaluation.max_examples / inference.batch_size
    batch = random.Random(f"{SEED}-evaluate").randint(2, batches)

    where = run_until_paused_then_kill(tmp_path, config, CELL, pausing_bin, {
        "command": "evaluate", "at": "generate", "call": batch})
    assert where.endswith(f"generation batch {batch}")
    assert not (tmp_path / PREDICTIONS).exists()  # atomic: nothing half-written in place
    assert not list((tmp_path / PREDICTIONS).parent.glob("seed0*"))

    # A killed session leaves Snakemake's lock behind: the rerun says so and how to clear it.
    locked = snakemake(tmp_path, config, "--", CELL, check=False)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    snakemake(tmp_path, config, "--unlock")

    # Killed after the predictions file was written, before the run record: the rerun
    # does not trust the finished-looking predictions file but evaluates again ...
    where = run_until_paused_then_kill(tmp_path, config, CELL, pausing_bin, {
        "command": "evaluate", "at": "before-run-record"})
    assert where.endswith("between the two outputs") and (tmp_path / PREDICTIONS).exists()
    snakemake(tmp_path, config, "--unlock")
    # ... and is killed once both outputs are written, before Snakemake saw the job end:
    where = run_until_paused_then_kill(tmp_path, config, CELL, pausing_bin, {
        "command": "evaluate", "at": "end"})
    assert where.endswith("before Snakemake saw it finish")
    snakemake(tmp_path, config, "--unlock")
    # Complete-looking outputs of a job that never finished are refused, by name (plain
    # Snakemake; the project's profiles/default sets rerun-incomplete, which reruns them).
    refused = snakemake(tmp_path, config, "--workflow-profile", "none", "--", CELL, check=False)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "seem to be incomplete" in output
    assert PREDICTIONS in output and "--rerun-incomplete" in output
    assert not (tmp_path / CELL).exists()

    snakemake(tmp_path, config, "--rerun-incomplete", "--", CELL)
    assert cell_result(tmp_path) == cell_result(reference)


# ================================================================ 2. damaged files


@needs_data
def test_damaged_predictions_fail_scoring_by_file_and_line_then_are_recomputed(
        finished_workflow, tmp_path):
    reference, config = finished_workflow
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir, symlinks=True)
    predictions = workdir / PREDICTIONS
    lines = predictions.read_bytes().splitlines(keepends=True)

    # Cut mid-line, then cut at a line boundary (two rows lost, every line whole).
    for damaged, named in [(b"".join(lines[:3]) + lines[3][:len(lines[3]) // 2], ":4: "),
                           (b"".join(lines[:-2]), "rows say 8")]:
        predictions.write_bytes(damaged)  # newer than the metrics: Snakemake rescores
        result = snakemake(workdir, config, "--", CELL, check=False)
        assert result.returncode != 0
        log = (workdir / "logs/score/tiny/glue/rte/zero_shot/seed0.log").read_text()
        assert PREDICTIONS in log and named in log
        assert f"snakemake --forcerun {PREDICTIONS}" in log
        assert not (workdir / CELL).exists()  # no number from a damaged file

    # Doing what the message says makes it again, and the cell comes out as before.
    snakemake(workdir, config, "--forcerun", PREDICTIONS, "--", CELL)
    assert cell_result(workdir) == cell_result(reference)


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "cut mid-line":
        path.write_bytes(data[:len(data) // 2 + 1])
    elif how == "cut at a line end":
        path.write_bytes(data[:-1])  # every row whole, the final newline gone
    elif how == "garbled bytes":
        path.write_bytes(data[:20] + b"\xff\xfe\x00" + data[23:])
    elif how == "zeroed block":
        path.write_bytes(data[:10] + bytes(len(data) - 10))
    elif how == "emptied":
        path.write_bytes(b"")
    elif how == "not an object":
        path.write_bytes(b"[1, 2]\n" + data)


@pytest.mark.parametrize("how, line", [("cut mid-line", None), ("cut at a line end", 3),
                                       ("garbled bytes", 1), ("zeroed block", 1),
                                       ("emptied", 1), ("not an object", 1)])
def test_damaged_canonical_data_or_prompt_file_is_named_with_its_line(tmp_path, how, line):
    """Every JSON-lines file the suite reads back (canonical data, prompts, predictions)
    goes through files.read_jsonl."""
    path = tmp_path / "resources/data/glue/rte/validation.jsonl"
    files.write_jsonl(path, [{"idx": i, "fields": {"premise": "p" * 30, "hypothesis": "h"},
                              "label": "entailment"} for i in range(3)])
    damage(path, how)
    with pytest.raises(ValueError) as raised:
        files.read_jsonl(path)
    message = str(raised.value)
    assert re.search(rf"{re.escape(str(path))}:{line or '[0-9]+'}: ", message), message
    assert f"snakemake --forcerun {path}" in message


def test_prediction_rows_that_disagree_with_their_generation_or_are_missing_are_refused(tmp_path):
    from rlnlu.evaluation import score

    path = tmp_path / PREDICTIONS
    rows = [{"idx": i, "label": "entailment", "generation": "Yes</Judgement>",
             "prediction": "entailment", "valid": True, "closed": True, "position": i + 1,
             "of": 4} for i in range(4)]
    cases = {
        "altered label": (rows[:1] + [dict(rows[1], prediction="not_entailment")] + rows[2:],
                          ":2: stored prediction 'not_entailment'"),
        "altered validity": (rows[:2] + [dict(rows[2], valid=False)] + rows[3:],
                             ":3: stored prediction"),
        "unknown gold label": (rows[:3] + [dict(rows[3], label="maybe")], ":4: gold label"),
        "a row lost": (rows[:1] + rows[2:], ":2: row 3 of 4 where row 2 of 4 belongs"),
        "rows lost at the end": (rows[:3], ": 3 rows, but its rows say 4"),
        "a field lost": (rows[:1] + [{k: v for k, v in rows[1].items() if k != "closed"}]
                         + rows[2:], ":2: missing closed"),
    }
    assert score(RTE, rows, bootstrap_resamples=0)["examples"] == 4  # sound rows score
    for case, (damaged, named) in cases.items():
        files.write_jsonl(path, damaged)
        with pytest.raises(ValueError) as raised:
            score(RTE, files.read_jsonl(path), bootstrap_resamples=0)
        assert f"{path}{named}" in str(raised.value), case
        assert "--forcerun" in str(raised.value), case


@pytest.mark.parametrize("manifest", [b'{"adapter/x": "ab', b"[1, 2]", b'{"a": 1}', b"{}",
                                      b"\xff\xfe", b""])
def test_a_garbled_checkpoint_manifest_is_a_damaged_checkpoint_not_a_crash(tmp_path, manifest):
    folder = tmp_path / "work" / "checkpoint-4"
    folder.mkdir(parents=True)
    (folder / "optimizer.pt").write_bytes(b"state")
    (folder / checkpoints.MANIFEST).write_bytes(manifest)
    problem = checkpoints.problem_with(folder)
    assert problem and str(folder / checkpoints.MANIFEST) in problem
    assert checkpoints.latest_valid(tmp_path / "work") is None


@pytest.fixture(scope="module")
def sealed_adapter(random_lora_model, tmp_path_factory) -> Path:
    """A LoRA adapter saved as the training rules save theirs (sealed)."""
    from rlnlu.training import save_adapter

    folder = tmp_path_factory.mktemp("adapters") / "sft"
    save_adapter(random_lora_model(), folder)
    return folder


ADAPTER_DAMAGE = {
    "weights cut short": ("adapter_model.safetensors", lambda b: b[:len(b) // 2]),
    "weights garbled, same size": ("adapter_model.safetensors", lambda b: b[:-64] + bytes(64)),
    "config cut short": ("adapter_config.json", lambda b: b[:len(b) // 2]),
}


def damaged_copy(adapter: Path, tmp_path: Path, case: str) -> Path:
    name, change = ADAPTER_DAMAGE[case]
    copy = tmp_path / "adapters" / "sft"
    shutil.copytree(adapter, copy)
    (copy / name).write_bytes(change((copy / name).read_bytes()))
    return copy


@pytest.mark.parametrize("case", list(ADAPTER_DAMAGE))
def test_damaged_sft_adapter_is_named_when_ppo_starts_from_it(sealed_adapter, tiny_model_dir,
                                                              tmp_path, case):
    from rlnlu import ppo

    damaged = damaged_copy(sealed_adapter, tmp_path, case)
    settings = ppo.PPOSettings.from_config({"device": "cpu"})
    with pytest.raises(ValueError, match=f"adapter folder {re.escape(str(damaged))} is damaged"):
        ppo.build_policy(tiny_model_dir, settings, seed_adapter=str(damaged))
    ppo.build_policy(tiny_model_dir, settings, seed_adapter=str(sealed_adapter))  # sound: loads


@pytest.mark.parametrize("case", list(ADAPTER_DAMAGE))
def test_damaged_adapter_is_named_when_evaluation_loads_it(sealed_adapter, tiny_model_dir,
                                                            tmp_path, case):
    from rlnlu.models import load_model

    damaged = damaged_copy(sealed_adapter, tmp_path, case)
    with pytest.raises(ValueError, match=re.escape(str(damaged))):
        load_model(tiny_model_dir, "float32", "cpu", adapters=[str(damaged)])


# ================================================================ 3. configuration

# tests/test_workflow.py checks an unknown method, task and model, a negative and a
# non-numeric SFT setting and a misspelt key; these are the cases it leaves out.
BAD_CONFIGS = {
    "negative ppo setting": ({"methods": ["zero_shot", "sft", "ppo"], "ppo": {"steps": -1}},
                             ["steps", "-1"]),
    "non-numeric ppo setting": ({"methods": ["zero_shot", "sft", "ppo"],
                                 "ppo": {"learning_rate": "fast"}}, ["learning_rate", "fast"]),
    "negative nested kl setting": ({"methods": ["zero_shot", "sft", "ppo"],
                                    "ppo": {"kl": {"target": -2}}}, ["target", "-2"]),
    "misspelt ppo setting": ({"methods": ["zero_shot", "sft", "ppo"], "ppo": {"stepz": 3}},
                             ["stepz", "known settings"]),
    "zero evaluation examples": ({"evaluation": {"max_examples": 0}}, ["max_examples"]),
    "negative seed": ({"seeds": [-1]}, ["seeds", "-1"]),
    "ppo seeded from a disabled sft": ({"methods": ["zero_shot", "ppo"]},
                                       ["ppo is seeded from sft", "add it",
                                        "ppo.seed_from: base"]),
    "missing local data folder": ({"data": {"source": "local", "local_dir": "/no/such/data",
                                            "missing": "fail"}},
                                  ["/no/such/data", "does not exist", "data.local_dir",
                                   "data.source: hub", "data.missing: no_data"]),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_fails_before_any_job_naming_the_key_and_the_fix(tmp_path, tiny_model_dir,
                                                                    case):
    overrides, named = BAD_CONFIGS[case]
    config = tiny_config(tmp_path, tiny_model_dir, **overrides)
    result = snakemake(tmp_path, config, "-n", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    for part in named:
        assert part in output, (part, output[-3000:])
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


def test_missing_local_data_folder_fails_even_when_missing_data_is_allowed(tmp_path,
                                                                           tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir, data={
        "source": "local", "local_dir": "/no/such/data", "missing": "no_data"})
    result = snakemake(tmp_path, config, "-n", check=False)
    assert result.returncode != 0 and "/no/such/data" in result.stdout + result.stderr


def test_hub_data_while_offline_fails_at_its_job_naming_the_dataset_and_the_fix(tmp_path):
    out = tmp_path / "resources/data/glue/rte/validation.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "rlnlu", "prepare-data", "--benchmark", "glue", "--task", "rte",
         "--split", "validation", "--source", "hub", "--out", str(out)],
        env=job_env(HF_HOME=str(tmp_path / "empty-cache")), capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    for part in ("nyu-mll/glue", "glue/rte", "HF_HUB_OFFLINE", "data.source: local",
                 "data.local_dir", "network"):
        assert part in result.stderr, (part, result.stderr)
    assert not out.parent.exists()


def test_hub_model_while_offline_fails_at_its_job_naming_the_model_and_the_fix(tmp_path):
    records = tmp_path / "records.jsonl"
    files.write_jsonl(records, [{"idx": 0, "fields": {"premise": "P.", "hypothesis": "H."},
                                 "label": "entailment"}])
    result = subprocess.run(
        [sys.executable, "-m", "rlnlu", "render-prompts", "--benchmark", "glue", "--task", "rte",
         "--records", str(records), "--model-location", "some-org/not-in-the-cache",
         "--chat-template", "--out", str(tmp_path / "prompts.jsonl")],
        env=job_env(HF_HOME=str(tmp_path / "empty-cache")), capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "some-org/not-in-the-cache" in result.stderr and "model_registry" in result.stderr


# ================================================================ 4. data, end to end


@needs_data
def test_bad_data_fails_in_prepare_data_naming_file_and_line_and_leaves_no_output(
        tmp_path, tiny_model_dir):
    local = tmp_path / "data"
    shutil.copytree(SHARED_DATA / "glue" / "RTE", local / "glue" / "RTE")
    shutil.copytree(SHARED_DATA / "superglue" / "CB", local / "superglue" / "CB")
    dev = local / "glue/RTE/dev.tsv"
    rows = dev.read_text(encoding="utf-8").splitlines(keepends=True)
    dev.write_text("".join(rows[:5] + [rows[3]] + rows[5:]), encoding="utf-8")  # idx again
    val = local / "superglue/CB/val.jsonl"
    lines = val.read_text(encoding="utf-8").splitlines(keepends=True)
    val.write_text("".join(lines[:7] + ["{'premise': 'single quotes are not JSON'}\n"]
                           + lines[7:]), encoding="utf-8")
    config = tiny_config(tmp_path, tiny_model_dir, benchmarks=["glue", "superglue"],
                             tasks={"glue": ["rte"], "superglue": ["cb"]},
                             data={"source": "local", "local_dir": str(local)})
    outputs = ["resources/data/glue/rte/validation.jsonl",
               "resources/data/superglue/cb/validation.jsonl"]
    result = snakemake(tmp_path, config, "--keep-going", "--", *outputs, check=False)
    assert result.returncode != 0
    for output, named in zip(outputs, [f"{dev}:6: duplicate idx", f"{val}:8: not valid JSON"]):
        assert not (tmp_path / output).exists()
        assert not list((tmp_path / output).parent.glob("*.tmp"))  # nor a temporary file
        log = (tmp_path / output.replace("resources/data", "logs/prepare_data")
               .replace(".jsonl", ".log")).read_text()
        assert named in log, log


# ================================================================ 5. model output

# Fragments a generation is made of: the task's own label words (in any case, joined to
# other words, or with look-alike letters), other tasks' words, tags, numbers and noise.
LOOKALIKES = {"e": "\u0435", "o": "\u043e", "a": "\u0430", "s": "\u017f", "i": "\u0131",
              "k": "\u212a", "p": "\u0440", "c": "\u0441", "y": "\u0443", "N": "\u039d",
              "T": "\u0422", "E": "\u0395", "O": "\u039f"}
NOISE = [" ", "  ", "\n", "\t", ".", ",", "!", "?", "'", "\u2019", "-", "_", "/", "\"", ":",
         "\u0301", "\u200b", "\u00a0", "\u3000", "x", "maybe", "not", "the answer is",
         "\ufeff", "\U0001f600", "0", "3.5", "-1", "1.2.3", "\uff13", "\u0663", "5e3", "7",
         "Non", "an", "s", "ing", "one", "two", "Option", "Judgement", "<", ">", "/>", "</",
         "</judgement>", "<Judgement", "</Judgement", "\x00"]


def hostile_generation(rng: random.Random, task) -> str:
    words = [w for t in TASKS for w in t.label_words] + list(task.label_words) * 3
    parts = []
    for _ in range(rng.randint(0, 12)):
        kind = rng.random()
        if kind < 0.35 and words:
            word = rng.choice(words)
            word = rng.choice([word, word.upper(), word.lower(), word.swapcase()])
            if rng.random() < 0.25:  # a look-alike letter
                i = rng.randrange(len(word))
                word = word[:i] + LOOKALIKES.get(word[i], word[i]) + word[i + 1:]
            parts.append(word)
        elif kind < 0.5:
            parts.append(rng.choice([OPEN_TAG, CLOSE_TAG]))
        elif kind < 0.55:
            parts.append("".join(chr(rng.randrange(32, 0x3000)) for _ in range(rng.randint(1, 40))))
        else:
            parts.append(rng.choice(NOISE))
    separator = rng.choice(["", " ", "", "-", "\n"])
    return separator.join(parts)


def letter(char: str) -> bool:
    return char.isalnum() or char == "_" or unicodedata.category(char)[0] == "M"


def words_of(text: str) -> list[tuple[str, int, int]]:
    """The words of `text` with their spans: runs of letters (any script, digits, "_" and
    combining marks), a single hyphen or apostrophe between two letters joining two runs."""
    words, i = [], 0
    while i < len(text):
        if not letter(text[i]):
            i += 1
            continue
        start = i
        while i < len(text) and (letter(text[i]) or (
                text[i] in "-'\u2019" and i + 1 < len(text) and letter(text[i + 1])
                and letter(text[i - 1]))):
            i += 1
        words.append((text[start:i], start, i))
    return words


def words_named(task, text: str) -> set:
    """An independent reading of "names a label word, as a whole word": the label word's
    words in a row among the text's words, separated by whitespace only, compared ignoring
    ASCII case and nothing else."""
    tokens = words_of(text)
    named = set()
    for label, word in zip(task.classes, task.label_words):
        parts = word.split()
        for i in range(len(tokens) - len(parts) + 1):
            window = tokens[i:i + len(parts)]
            if all(t.isascii() and t.lower() == p.lower() for (t, _, _), p in zip(window, parts)) \
                    and all(text[a[2]:b[1]].isspace() for a, b in zip(window, window[1:])):
                named.add(label)
    return named


def numbers_named(text: str) -> list[str]:
    return re.findall(r"[0-9][0-9.]*", text)


def check_generation(task, generation: str) -> None:
    answer = parse_answer(task, generation)  # never raises
    gold = 2.5 if task.is_regression else task.classes[0]
    value = reward(task, answer, gold)
    text = generation.partition(CLOSE_TAG)[0].replace(OPEN_TAG, " ")
    if task.is_regression:
        assert -2.5 <= value <= 2.5
        if answer.valid:  # exactly one number, in ASCII digits, read as written
            found = numbers_named(text)
            assert len(found) == 1, (generation, found)
            leading = float(re.match(r"[0-9]+(?:\.[0-9]+)?", found[0]).group())
            assert answer.label in {min(max(sign * leading, 0.0), 5.0) for sign in (1, -1)}
        return
    scheme = RewardScheme()
    assert value in (scheme.correct, scheme.wrong, scheme.invalid)
    if answer.valid:  # names exactly one label word, and it is the one read
        assert words_named(task, text) == {answer.label}, generation
    else:
        assert value == scheme.invalid


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.key)
def test_hostile_generations_never_crash_and_a_valid_answer_names_exactly_one_label(task):
    rng = random.Random(f"{SEED}-{task.key}")
    for _ in range(400):
        check_generation(task, hostile_generation(rng, task))
    for generation in ["", " \n\t ", CLOSE_TAG, OPEN_TAG * 3, "\x00" * 50,
                       " ".join(task.label_words) + CLOSE_TAG,
                       "".join(rng.choice(NOISE) for _ in range(10_000)),  # ~10k tokens
                       "</Judgement" + (task.label_words or ("3",))[0]]:
        check_generation(task, generation)


@pytest.mark.parametrize("generation, expected", [
    ("Non-entailment</Judgement>", None),  # a label inside a longer, hyphenated word
    ("No-one knows</Judgement>", None),
    ("Yeſ</Judgement>", None),  # long s: re.IGNORECASE alone would read "Yes"
    ("\u212ao</Judgement>", None),
    ("Yes\u0301</Judgement>", None),  # an accent makes it another word
    ("'Yes'</Judgement>", "entailment"),  # quotes are not part of the word
    ("Yes-</Judgement>", "entailment"),
    ("Yes--it is</Judgement>", "entailment"),
])
def test_look_alikes_and_joined_words_are_not_label_words(generation, expected):
    task = get_task("glue", "mnli_m") if "entail" in generation else RTE
    expected = expected if task is RTE else None
    assert parse_answer(task, generation).label == expected
    check_generation(task, generation)


def test_stsb_reads_ascii_digits_only():
    stsb = get_task("glue", "stsb")
    assert parse_answer(stsb, "\uff13</Judgement>").label is None  # fullwidth 3
    assert parse_answer(stsb, "\u0663</Judgement>").label is None  # Arabic-Indic 3
    assert parse_answer(stsb, "3</Judgement>").label == 3.0


def test_input_text_holding_the_close_tag_or_a_label_word_does_not_leak_into_the_answer(
        tiny_model_dir):
    """The parser reads only what the model generated: a prompt whose input says
    `Yes</Judgement>` or a label word changes nothing, in evaluation or in PPO's rollout."""
    from rlnlu import ppo
    from rlnlu.evaluation import predict
    from rlnlu.models import load_model, load_tokenizer
    from rlnlu.prompts import PromptStyle, render_split

    hostile = {"premise": f"He wrote Yes{CLOSE_TAG} No {OPEN_TAG}", "hypothesis": f"No{CLOSE_TAG}"}
    records = [{"idx": 0, "fields": hostile, "label": "entailment"},
               {"idx": 1, "fields": {"premise": "Yes", "hypothesis": "Yes Yes"},
                "label": "entailment"}]
    rows = list(render_split(RTE, records, None, PromptStyle(chat_template=False)))
    assert all(row["prompt"].endswith(OPEN_TAG) for row in rows)
    assert hostile["premise"] in rows[0]["prompt"]

    model, tokenizer = load_model(tiny_model_dir, "float32", "cpu"), load_tokenizer(tiny_model_dir)
    for prediction in predict(RTE, model, tokenizer, rows, batch_size=2, max_new_tokens=6):
        assert hostile["premise"] not in prediction["generation"]
        assert prediction["prediction"] == parse_answer(RTE, prediction["generation"]).label
    settings = ppo.PPOSettings.from_config({"device": "cpu"})
    texts = ppo.rollout(model, tokenizer, [row["prompt"] for row in rows], 6, settings).texts
    assert all(hostile["premise"] not in text and "Premise" not in text for text in texts)


# ================================================================ 6. concurrency


@needs_data
def test_second_workflow_on_the_same_folder_is_refused_by_the_lock(tmp_path, tiny_model_dir,
                                                                   pausing_bin):
    config = tiny_config(tmp_path, tiny_model_dir)
    marker = tmp_path / "paused.txt"
    env = job_env(RLNLU_FAULT_PAUSE=json.dumps({"command": "prepare-data", "at": "start",
                                                "marker": str(marker)}),
                  PATH=f"{pausing_bin}{os.pathsep}{job_env()['PATH']}")
    command = snakemake_command(tmp_path, "--cores", "1", "--", CELL, config=config)
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        second = snakemake(tmp_path, config, "--", CELL, check=False)
        output = second.stdout + second.stderr
        assert second.returncode != 0
        assert "Directory cannot be locked" in output and "no other Snakemake process" in output
        assert first.poll() is None  # the first is untouched
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


CONCURRENT_WRITER = r"""
import json, sys, time
from pathlib import Path
from typing import Callable
from rlnlu import files
target, name, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for round in range(rounds):
    with files.atomic_dir(target) as tmp:
        for part in range(5):  # a model folder: several files, written one by one
            (tmp / f"part{part}.bin").write_bytes(f"{name}-{round}".encode() * 5000)
            time.sleep(0.002)
        (tmp / "config.json").write_text(json.dumps({"writer": name, "round": round}))
    files.write_jsonl(target.parent / "records.jsonl",
                      [{"writer": name, "round": round, "row": i} for i in range(200)])
"""

CONCURRENT_READER = r"""
import json, os, sys, time
from pathlib import Path
from typing import Callable
from rlnlu import files
target, until = Path(sys.argv[1]), time.monotonic() + float(sys.argv[2])
expected = ["config.json"] + [f"part{i}.bin" for i in range(5)]
seen = 0
while time.monotonic() < until:
    try:  # hold the folder itself, wherever a swap moves it
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        continue  # between two swaps the folder may be absent for an instant: fine
    try:
        def read(name):
            with open(name, "rb", opener=lambda p, flags: os.open(p, flags, dir_fd=fd)) as f:
                return f.read()
        names = sorted(os.listdir(fd))
        try:
            config = json.loads(read("config.json"))
            contents = {read(f"part{i}.bin") for i in range(5)}
        except (FileNotFoundError, ValueError):
            config = contents = None
        try:  # still the folder at `target` after reading it: then it was all along
            current = os.stat(target).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
    finally:
        os.close(fd)
    if not current:
        continue  # replaced while being read; the reader of an old folder is not our case
    assert names == expected and config is not None, f"a partial folder: {names}"
    assert contents == {f"{config['writer']}-{config['round']}".encode() * 5000}, "mixed"
    try:
        rows = files.read_jsonl(target.parent / "records.jsonl")
    except FileNotFoundError:
        continue
    assert len(rows) == 200 and len({(r["writer"], r["round"]) for r in rows}) == 1
    seen += 1
print(seen)
"""


def test_cells_writing_the_same_model_folder_and_data_file_at_once_never_mix(tmp_path):
    """As two cells (or two invocations run with --nolock) converting the same model and
    preparing the same data would: every writer succeeds, and a reader only ever sees a
    complete folder from one writer and a complete file from one writer."""
    target = tmp_path / "resources/models/shared"
    run = [sys.executable, "-c"]
    writers = [subprocess.Popen(run + [CONCURRENT_WRITER, str(target), name, "15"],
                                env=job_env(), stderr=subprocess.PIPE, text=True)
               for name in ("a", "b", "c")]
    reader = subprocess.Popen(run + [CONCURRENT_READER, str(target), "4"], env=job_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for writer in writers:
        assert writer.wait(timeout=120) == 0, writer.stderr.read()
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err
    assert int(out) > 0  # it did read complete folders
    assert sorted(p.name for p in target.iterdir()) == ["config.json"] + [
        f"part{i}.bin" for i in range(5)]
    assert not [p for p in target.parent.iterdir() if p.name.endswith((".tmp", ".old"))]


HOLD_LOCK = r"""
import sys, time
from rlnlu import files
with files.exclusive_lock(sys.argv[1], "training job"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.mark.parametrize("method", ["sft", "ppo", "grpo"])
def test_second_training_job_on_the_same_work_folder_stops_at_once_naming_it(
        tiny_model_dir, tmp_path, caplog, method):
    train = tmp_path / "train.jsonl"
    files.write_jsonl(train, training_rows(4))
    work = tmp_path / "out" / "work"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(work)], env=job_env(),
                              stdout=subprocess.PIPE, text=True)

    def argv_with(model):
        return (sft_argv(model, train, tmp_path / "out") if method == "sft"
                else ppo_argv(model, train, tmp_path / "out", method))

    try:
        assert holder.stdout.readline().strip() == "held"
        # Refused before loading the model: a model folder that is not there is not noticed.
        assert cli.main(argv_with(str(tmp_path / "no-model"))) == 1
        message = caplog.text
        assert f"{work} is in use by another training job (pid {holder.pid}" in message
        assert "Wait for that one to finish, or stop it" in message
        assert not list(work.glob("checkpoint-*")) and not (tmp_path / "out/adapter").exists()
    finally:
        holder.kill()
        holder.wait()
    assert cli.main(argv_with(tiny_model_dir)) == 0  # the holder gone (even killed): lock free
