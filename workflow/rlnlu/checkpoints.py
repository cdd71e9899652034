"""Training checkpoints that survive being killed, and are never trusted when damaged.

A checkpoint is a folder `checkpoint-<step>` under a cell's work folder (kept outside the
rule's declared outputs, so Snakemake's clean-up of a failed job does not delete it). It
counts only once sealed: a `MANIFEST.json` listing every file's SHA-256 is written last,
atomically. A job killed mid-save leaves an unsealed folder, which resume skips; a sealed
folder whose files no longer match their checksums is reported and skipped too.

Adapters (the training rules' output folders) are sealed the same way when they are saved;
`check_adapter` verifies one before it is loaded, so a damaged adapter is reported by
folder and never used.
"""
from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

from .files import read_json, write_json

log = logging.getLogger(__name__)
MANIFEST = "MANIFEST.json"
_STEP = re.compile(r"^checkpoint-(\d+)$")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def seal(folder: str | Path) -> None:
    folder = Path(folder)
    write_json(folder / MANIFEST,
               {str(p.relative_to(folder)): _sha256(p) for p in _files(folder)})


def identity(folder: str | Path) -> str:
    """What a folder is, for telling runs apart: its sealed checksum table, or (unsealed)
    its path."""
    manifest = Path(folder) / MANIFEST
    return manifest.read_text() if manifest.is_file() else str(folder)


def problem_with(folder: str | Path) -> str | None:
    """Why a checkpoint folder cannot be trusted, or None if it is sound."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return "not sealed (the save was interrupted)"
    try:
        expected = read_json(manifest)  # UnicodeDecodeError and JSONDecodeError: ValueErrors
    except ValueError:
        return f"{manifest} is unreadable"
    if not isinstance(expected, dict) or not all(
            isinstance(name, str) and isinstance(checksum, str)
            for name, checksum in expected.items()):
        return f"{manifest} is not a file -> checksum table (altered)"
    if not expected:
        return f"{manifest} lists no files"
    for name, checksum in expected.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if _sha256(path) != checksum:
            return f"{path} does not match its checksum (truncated or altered)"
    return None


def checkpoints_newest_first(work_dir: str | Path) -> list[Path]:
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in work_dir.iterdir() if (m := _STEP.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def latest_valid(work_dir: str | Path) -> Path | None:
    """The newest sound checkpoint; damaged ones are logged and skipped, never used."""
    for folder in checkpoints_newest_first(work_dir):
        problem = problem_with(folder)
        if problem is None:
            return folder
        log.warning("skipping checkpoint %s: %s", folder, problem)
    return None


def step_of(folder: str | Path) -> int:
    return int(_STEP.match(Path(folder).name).group(1))


def check_adapter(folder: str | Path) -> None:
    """Raise a ValueError naming `folder` if it is not a sound adapter: missing, without
    its adapter_config.json, or sealed with files that no longer match their checksums.
    Adapters written before adapters were sealed carry no manifest and pass when complete."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"adapter folder {folder} does not exist")
    if (folder / MANIFEST).exists():
        problem = problem_with(folder)
    elif not (folder / "adapter_config.json").is_file():
        problem = f"{folder / 'adapter_config.json'} is missing"
    else:
        problem = None
    if problem:
        raise ValueError(f"adapter folder {folder} is damaged: {problem}. Delete it, or rerun "
                         f"with `snakemake --forcerun {folder}`, to train it again")
