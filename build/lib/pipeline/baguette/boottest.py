"""Verify: boot a Baguette image the way ChromeOS does, and see its own init run a command.

Technical details. ChromeOS starts a Baguette VM with the tools disk (ext4 labelled
`cros-vm-tools`) as /dev/vda, the rootfs as /dev/vdb, and `root=/dev/vdb rw net.ifnames=0`.
Here the VM helper's kernel stands in for ChromeOS's: its initramfs (qemu/init, mode `boot`)
only loads the virtio and btrfs modules ChromeOS's kernel has built in, mounts /dev/vdb's
default subvolume and hands over to the image's own /sbin/init. systemd then runs the command
given as `systemd.run=` (it prints /etc/os-release, then where the tools disk is mounted) and
powers off.
The image is decompressed into a sparse scratch copy; the artifact itself is never written.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import GuestError
from ..core.fsutil import work_tempdir
from ..core.run import run
from ..vmhelper.qemu import Disk, Guest
from .compress import decompress_sparse

TOOLS_LABEL = "cros-vm-tools"
KERNEL_ARGS = "root=/dev/vdb rw net.ifnames=0"
COMMAND = "/bin/cat /etc/os-release"
TOOLS_CHECK = "/usr/bin/findmnt -n -o TARGET,SOURCE,FSTYPE,OPTIONS /opt/google/cros-containers"


@dataclass(frozen=True)
class BootResult:
    os_release: dict[str, str]
    tools_mounted: bool  # the image's own units mounted the tools disk, read-only
    seconds: float
    log_path: Path


def make_tools_disk(path: Path) -> None:
    """A small ext4 labelled like ChromeOS's tools disk, made without root (mke2fs -d)."""
    with tempfile.TemporaryDirectory() as d:
        Path(d, "VERSION").write_text("cros-guest-pipeline stand-in tools disk\n")
        run(["mkfs.ext4", "-q", "-F", "-L", TOOLS_LABEL, "-d", d, path, "16M"])


_RELEASE_LINE = re.compile(
    r"^(?:\[\s*[\d.]+\]\s+)?(?:\S+\[\d+\]:\s+)?"
    r"(ID|NAME|PRETTY_NAME|VERSION_ID|VERSION_CODENAME)=(.*)$")


def parse_os_release(console: str) -> dict[str, str]:
    """os-release fields printed on the console, directly or through journald's prefix."""
    out: dict[str, str] = {}
    for line in console.splitlines():
        m = _RELEASE_LINE.match(line.strip().strip("\r"))
        if m:
            out[m.group(1)] = m.group(2).strip().strip('"')
    return out


def boot_image(zst: Path, guest: Guest, *, log_path: Path, work_dir: Path) -> BootResult:
    """Boot the compressed image `zst`; raise GuestError unless its init ran the command."""
    tmp = work_tempdir(work_dir, "boot")
    try:
        tools = Path(tmp, "tools.img")
        rootfs = Path(tmp, "rootfs.img")
        make_tools_disk(tools)
        decompress_sparse(zst, rootfs)
        cmdline = (f"{KERNEL_ARGS} appliance.mode=boot "
                   f"systemd.run=\"{COMMAND}\" systemd.run=\"{TOOLS_CHECK}\" "
                   "systemd.run_success_action=poweroff "
                   "systemd.run_failure_action=poweroff systemd.default_standard_output=tty "
                   "systemd.show_status=0")
        result = guest.boot([Disk(tools, TOOLS_LABEL, readonly=True), Disk(rootfs, "rootfs")],
                            cmdline, log_path=log_path, what="boot test")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    release = parse_os_release(result.console)
    if "ID" not in release:
        raise GuestError(
            f"boot test: the image's init did not run the command ({COMMAND}); "
            f"console log: {log_path}",
            hint="the console log shows how far the boot got (is /sbin/init systemd?)",
            console_log=str(log_path))
    mounted = re.search(r"/opt/google/cros-containers\s+/dev/vda\s+ext4\s+ro\b", result.console)
    return BootResult(release, mounted is not None, result.seconds, log_path)

