"""Running another architecture's programs on this host: qemu-user through binfmt_misc.

mmdebstrap builds a foreign-architecture Debian rootfs (`--architectures=arm64` on x86_64)
by running its maintainer scripts in the tree; the kernel hands each foreign ELF to the
interpreter registered for it in binfmt_misc. Debian's qemu-user-static ships those
interpreters, registered with the `F` flag (opened once, at registration, so they work inside
the chroot too), and binfmt-support registers them (`update-binfmts --enable`), which needs
binfmt_misc mounted at /proc/sys/fs/binfmt_misc: a root-only step that an unprivileged
container is usually refused. Standard library only: `pipeline.hostsetup` uses it before the
virtual environment exists.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from .arch import Arch, host_arch

BINFMT_MISC = Path("/proc/sys/fs/binfmt_misc")


def handler_name(a: Arch) -> str:
    """The handler Debian's qemu-user-static registers for `a` (qemu-aarch64)."""
    return f"qemu-{a.name}"


def problem(a: Arch, root: Path = BINFMT_MISC) -> str | None:
    """Why this host cannot run `a`'s programs, or None (it can: natively, or through an
    enabled handler)."""
    if host_arch() is a:
        return None
    if not (root / "status").is_file():
        return f"binfmt_misc is not mounted at {root}"
    if (root / "status").read_text().strip() != "enabled":
        return f"binfmt_misc is disabled ({root / 'status'})"
    entry = root / handler_name(a)
    if not entry.is_file():
        return f"no binfmt_misc handler {handler_name(a)} is registered"
    lines = entry.read_text().splitlines()
    if not lines or lines[0].strip() != "enabled":
        return f"the binfmt_misc handler {handler_name(a)} is disabled"
    return None


def register(a: Arch, root: Path = BINFMT_MISC) -> str | None:
    """Mount binfmt_misc if needed and enable `a`'s handler (root only); None on success,
    else why not, in one line."""
    if problem(a, root) is None:
        return None
    if not (root / "status").is_file():
        mount = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(root)],
                               capture_output=True, text=True, check=False)
        if mount.returncode != 0:
            why = mount.stderr.strip().splitlines()[-1:] or ["mount failed"]
            return f"binfmt_misc cannot be mounted at {root}: {why[0]}"
    enable = subprocess.run(["update-binfmts", "--enable", handler_name(a)],
                            capture_output=True, text=True, check=False)
    left = problem(a, root)
    if left is not None:
        said = (enable.stderr or enable.stdout).strip().splitlines()[-1:]
        return left + (f" (update-binfmts: {said[0]})" if said else "")
    return None
