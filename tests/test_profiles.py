"""The execution profiles (profiles/*/config.yaml) and the local GPU slot picker, without a
cluster or a GPU: every key documented, the SLURM profile plans the paper grid and maps
its resources onto sbatch flags (against stand-in SLURM commands), and the picker hands
concurrent jobs different GPUs and frees a slot when its holder is killed."""
from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from workflow_runs import ROOT, snakemake

PROFILES = sorted(ROOT.glob("profiles/*/config.yaml"))
PICK_GPU = ROOT / "profiles" / "gpu" / "pick_gpu.py"
HEAVY_RULE = re.compile(r"^(evaluate|train_\w+)$")
needs_slurm_plugin = pytest.mark.skipif(
    importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
    reason="snakemake-executor-plugin-slurm is not installed")


def paper_config() -> list[str]:
    return ["--configfile", str(ROOT / "configs" / "paper.yaml")]


def job_resources(plan: str) -> dict[str, list[dict[str, str]]]:
    """rule -> the `resources:` of each of its jobs in a dry-run plan."""
    found: dict[str, list[dict[str, str]]] = {}
    rule = None
    for line in plan.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line):
            rule = match.group(1)
        elif rule and line.strip().startswith("resources:"):
            pairs = line.split("resources:", 1)[1].split(", ")
            found.setdefault(rule, []).append(dict(p.strip().split("=", 1) for p in pairs))
            rule = None
    return found


def load(profile: Path) -> dict:
    return yaml.safe_load(profile.read_text())


# ---- every key is documented ----

def strip_quoted(text: str) -> str:
    return re.sub(r"'[^']*'|\"[^\"]*\"", "''", text)


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.parent.name)
def test_every_profile_key_has_a_comment(profile):
    lines = profile.read_text().splitlines()
    keys_seen, undocumented = [], []
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z0-9_.-]+):(\s|$)", line)
        if not match:
            continue
        keys_seen.append(match.group(2))
        inline = "#" in strip_quoted(line.split(":", 1)[1])
        above = number > 0 and lines[number - 1].lstrip().startswith("#")
        if not (inline or above):
            undocumented.append(f"{profile.name}:{number + 1}: {line.strip()}")
    assert not undocumented, "keys without a comment:\n" + "\n".join(undocumented)

    def all_keys(node):
        if isinstance(node, dict):
            for key, value in node.items():
                yield str(key)
                yield from all_keys(value)
    assert sorted(keys_seen) == sorted(all_keys(load(profile))), "a key the text scan missed"


@pytest.mark.parametrize("name", ["slurm", "gpu"])
def test_gpu_rules_ask_for_one_gpu(name):
    rules = load(ROOT / "profiles" / name / "config.yaml")["set-resources"]
    heavy = [rule for rule in rules if HEAVY_RULE.match(rule)]
    assert {"evaluate", "train_sft", "train_sft_multi", "train_ppo", "train_ppo_multi"} <= set(heavy)
    assert all(rules[rule]["gpu"] == 1 for rule in heavy)


def test_profile_rules_exist_in_the_workflow(tmp_path):
    """Snakemake silently ignores set-resources for an unknown rule: catch typos, and GPU
    rules the profiles do not know about yet."""
    listing = snakemake(tmp_path, "--list-rules", *paper_config()).stdout.split()
    workflow_rules = {word for word in listing if re.fullmatch(r"\w+", word)}
    for name in ["slurm", "gpu"]:
        profile_rules = set(load(ROOT / "profiles" / name / "config.yaml")["set-resources"])
        assert {"evaluate", "train_sft"} <= workflow_rules
        assert {r for r in workflow_rules if HEAVY_RULE.match(r)} <= profile_rules, name
        # train_grpo may be listed ahead of its rule; anything else must exist
        assert profile_rules - workflow_rules <= {"train_grpo"}, name


