"""Atomic writes: build under a temporary name in the same directory, fsync, rename."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import re
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
    the final name. While it exists, `.<name>.<token>.lock` beside it is held (held_lock), so
    remove_stale_temps can tell a killed writer's leftover from a live one's.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    token = os.urandom(6).hex()
    with held_lock(target.parent / f".{target.name}.{token}.lock"):
        tmp = target.parent / f".{target.name}.{token}{suffix}.tmp"
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
        try:
            yield tmp
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
            if os.path.lexists(tmp):  # rename(2) does nothing when both name one inode
                tmp.unlink()
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


# --- liveness: a held flock means its holder runs (a pid means nothing in another PID
# namespace or on another host) ---------------------------------------------------------------


def _names(fd: int, path: Path) -> bool:
    """Does `path` still name the file open as `fd`?"""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


@contextlib.contextmanager
def held_lock(path: Path) -> Iterator[None]:
    """Create `path` and hold an exclusive flock on it until the block ends, then remove it:
    what the lock guards is in use while it is held (`reaped` tells the sweepers)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _names(fd, path):
            break
        os.close(fd)  # a sweeper took it for a dead holder's between open and flock: again
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)


@contextlib.contextmanager
def reaped(lock: Path) -> Iterator[bool]:
    """Is the holder of `lock` gone? True when the lock is absent or nobody holds it: the
    caller then removes what it guarded (still under the lock), and the lock goes after."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield True  # holders make the lock first and remove it last
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        if not _names(fd, lock):
            yield False  # its holder finished and removed it meanwhile
            return
        yield True
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
    finally:
        os.close(fd)


def remove_stale_temps(target: Path) -> None:
    """Remove the temporary files atomic_path left beside `target` in processes that no
    longer run (`.<name>.<token>*.tmp` whose lock nobody holds)."""
    prefix = f".{target.name}."
    for p in target.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        token = p.name[len(prefix):].split(".")[0]
        with reaped(target.parent / f"{prefix}{token}.lock") as dead:
            if dead:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
    for lock in target.parent.glob(f"{glob.escape(prefix)}*.lock"):
        with reaped(lock):
            pass  # a killed writer's lock without its temporary file


def work_tempdir(work_dir: Path, prefix: str) -> Path:
    """A new temporary directory in `work_dir` named `<prefix>.*` (work_dir is a run's own
    directory: see hold_run_dir)."""
    return Path(tempfile.mkdtemp(prefix=f"{prefix}.", dir=work_dir))


_RUN_DIR = re.compile(r"run\.[0-9a-f]{16}")


def hold_run_dir(parent: Path, held: contextlib.ExitStack) -> Path:
    """A new directory `parent/run.<id>` for one process's work files, with its lock
    `run.<id>.lock` beside it held until `held` closes; closing removes both."""
    parent.mkdir(parents=True, exist_ok=True)
    name = f"run.{os.urandom(8).hex()}"
    held.enter_context(held_lock(parent / f"{name}.lock"))
    d = parent / name
    d.mkdir()
    held.callback(shutil.rmtree, d, ignore_errors=True)
    return d


def remove_stale_run_dirs(parent: Path) -> None:
    """Remove the run directories (hold_run_dir) of processes that no longer run; nothing
    else in `parent` is touched."""
    for p in parent.iterdir() if parent.is_dir() else []:
        name = p.name.removesuffix(".lock")
        if not _RUN_DIR.fullmatch(name):
            continue
        with reaped(parent / f"{name}.lock") as dead:
            if dead:
                shutil.rmtree(parent / name, ignore_errors=True)
