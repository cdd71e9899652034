"""What produced a number: code version, the exact settings of the cell, packages, hardware,
time and memory. Recorded in every cell's metrics file."""
from __future__ import annotations

import hashlib
import json
import platform
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "snakemake", "scikit-learn",
            "scipy", "numpy")


def settings_hash(settings: dict) -> str:
    """A stable hash of exactly the settings that affect one cell."""
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def git_commit(directory: str | Path) -> str | None:
    """The checked-out commit, marked `-dirty` when tracked files have local changes."""
    def git(*args):
        return subprocess.run(["git", "-C", str(directory), *args], capture_output=True,
                              text=True, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def package_versions() -> dict[str, str | None]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_description(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def peak_memory() -> dict[str, float]:
    """Peak resident memory of this process (and of the GPU, when one was used), in MB."""
    peak = {"peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        peak["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak


def run_record(device: str, wall_seconds: float) -> dict:
    return {"device": device_description(device), "packages": package_versions(),
            "wall_seconds": round(wall_seconds, 2), **peak_memory()}
