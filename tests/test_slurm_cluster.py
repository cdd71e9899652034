"""profiles/slurm on a real SLURM cluster: the one-node cluster of scripts/slurm-cluster.sh
(slurmctld, slurmd and munge from Debian, no accounting database), brought up for this
module and stopped after it if it was not running before.

  - a zero-shot cell through sbatch, with the profile's own resource requests; it also
    guards the profile's status command: with sacct (the plugin's default where the sacct
    binary exists) a cluster without accounting never reports the job done, and the run
    times out here;
  - an SFT -> evaluate -> score chain whose training job is scancel'ed once it has sealed a
    checkpoint: Snakemake resubmits it as attempt 2 (more memory and time), the retry
    resumes from the checkpoint, keeps attempt 1's rule log, and the cell's metrics equal
    those of an uninterrupted local run;
  - (on request, RLNLU_SLURM_PAPER_GRID=1) the tiny paper grid of test_paper_grid.py.

Without the SLURM packages (`bash scripts/slurm-cluster.sh install`, as .ci/run does), or
without root, the tests are skipped and say why."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from test_paper_grid import (PAPER_CONFIG, check_tiny_paper_run, offline_env,
                             write_tiny_paper_config)

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "scripts" / "slurm-cluster.sh"
PROFILE = ROOT / "profiles" / "slurm"
SHARED_DATA = ROOT.parent / "shared" / "data"
SLURM_PROGRAMS = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "scancel", "scontrol")
MODEL = "smollm2-135m"  # the embedded default
ZERO_SHOT = f"results/metrics/{MODEL}/glue/rte/zero_shot/seed0.json"
SFT = f"results/metrics/{MODEL}/glue/rte/sft/seed0.json"
SFT_LOG = f"logs/train_sft/{MODEL}/glue/rte/seed0.log"
SFT_CHECKPOINTS = f"resources/checkpoints/{MODEL}/glue/rte/sft/seed0"
HANG_ADVICE = (
    "If the log loops on 'No active jobs; skipping status query', job states are not read: "
    "profiles/slurm/config.yaml must keep `slurm-status-command: squeue` (this cluster has no "
    "accounting database, so sacct fails and the plugin never reports the job done).")


def why_no_cluster() -> str | None:
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed (envs/requirements.txt)"
    missing = [name for name in SLURM_PROGRAMS if shutil.which(name) is None]
    if missing:
        return (f"SLURM is not installed ({', '.join(missing)} not found); as root run "
                "`bash scripts/slurm-cluster.sh install` (.ci/run does)")
    if os.geteuid() != 0:
        return "starting the SLURM daemons needs root"
    if not SHARED_DATA.is_dir():
        return "../shared/data is not present"
    return None


@pytest.fixture(scope="module")
def slurm_cluster():
    reason = why_no_cluster()
    if reason:
        pytest.skip(f"no real SLURM cluster: {reason}")
    was_up = subprocess.run(["bash", str(CLUSTER), "status"], capture_output=True).returncode == 0
    up = subprocess.run(["bash", str(CLUSTER), "up"], capture_output=True, text=True, timeout=180)
    # Installed but not starting is a failure, never a skip.
    assert up.returncode == 0, f"scripts/slurm-cluster.sh up failed:\n{up.stdout}\n{up.stderr}"
    yield
    if not was_up:
        subprocess.run(["bash", str(CLUSTER), "down"], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def cluster_workdir(slurm_cluster, tmp_path_factory) -> Path:
    """One working folder for this module's cluster runs, so that the model is converted and
    the data prepared once."""
    return tmp_path_factory.mktemp("cluster")


def cell_config(workdir: Path) -> Path:
    """The embedded model on RTE: zero-shot and SFT, budgets small enough for minutes on CPU,
    six SFT steps with a checkpoint after each so that a kill lands between two of them."""
    config = {
        "models": [MODEL],
        "benchmarks": ["glue"],
        "tasks": {"glue": ["rte"]},
        "methods": ["zero_shot", "sft"],
        "data": {"source": "local", "local_dir": str(SHARED_DATA), "missing": "fail"},
        "inference": {"batch_size": 4, "max_new_tokens": 6},
        "evaluation": {"max_examples": 4, "bootstrap_resamples": 20},
        "sft": {"max_examples": 12, "batch_size": 2, "max_steps": 6, "save_steps": 1,
                "max_length": 512},
    }
    path = workdir / "cells.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake_command(workdir: Path, *configs: Path) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory",
            str(workdir), "--configfile", *map(str, configs)]


def start_through_slurm(workdir: Path, configs: list[Path], targets: list[str],
                        log: Path) -> subprocess.Popen:
    """The README's cluster command (profiles/slurm, --workflow-profile none), with shorter
    waits between status checks and --verbose, which prints each sbatch call."""
    command = [*snakemake_command(workdir, *configs), "--profile", str(PROFILE),
               "--workflow-profile", "none", "--verbose",
               "--slurm-init-seconds-before-status-checks", "5",
               "--seconds-between-status-checks", "5", *(["--", *targets] if targets else [])]
    return subprocess.Popen(command, env=offline_env(), stdout=log.open("w"),
                            stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)


def wait_for(session: subprocess.Popen, log: Path, timeout: float) -> str:
    try:
        session.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(session.pid, 9)
        session.wait()
        cancel_jobs_of(log.read_text())
        pytest.fail(f"snakemake did not finish within {timeout:.0f} s through profiles/slurm. "
                    f"{HANG_ADVICE}\n...{log.read_text()[-3000:]}")
    output = log.read_text()
    assert session.returncode == 0, f"snakemake failed through profiles/slurm:\n...{output[-6000:]}"
    return output


def cancel_jobs_of(output: str) -> None:
    for match in re.finditer(r"SLURM run ID: (\S+)", output):
        subprocess.run(["scancel", "--name", match.group(1)], capture_output=True)


def sbatch_calls(output: str) -> dict[str, list[str]]:
    """rule -> the sbatch command lines the plugin issued for it, in order, up to the
    command they wrap (the Snakemake that runs the job)."""
    calls: dict[str, list[str]] = {}
    for call in re.findall(r"sbatch call: (.*?) --wrap=", output):
        rule = re.search(r"--comment '?rule_(\w+?)(?:_wildcards|'|\s)", call).group(1)
        calls.setdefault(rule, []).append(call)
    return calls


def slurm_job_ids(output: str, rule: str) -> list[str]:
    """The SLURM job ids of a rule's submissions, in order."""
    return [job_id for call, job_id in re.findall(
        r"sbatch call: (.*?)\n.*?has been submitted with SLURM jobid (\d+)", output, re.S)
        if f"rule_{rule}" in call]


