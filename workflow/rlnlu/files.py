"""Atomic file writes: an output either exists complete or not at all.

Every file the suite produces is written to a temporary sibling and renamed into place,
so a killed job never leaves a half-written file that looks finished. Reading one back
checks it: a damaged JSON-lines file is reported with its path and line, and how to make
it again. A folder that only one job at a time may use (a training work folder) is held
with `exclusive_lock`.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

log = logging.getLogger(__name__)
# Filesystems without flock (some network mounts): work unlocked, with a warning.
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}

def remake_hint(path) -> str:
    """What to do about a damaged file or folder the workflow made."""
    return (f"delete it, or rerun with `snakemake --forcerun {path}`, and the workflow "
            f"makes it again")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl(path, rows: Iterable[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class JsonLines(list):
    """The rows of a JSON-lines file, remembering where they came from (`path`, and the
    1-based `line_numbers` of the rows), so later checks can name the file and line."""

    def __init__(self, rows=(), path=None, line_numbers=()):
        super().__init__(rows)
        self.path = path
        self.line_numbers = list(line_numbers)

    def where(self, position: int) -> str:
        """`path:line` of the row at `position`."""
        line = self.line_numbers[position] if position < len(self.line_numbers) else position + 1
        return f"{self.path}:{line}"


def read_jsonl(path) -> JsonLines:
    """Read a JSON-lines file the suite wrote. Every line must be a complete JSON object
    ending in a newline, and there must be at least one: a file cut short (mid-line or
    not), garbled bytes or an empty file raise a ValueError naming the file and line, and
    how to make the file again."""
    rows, numbers = [], []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            problem = None
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                problem = f"not valid UTF-8 ({err.reason} at byte {err.start} of the line)"
            else:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    problem = f"not valid JSON ({err.msg})"
                else:
                    if not isinstance(row, dict):
                        problem = "not a JSON object"
                    elif not raw.endswith(b"\n"):  # the suite ends every row with one
                        problem = "the last line has no newline (the file was cut short)"
            if problem:
                raise ValueError(f"{path}:{number}: {problem}; the file is damaged: "
                                 f"{remake_hint(path)}")
            rows.append(row)
            numbers.append(number)
    if not rows:
        raise ValueError(f"{path}:1: no rows (an empty file); the suite never writes one, "
                         f"so it is damaged: {remake_hint(path)}")
    return JsonLines(rows, str(path), numbers)


# ---------------------------------------------------------------- folders


class InUseError(ValueError):
    """A folder is held by another job. (A ValueError, so the CLI reports it in one line.)"""


_HELD: dict[str, list] = {}  # lock file -> [open file, depth]: re-entrant within a process


@contextmanager
def exclusive_lock(folder: str | os.PathLike, what: str = "job") -> Iterator[None]:
    """Hold `folder` for this process, or fail at once if another process holds it.

    The lock is an advisory `flock` on `folder/.lock`; the kernel drops it when the holder
    exits, however it exits (SIGKILL included), so a killed job never leaves a stale lock.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / ".lock"
    key = str(lock_path.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    handle = open(lock_path, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        problem = None
    except OSError as err:
        problem = err
    if problem is not None and problem.errno in _NO_LOCKS:
        handle.close()
        log.warning("cannot lock %s (%s); make sure no other job uses it", folder, problem)
        yield
        return
    if problem is not None:
        if problem.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            handle.close()
            raise problem
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise InUseError(
            f"{folder} is in use by another {what} ({holder}); two jobs must not write it "
            f"at once. Wait for that one to finish, or stop it, then run this again")
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        _HELD[key] = [handle, 1]
        yield
    finally:
        _HELD.pop(key, None)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it replaces `path` only if the block succeeds.

    Safe when several processes write the same folder at once (two cells converting the
    same model, say): each fills its own temporary folder, and the swaps into place take
    turns under a lock beside the folder. A reader sees the old complete folder, the new
    complete folder, or (for an instant during a replacement) none; never a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        with _swap_lock(path):
            old = None
            if path.exists() or path.is_symlink():
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old",
                                            dir=path.parent))
                os.replace(path, old / path.name)  # a rename: the old folder stays whole
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _swap_lock(path: Path) -> Iterator[None]:
    lock_path = path.parent / f".{path.name}.swap-lock"
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)  # waits: a swap takes milliseconds
            locked = True
        except OSError as err:
            if err.errno not in _NO_LOCKS:
                raise
            locked = False  # no locks here: one writer at a time still swaps whole folders
        try:
            yield
        finally:
            if locked:
                fcntl.flock(handle, fcntl.LOCK_UN)
