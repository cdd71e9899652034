#!/usr/bin/env python3
"""Give a command one free GPU of this machine, then run it with CUDA_VISIBLE_DEVICES set.

    python profiles/gpu/pick_gpu.py --slots 4 -- python -m rlnlu evaluate ...
    python profiles/gpu/pick_gpu.py --status --slots 4

Snakemake counts GPUs (`resources: gpu: N` in profiles/gpu/config.yaml, `gpu: 1` per GPU
rule) but never says *which* GPU a job should use. This script claims one: slot i is the
file <lock dir>/gpu<i>.lock, claimed with an exclusive, non-blocking fcntl.flock. The
locked descriptor is inherited by the command, which replaces this process (os.execvpe,
same PID), so the claim lasts exactly as long as the command (and any child it forks):
the kernel drops the lock when the last holder exits, killed or not. Nothing is ever
left to clean up; a stale lock file is just an unlocked file.

The candidate GPUs are, in this order: --devices; the first --slots entries of an
inherited CUDA_VISIBLE_DEVICES (so `CUDA_VISIBLE_DEVICES=2,3` restricts the pool);
0 .. --slots-1; or, without --slots, every GPU `nvidia-smi -L` lists. With none, the
command runs unchanged (CPU). When every slot is held (another workflow, another user)
it waits, polling, up to --timeout seconds (default: forever).

Lock directory: --lock-dir, else $RLNLU_GPU_LOCK_DIR, else /tmp/rlnlu-gpu-locks (machine
wide, shared by all users), with a -slurm<job id> suffix inside a SLURM job so that jobs
sharing a node, each seeing its own GPU 0, never wait for each other.
Standard library only, so it runs before any environment is imported.
"""
from __future__ import annotations

import argparse
import errno
import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_LOCK_DIR = "/tmp/rlnlu-gpu-locks"


def lock_dir(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    folder = os.environ.get("RLNLU_GPU_LOCK_DIR") or DEFAULT_LOCK_DIR
    if os.environ.get("SLURM_JOB_ID"):
        folder += f"-slurm{os.environ['SLURM_JOB_ID']}"
    return Path(folder)


def detect_gpus() -> list[str]:
    """Indices of the GPUs `nvidia-smi -L` lists ([] without a driver)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                 timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(l for l in listing.splitlines()
                                            if l.startswith("GPU "))]


def candidates(devices: str | None, slots: int | None) -> list[str]:
    if devices:
        return [d.strip() for d in devices.split(",") if d.strip()]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible and visible != "NoDevFiles":
        pool = [d.strip() for d in visible.split(",") if d.strip()]
        if slots is not None:
            if slots > len(pool):
                sys.exit(f"pick_gpu: --slots {slots} but CUDA_VISIBLE_DEVICES={visible} "
                         f"names only {len(pool)} GPU(s)")
            pool = pool[:slots]
        return pool
    if slots is not None:
        return [str(i) for i in range(slots)]
    return detect_gpus()


def slot_path(folder: Path, device: str) -> Path:
    return folder / f"gpu{re.sub(r'[^A-Za-z0-9_.-]', '_', device)}.lock"


def open_slot(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:  # created by another user: a read-only descriptor locks too
        return os.open(path, os.O_RDONLY)


def prepare(folder: Path) -> None:
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        try:  # shared between users, like /tmp itself
            folder.chmod(0o1777)
        except OSError:
            pass


def try_claim(folder: Path, devices: list[str]) -> tuple[str, int] | None:
    """The first free device and its locked descriptor, or None when all are held."""
    for device in devices:
        path = slot_path(folder, device)
        fd = open_slot(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                continue
            raise
        try:  # who holds it, for --status and for people reading /tmp
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        return device, fd
    return None


def status(folder: Path, devices: list[str]) -> int:
    for device in devices:
        path = slot_path(folder, device)
        if not path.exists():
            print(f"GPU {device}: free")
            continue
        fd = open_slot(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            print(f"GPU {device}: free")
        except OSError:
            holder = path.read_text().strip() or "?"
            print(f"GPU {device}: held by pid {holder}")
        finally:
            os.close(fd)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(
        prog="pick_gpu.py", description=__doc__.split("\n\n")[0],
        usage="%(prog)s [options] -- COMMAND [ARGS...] | %(prog)s --status [options]")
    parser.add_argument("--slots", type=int, help="number of GPUs to share (the profile's gpu resource)")
    parser.add_argument("--devices", help="comma-separated GPU ids to share instead")
    parser.add_argument("--lock-dir", help=f"where the slot files live (default {DEFAULT_LOCK_DIR})")
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between tries when all GPUs are held")
    parser.add_argument("--timeout", type=float, help="give up (exit 75) after this many seconds")
    parser.add_argument("--status", action="store_true", help="print which slots are held, then exit")
    args = parser.parse_args(argv)
    if args.slots is not None and args.slots < 1:
        parser.error("--slots must be at least 1")

    devices = candidates(args.devices, args.slots)
    folder = lock_dir(args.lock_dir)
    if args.status:
        prepare(folder)
        return status(folder, devices)
    if not command:
        parser.error("no command given after --")

    env = dict(os.environ)
    if not devices:
        print("pick_gpu: no GPU found; running on CPU", file=sys.stderr, flush=True)
    else:
        prepare(folder)
        deadline = None if args.timeout is None else time.monotonic() + args.timeout
        waited = False
        while (claim := try_claim(folder, devices)) is None:
            if deadline is not None and time.monotonic() >= deadline:
                print(f"pick_gpu: all of GPUs {','.join(devices)} still held after "
                      f"{args.timeout:g} s", file=sys.stderr, flush=True)
                return 75  # EX_TEMPFAIL
            if not waited:
                print(f"pick_gpu: all of GPUs {','.join(devices)} are held; waiting",
                      file=sys.stderr, flush=True)
                waited = True
            time.sleep(args.poll)
        device, fd = claim
        os.set_inheritable(fd, True)  # the command holds the lock from here on
        env["CUDA_VISIBLE_DEVICES"] = device
        env["RLNLU_GPU_SLOT"] = device
        print(f"pick_gpu: CUDA_VISIBLE_DEVICES={device} (lock {slot_path(folder, device)})",
              file=sys.stderr, flush=True)
    try:
        os.execvpe(command[0], command, env)
    except OSError as err:
        print(f"pick_gpu: cannot run {command[0]}: {err}", file=sys.stderr, flush=True)
        return 127


if __name__ == "__main__":
    sys.exit(main())