def slurm_record(job_id: str) -> dict[str, str]:
    """What slurmctld holds about a job (for MinJobAge seconds after it ended)."""
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True)
    return dict(re.findall(r"(\w+(?:/\w+)?)=(\S*)", shown.stdout))


def test_zero_shot_cell_runs_through_sbatch_and_the_run_ends(cluster_workdir):
    log = cluster_workdir / "zero_shot.log"
    session = start_through_slurm(cluster_workdir, [cell_config(cluster_workdir)], [ZERO_SHOT], log)
    output = wait_for(session, log, timeout=900)

    cell = json.loads((cluster_workdir / ZERO_SHOT).read_text())
    assert cell["examples"] == 4
    calls = sbatch_calls(output)
    print("\n".join(call for rule_calls in calls.values() for call in rule_calls))
    evaluate, = calls["evaluate"]
    for flag in ["-p gpu", "--gpus=1", "--mem 32000", "-t 240", "--cpus-per-task=4"]:
        assert flag in evaluate, (flag, evaluate)
    for call in calls["prepare_data"] + calls["score"]:
        assert "-p cpu" in call and "--gpus" not in call, call
    # SLURM itself ran it on the GPU partition with a GPU, and says it completed.
    record = slurm_record(slurm_job_ids(output, "evaluate")[0])
    assert record["JobState"] == "COMPLETED" and record["Partition"] == "gpu", record
    assert "gpu:1" in record.get("TresPerJob", "") + record.get("TRES", ""), record


def sealed_checkpoints(workdir: Path) -> list[int]:
    from rlnlu import checkpoints

    return sorted(checkpoints.step_of(c) for c in checkpoints.checkpoints_newest_first(
        workdir / SFT_CHECKPOINTS) if checkpoints.problem_with(c) is None)


def running_job(rule: str) -> str | None:
    """The id of a running SLURM job of `rule` (the plugin puts the rule in the comment)."""
    queue = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k"], capture_output=True,
                           text=True).stdout
    found = [line.split("|")[0] for line in queue.splitlines() if f"rule_{rule}" in line]
    return found[0] if found else None


