"""The one way to run a host tool: logs the argv, captures stderr, raises ToolError.

Every tool the pipeline calls is listed in HOST_TOOLS with the Debian package that provides
it, so a missing tool is reported as "install PACKAGE", never as a bare FileNotFoundError.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from .errors import ToolError

log = logging.getLogger("pipeline.run")

# tool name -> Debian package that ships it
HOST_TOOLS: dict[str, str] = {
    "qemu-system-x86_64": "qemu-system-x86",
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
}

SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


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
) -> subprocess.CompletedProcess[bytes]:
    """Run argv[0] (looked up with `require`), raising ToolError with its stderr on failure.

    `stdin`/`stdout` may be open files, so large streams never pass through Python.
    """
    args = [str(a) for a in argv]
    args[0] = require(args[0]) if "/" not in args[0] else args[0]
    log.debug("run: %s", " ".join(args))
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            env=full_env,
            input=input,
            stdin=None if input is not None else (stdin or subprocess.DEVNULL),
            stdout=subprocess.PIPE if capture_stdout else (stdout or subprocess.DEVNULL),
            stderr=subprocess.PIPE,
            timeout=timeout,
            check=False,
        )
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
