"""What the end-to-end tests share: running Snakemake on this workflow in a scratch folder,
a config for the tests' tiny model over the real data in ../shared/data, and comparing
metrics files apart from their timing."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "workflow"
SHARED_DATA = ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")
# Fields of a metrics file that legitimately differ between two runs of the same cell.
TIMING_FIELDS = ("wall_seconds", "peak_memory_mb", "peak_gpu_memory_mb")


def job_env(**extra) -> dict:
    """The environment of a job: offline, one thread (so that a job and the test process
    compute identically), the package importable, this interpreter's folder first on PATH."""
    return {**os.environ, "PYTHONPATH": str(WORKFLOW), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            **extra}


def snakemake_command(workdir: Path, *args: str, config: Path | None = None) -> list[str]:
    """Snakemake on this workflow in `workdir`; the defaults come from beside the Snakefile,
    `config` is merged over them."""
    configs = ["--configfile", str(config)] if config else []
    return [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory",
            str(workdir), *configs, *args]


def snakemake(workdir: Path, *args: str, config: Path | None = None, check: bool = True,
              timeout: float | None = None, **env) -> subprocess.CompletedProcess:
    """Run Snakemake to its end (`env` adds to `job_env`); fail with its output unless it
    succeeds or `check` is off."""
    result = subprocess.run(snakemake_command(workdir, *args, config=config),
                            env=job_env(**env), capture_output=True, text=True, cwd=ROOT,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def tiny_config(workdir: Path, model_dir: str, name: str = "tiny.yaml", **overrides) -> Path:
    """A config file for the tiny model (registered as `tiny`) over the real data: one
    zero-shot RTE cell of 8 examples, unless `overrides` replace top-level keys."""
    config = {
        "models": ["tiny"],
        "benchmarks": ["glue"],
        "tasks": {"glue": ["rte"]},
        "methods": ["zero_shot"],
        "data": {"source": "local", "local_dir": str(SHARED_DATA), "missing": "fail"},
        "model_registry": {"tiny": {"source": "hub", "path": model_dir, "chat_template": False}},
        "inference": {"batch_size": 2, "max_new_tokens": 4},
        "evaluation": {"max_examples": 8, "bootstrap_resamples": 20},
    }
    config.update(overrides)
    path = workdir / name
    path.write_text(yaml.safe_dump(config))
    return path


def without_timing(record):
    """A metrics record with its timing fields removed, for reproducibility comparisons."""
    if isinstance(record, dict):
        return {k: without_timing(v) for k, v in record.items() if k not in TIMING_FIELDS}
    if isinstance(record, list):
        return [without_timing(v) for v in record]
    return record
