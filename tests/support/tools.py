"""Skipping a test whose host tool is missing (a failure under CI, where every tool is
installed), and a small tmpfs for full-disk tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.core.run import which
from pipeline.vmhelper.toolroot import host_root

# the host's own emulator: qemu-system-x86_64 on x86_64, qemu-system-aarch64 on an ARM host
VM_TOOLS = (host_root().arch.qemu, "mkfs.btrfs", "btrfs", "busybox", "tar", "modprobe")

def missing_vm_tools() -> list[str]:
    missing = [t for t in VM_TOOLS if which(t) is None]
    if not list(Path("/boot").glob("vmlinuz-*")):
        missing.append(f"a kernel in /boot ({host_root().arch.kernel_package})")
    return missing


def tool_missing(reason: str) -> None:
    """Skip a test whose tool is missing; in CI (CI=true), where setup installs every tool,
    fail it instead, so a skip can never pass for a test that ran."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@contextlib.contextmanager
def small_tmpfs(mountpoint: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `mountpoint` (made if missing), for full-disk tests."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mountpoint.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
                   check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def require_vm() -> None:
    """Skip where the VM helper's tools are missing; in CI (CI=true) that is a failure."""
    missing = missing_vm_tools()
    if missing:
        tool_missing(f"VM helper tools missing: {', '.join(missing)} "
                     "(run `python3 -m pipeline.hostsetup --tests`)")




def sigint_as_from_a_terminal() -> None:
    """A child's preexec_fn: SIGINT back to its default, so Ctrl-C reaches the child's Python
    as KeyboardInterrupt the way a terminal delivers it. A test run started in the background
    of a shell (`cmd &`) inherits SIGINT ignored, and Python then installs no handler."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