def test_scancelled_training_job_is_retried_resumes_and_matches_a_local_run(cluster_workdir,
                                                                             tmp_path):
    from workflow_runs import without_timing

    cluster = cluster_workdir
    log = cluster / "sft.log"
    session = start_through_slurm(cluster, [cell_config(cluster)], [SFT], log)
    killed_job, deadline = None, time.monotonic() + 900
    while killed_job is None and session.poll() is None and time.monotonic() < deadline:
        job = running_job("train_sft")
        if job and sealed_checkpoints(cluster):  # training has sealed a checkpoint
            subprocess.run(["scancel", job], check=True)
            killed_job, steps_at_kill = job, sealed_checkpoints(cluster)
        time.sleep(0.2)
    # Read the killed job's state now: slurmctld forgets it MinJobAge seconds after it ends.
    state_deadline = time.monotonic() + 60
    while killed_job and slurm_record(killed_job).get("JobState") in (None, "RUNNING", "COMPLETING") \
            and time.monotonic() < state_deadline:
        time.sleep(0.5)
    killed_state = slurm_record(killed_job).get("JobState") if killed_job else None
    if killed_job is None:
        os.killpg(session.pid, 9)
        cancel_jobs_of(log.read_text())
        pytest.fail(f"never saw a running train_sft job with a checkpoint:\n{log.read_text()[-4000:]}")
    # Generous: on two busy cores a retried 135M training job, evaluation and scoring took 20 min.
    output = wait_for(session, log, timeout=2400)

    # The yardstick: the same cell run locally without interruption (the converted model copied).
    local = tmp_path / "local"
    shutil.copytree(cluster / "resources" / "models", local / "resources" / "models")
    straight = subprocess.run([*snakemake_command(local, cell_config(local)), "--cores", "2",
                               "--", SFT], env=offline_env(), capture_output=True, text=True,
                              timeout=900)
    assert straight.returncode == 0, straight.stderr[-5000:]

    attempts = sbatch_calls(output)["train_sft"]
    print(f"\nscancel {killed_job} after checkpoints {steps_at_kill}\n" + "\n".join(attempts))
    assert len(attempts) == 2, attempts
    assert "--mem 48000" in attempts[0] and "-t 1440" in attempts[0]
    assert "--mem 96000" in attempts[1] and "-t 2880" in attempts[1]  # attempt 2 asks for more
    assert killed_state == "CANCELLED"
    retried = (cluster / SFT_LOG).read_text()
    resumed = re.search(r"resuming from \S*checkpoint-(\d+) at step (\d+)", retried)
    assert resumed and int(resumed.group(2)) >= steps_at_kill[-1], retried[-3000:]
    # Snakemake deleted the rule log before the retry; attempt 1's numbered copy is kept.
    first_attempt = (cluster / f"{SFT_LOG}.1").read_text()
    assert "resuming from" not in first_attempt and "SFT of" in first_attempt
    assert (cluster / f"{SFT_LOG}.2").read_text() == retried
    print(f"attempt 2: {resumed.group(0)}")

    def metrics(workdir):
        record = without_timing(json.loads((workdir / SFT).read_text()))
        record.pop("provenance", None)
        return record
    assert metrics(cluster) == metrics(local)


@pytest.mark.skipif(os.environ.get("RLNLU_SLURM_PAPER_GRID") != "1",
                    reason="the tiny paper grid through SLURM takes long on 2 cores: run it with "
                           "RLNLU_SLURM_PAPER_GRID=1 python -m pytest tests/test_slurm_cluster.py "
                           "-k paper_grid -s")
def test_tiny_paper_grid_runs_through_slurm(slurm_cluster, tmp_path):
    config = write_tiny_paper_config(tmp_path / "standins")
    standins = {key: entry["path"]
                for key, entry in yaml.safe_load(config.read_text())["model_registry"].items()}
    workdir = tmp_path / "run"
    workdir.mkdir()
    log = workdir / "snakemake.log"
    started = time.monotonic()
    session = start_through_slurm(workdir, [PAPER_CONFIG, config], [], log)
    output = wait_for(session, log, timeout=7200)
    calls = sbatch_calls(output)
    print(f"\n{sum(map(len, calls.values()))} sbatch calls in {time.monotonic() - started:.0f} s; "
          "one per rule:\n" + "\n".join(rule_calls[0] for rule_calls in calls.values()))
    check_tiny_paper_run(workdir, standins)