def test_slurm_resources_grow_with_each_attempt():
    """The expressions Snakemake evaluates per attempt: valid, growing, capped."""
    profile = load(ROOT / "profiles" / "slurm" / "config.yaml")
    tables = [profile["default-resources"], *profile["set-resources"].values()]
    for table in tables:
        for key in ("mem_mb", "runtime"):
            values = [eval(str(table[key]), {"attempt": attempt, "threads": 4})
                      for attempt in range(1, profile["retries"] + 2)]
            assert all(isinstance(v, int) and v > 0 for v in values)
            assert values == sorted(values) and values[0] < values[1], (key, values)
        assert eval(str(table["slurm_partition"]), {}) in {"cpu", "gpu"}  # a quoted string
    assert profile["set-resource-scopes"] == {"gpu": "local"}


def test_slurm_status_command_works_without_accounting():
    """The plugin's default, sacct, never sees a job finish on a cluster without an
    accounting database, and the run waits forever (tests/test_slurm_cluster.py shows it on a
    real cluster); squeue works on clusters with and without one."""
    assert load(ROOT / "profiles" / "slurm" / "config.yaml")["slurm-status-command"] == "squeue"


# ---- the SLURM profile against the workflow ----

@needs_slurm_plugin
def test_slurm_profile_plans_the_paper_grid(tmp_path):
    result = snakemake(tmp_path, "-n", "--profile", str(ROOT / "profiles" / "slurm"),
                       *paper_config())
    resources = job_resources(result.stdout)
    assert resources["evaluate"] and resources["score"]
    for job in resources["evaluate"] + resources.get("train_sft", []):
        assert job["slurm_partition"] == "gpu" and job["gpu"] == "1"
    assert resources["evaluate"][0]["mem_mb"] == "32000" and resources["evaluate"][0]["runtime"] == "240"
    for job in resources["score"] + resources["prepare_data"]:
        assert job["slurm_partition"] == "cpu" and "gpu" not in job


def test_gpu_profile_plans_a_paper_cell(tmp_path):
    result = snakemake(tmp_path, "-n", "--profile", str(ROOT / "profiles" / "gpu"),
                       *paper_config(), "--",
                       "results/metrics/llama2-7b-chat/glue/rte/ppo/seed0.json")
    resources = job_resources(result.stdout)
    for rule in ("evaluate", "train_sft", "train_ppo"):
        assert [job["gpu"] for job in resources[rule]] == ["1"], rule
    for rule in ("score", "render_prompts", "prepare_data"):
        assert all("gpu" not in job for job in resources[rule]), rule


FAKE_SLURM = {
    # sbatch: record the call, answer a job id
    "sbatch": 'n=$(( $(cat "$FAKE_SLURM/count" 2>/dev/null || echo 100) + 1 ))\n'
              'echo $n > "$FAKE_SLURM/count"; echo "$n $*" >> "$FAKE_SLURM/sbatch.log"\n'
              'cat > /dev/null; echo $n',
    # sacct/squeue: every job of this run has failed
    "sacct": 'case "$*" in *--name*) [ -f "$FAKE_SLURM/sbatch.log" ] && '
             'awk \'{print $1"|FAILED"}\' "$FAKE_SLURM/sbatch.log";; esac; exit 0',
    "squeue": 'exec sacct "$@"',
    "sinfo": 'echo "cpu*"; echo gpu',
    "scontrol": 'echo "MinJobAge = 300 sec"; echo "MaxArraySize = 1001"',
    "scancel": "exit 0", "sshare": "exit 0", "sacctmgr": "exit 0",
}


