"""Atomic writes: build under a temporary name in the same directory, fsync, rename."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success fsync it and rename it over target.

    On any exception the temporary file is removed, so a half-written artifact never carries
    the final name.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.",
                                    suffix=suffix + ".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would leak onto the artifact
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary directory beside `target`; rename it to target on success.

    If target appeared meanwhile (another build finished first) ours is discarded: both hold
    the same content by construction of the key.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would hide the entry from other users
    try:
        yield tmp
        for dirpath, _dirs, files in os.walk(tmp):
            for name in files:
                p = os.path.join(dirpath, name)
                if not os.path.islink(p):
                    with open(p, "rb") as f:
                        os.fsync(f.fileno())
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def link_or_copy(src: Path, dst: Path) -> None:
    """Publish `src` at `dst` atomically: a hard link when possible, else a copy."""
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def remove_stale_temps(target: Path) -> None:
    """Remove the temporary files atomic_path left beside `target` in processes that no
    longer run (`.<name>.<pid>.*.tmp`)."""
    prefix = f".{target.name}."
    for p in target.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = p.name[len(prefix):].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def work_tempdir(work_dir: Path, prefix: str) -> Path:
    """A new temporary directory in `work_dir` named `<prefix>.<pid>.*`, so that what a
    killed process left can be told from what a running one uses (remove_stale_work)."""
    return Path(tempfile.mkdtemp(prefix=f"{prefix}.{os.getpid()}.", dir=work_dir))


def remove_stale_work(work_dir: Path) -> None:
    """Remove the temporary directories of processes that no longer run."""
    for p in work_dir.iterdir():
        parts = p.name.split(".")
        if len(parts) < 3 or not parts[1].isdigit() or int(parts[1]) == os.getpid():
            continue
        if not _pid_alive(int(parts[1])):
            shutil.rmtree(p, ignore_errors=True)
