"""The one way to run a host tool: logs the argv, captures stderr, raises ToolError.

Every tool the pipeline calls is listed in HOST_TOOLS with the Debian package that provides
it, so a missing tool is reported as "install PACKAGE", never as a bare FileNotFoundError.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from .errors import ToolError
from .log import Status, showing_progress

log = logging.getLogger("pipeline.run")

# tool name -> Debian package that ships it
HOST_TOOLS: dict[str, str] = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-system-aarch64": "qemu-system-arm",
    "depmod": "kmod",
    "update-binfmts": "binfmt-support",
    "mkfs.btrfs": "btrfs-progs",
    "btrfs": "btrfs-progs",
    "busybox": "busybox-static",
    "tar": "tar",
    "zstd": "zstd",
    "mmdebstrap": "mmdebstrap",
    "mkfs.ext4": "e2fsprogs",
    "modprobe": "kmod",
    "ldd": "libc-bin",
    "nix": "nix-bin",
    "guestfish": "libguestfs-tools",
    "xz": "xz-utils",
    "tar2sqfs": "squashfs-tools-ng",
    "lxc": "lxd-client",
    "cp": "coreutils",
    "chown": "coreutils",
    "chmod": "coreutils",
    "xargs": "findutils",
    "unshare": "util-linux",
    "newuidmap": "uidmap",
}

SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")

# tool -> (oldest version accepted, what needs it). Tested here with btrfs-progs 6.2 and
# QEMU 7.2; the floors are Debian 11's versions, older than anything the features need.
MIN_VERSIONS: dict[str, tuple[tuple[int, ...], str]] = {
    "mkfs.btrfs": ((5, 10), "mkfs.btrfs --rootdir with --shrink (4.14.1+) and a btrfs whose "
                   "`subvolume set-default` takes just a path; 6.12+ makes the subvolume "
                   "itself (pack.SUBVOL_MKFS)"),
    "qemu-system-aarch64": ((6, 2), "-cpu max,pauth-impdef=on (6.2+)"),
    "qemu-system-x86_64": ((5, 2), "PVH boot of the appliance's vmlinux (4.0+), "
                           "`-accel` and `-nic none`"),
}
_VERSION_RE = re.compile(r"(?:version|\bv)\s*(\d+)\.(\d+)(?:\.(\d+))?")
_BARE_VERSION_RE = re.compile(r"\b(\d+)\.(\d+)(?:\.(\d+))?")  # `nix (Nix) 2.8.0`


def which(tool: str) -> str | None:
    """Find a tool on PATH, then in the sbin directories a non-root PATH often lacks."""
    found = shutil.which(tool)
    if found:
        return found
    for d in SBIN_DIRS:
        candidate = Path(d) / tool
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def require(tool: str) -> str:
    """Absolute path of a host tool, or a ToolError naming the package to install."""
    path = which(tool)
    if path is None:
        package = HOST_TOOLS.get(tool, tool)
        raise ToolError(
            f"host tool {tool!r} is not installed",
            hint=f"install the Debian package {package!r} "
            f"(apt-get install {package}), or run `python3 -m pipeline.hostsetup`",
        )
    return path


def tool_version(path: str) -> tuple[int, ...] | None:
    """The version `path --version` prints (e.g. (6, 2)), None if it prints none."""
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True,
                              timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = proc.stdout + proc.stderr
    m = _VERSION_RE.search(text) or _BARE_VERSION_RE.search(text)
    if m is None:
        return None
    return tuple(int(g) for g in m.groups() if g is not None)


@functools.cache
def _checked(tool: str, path: str) -> None:
    minimum, needed_for = MIN_VERSIONS[tool]
    found = tool_version(path)
    if found is not None and found < minimum:
        package = HOST_TOOLS.get(tool, tool)
        have, need = ".".join(map(str, found)), ".".join(map(str, minimum))
        raise ToolError(
            f"{tool} {have} ({path}, from {package}) is too old: the pipeline needs "
            f"{need} or newer, for {needed_for}",
            hint=f"install a newer {package} (Debian 12 ships a recent enough one), or put "
            "a newer build first on PATH")


def require_version(tool: str) -> str:
    """Like `require`, and the tool is at least its MIN_VERSIONS version (checked once)."""
    path = require(tool)
    if tool in MIN_VERSIONS:
        _checked(tool, path)
    return path


def log_command(argv: Sequence[str | os.PathLike[str]]) -> None:
    """The debug line of a command the pipeline runs (`--debug`), for callers that start
    processes themselves (QEMU, Nix, the user-namespace helper)."""
    log.debug("run: %s", " ".join(str(a) for a in argv))


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    stdin: IO[bytes] | None = None,
    stdout: IO[bytes] | None = None,
    capture_stdout: bool = False,
    timeout: float | None = None,
    hint: str = "",
    progress: str = "",
) -> subprocess.CompletedProcess[bytes]:
    """Run argv[0] (looked up with `require`), raising ToolError with its stderr on failure.

    `stdin`/`stdout` may be open files, so large streams never pass through Python.
    `progress` names a status line shown while it runs (on a terminal only): the bytes it
    has read of a `stdin` file, and its newest stderr line.
    """
    args = [str(a) for a in argv]
    args[0] = require(args[0]) if "/" not in args[0] else args[0]
    log_command(args)
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    streams = {"cwd": cwd, "env": full_env,
               "stdin": None if input is not None else (stdin or subprocess.DEVNULL),
               "stdout": subprocess.PIPE if capture_stdout else (stdout or subprocess.DEVNULL),
               "stderr": subprocess.PIPE}
    try:
        if progress and input is None and not capture_stdout and showing_progress():
            proc = _run_showing(args, streams, stdin, timeout, progress)
        else:
            proc = subprocess.run(args, input=input, timeout=timeout, check=False,
                                  **streams)  # type: ignore[call-overload]
    except subprocess.TimeoutExpired as exc:
        raise ToolError(
            f"{Path(args[0]).name} did not finish within {timeout:.0f} s",
            hint=hint or "the machine may be overloaded; retry, or raise the timeout",
        ) from exc
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace").strip()
        tail = "\n".join(stderr.splitlines()[-15:])
        raise ToolError(
            f"{Path(args[0]).name} failed (exit {proc.returncode}): "
            f"{' '.join(args[1:])[:300]}\n{tail}",
            hint=hint,
            stderr=stderr,
        )
    return proc


def _run_showing(args: list[str], streams: Mapping[str, Any], stdin: IO[bytes] | None,
                 timeout: float | None, desc: str) -> subprocess.CompletedProcess[bytes]:
    """subprocess.run with a status line: stderr is read line by line (and kept whole for
    the error), the offset of a `stdin` file (shared with the child) is the bytes done."""
    try:
        total = os.fstat(stdin.fileno()).st_size if stdin is not None else 0
    except (OSError, ValueError):
        total = 0
    status = Status(desc, total)
    lines: list[bytes] = []
    proc = subprocess.Popen(args, **streams)  # type: ignore[call-overload]

    def read() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            lines.append(raw)
            status.line(raw.decode(errors="replace"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            try:
                proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if deadline is not None and time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    raise
            if total and stdin is not None:
                status.position(os.lseek(stdin.fileno(), 0, os.SEEK_CUR))
        reader.join()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        status.close()
    return subprocess.CompletedProcess(args, proc.returncode, None, b"".join(lines))