@needs_slurm_plugin
def test_slurm_profile_submits_with_the_right_sbatch_flags(tmp_path):
    """Stand-in SLURM commands record what the plugin submits: a GPU job and a CPU job."""
    bin_dir, state, work = tmp_path / "bin", tmp_path / "state", tmp_path / "work"
    for folder in (bin_dir, state, work):
        folder.mkdir()
    for name, body in FAKE_SLURM.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    # The evaluate job's inputs exist, so it is submitted at once (besides prepare_data).
    data = work / "resources/data/glue/rte/validation.jsonl"
    prompts = work / "results/prompts/llama2-7b-chat/glue/rte/zero_shot/validation.jsonl"
    for path in (data, prompts):
        path.parent.mkdir(parents=True)
        path.write_text("{}\n")
        time.sleep(0.05)
    output = ""
    try:
        output = snakemake(work, "--profile", str(ROOT / "profiles" / "slurm"), "--workflow-profile", "none",
                  "--retries", "0", "--slurm-init-seconds-before-status-checks", "1",
                  "--seconds-between-status-checks", "1", *paper_config(), "--",
                  "results/predictions/llama2-7b-chat/glue/rte/zero_shot/seed0.jsonl",
                  "resources/data/glue/cola/validation.jsonl",
                  timeout=180, check=False, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                  FAKE_SLURM=str(state)).stderr
    except subprocess.TimeoutExpired:
        pass  # only the submissions matter
    assert (state / "sbatch.log").is_file(), f"nothing submitted:\n{output[-4000:]}"
    calls = (state / "sbatch.log").read_text().splitlines()
    gpu_call = next(c for c in calls if "rule_evaluate" in c)
    cpu_call = next(c for c in calls if "rule_prepare_data" in c)
    for flag in ["-p gpu", "--gpus=1", "--mem 32000", "-t 240", "--cpus-per-task=4",
                 str(work / "logs" / "slurm" / "rule_evaluate")]:
        assert flag in gpu_call, (flag, gpu_call)
    for flag in ["-p cpu", "--mem 4000", "-t 60", "--cpus-per-task=1"]:
        assert flag in cpu_call, (flag, cpu_call)
    assert "--gpus" not in cpu_call.split("--wrap")[0]


# ---- the GPU slot picker ----

def claimer(lock_dir: Path, *options: str, env: dict | None = None) -> subprocess.Popen:
    """A picker whose command prints its CUDA_VISIBLE_DEVICES, then sleeps."""
    command = [sys.executable, str(PICK_GPU), "--lock-dir", str(lock_dir), *options, "--",
               sys.executable, "-c",
               "import os, time; print(os.environ['CUDA_VISIBLE_DEVICES'], flush=True); time.sleep(120)"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env or dict(os.environ))


def first_line(process: subprocess.Popen, timeout: float = 20) -> str | None:
    """The process's first stdout line, or None if it prints nothing within the timeout."""
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            return None
    return process.stdout.readline().strip()


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_concurrent_claimers_get_different_gpus_and_a_kill_frees_the_slot(tmp_path, processes):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    first, second = (claimer(tmp_path, "--slots", "2", env=env) for _ in range(2))
    processes += [first, second]
    held_by_first, held_by_second = first_line(first), first_line(second)
    assert {held_by_first, held_by_second} == {"0", "1"}

    # Both slots held: a third claimer waits ...
    third = claimer(tmp_path, "--slots", "2", "--poll", "0.1", env=env)
    processes.append(third)
    assert first_line(third, timeout=1.5) is None and third.poll() is None
    # ... until the holder of a slot is killed (SIGKILL: no cleanup code runs).
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first_line(third) == held_by_first

    status = subprocess.run([sys.executable, str(PICK_GPU), "--lock-dir", str(tmp_path),
                             "--slots", "2", "--status"], capture_output=True, text=True, env=env)
    assert status.stdout.count("held by pid") == 2


def test_picker_respects_visible_devices_and_times_out(tmp_path, processes):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="5,7")
    env.pop("SLURM_JOB_ID", None)
    holder = claimer(tmp_path, "--slots", "1", env=env)
    processes.append(holder)
    assert first_line(holder) == "5"
    late = subprocess.run([sys.executable, str(PICK_GPU), "--lock-dir", str(tmp_path), "--slots", "1",
                           "--poll", "0.1", "--timeout", "0.5", "--", "true"],
                          capture_output=True, text=True, env=env)
    assert late.returncode == 75 and "still held" in late.stderr
    other = subprocess.run([sys.executable, str(PICK_GPU), "--lock-dir", str(tmp_path), "--slots", "2",
                            "--", sys.executable, "-c",
                            "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"],
                           capture_output=True, text=True, env=env)
    assert other.returncode == 0 and other.stdout.strip() == "7"


def test_picker_runs_the_command_unchanged_without_gpus(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    env["PATH"] = str(tmp_path)  # no nvidia-smi
    result = subprocess.run([sys.executable, str(PICK_GPU), "--lock-dir", str(tmp_path / "locks"),
                             "--", sys.executable, "-c", "import os, sys; sys.exit(3 if "
                             "'CUDA_VISIBLE_DEVICES' in os.environ else 7)"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 7 and "running on CPU" in result.stderr
