"""Boot a Baguette image the way ChromeOS does and run the conformance checks in it.

Technical details. ChromeOS starts a Baguette VM with its tools disk (ext4 `cros-vm-tools`)
as /dev/vda, the image decompressed into a disk of the size `vmc create --size` gave as
/dev/vdb, and `root=/dev/vdb rw net.ifnames=0`; its kernel has virtio, btrfs and ext4 built
in. The VM helper's kernel stands in for ChromeOS's: its initramfs (qemu/init, mode `boot`)
only loads those modules, mounts /dev/vdb's default subvolume and hands over to the image's
own /sbin/init, which runs to its own default target (no `systemd.run=`, no `init=`). The
image's maitred unit starts the stand-in maitred from the tools disk, which does what the
real one does at boot and at `vmc start`, then runs the checks, writes the verdicts to the
second serial port and powers the VM off. The stand-ins run on the busybox of the guest's
architecture (the appliance's tool tree's). The image is decompressed into a sparse scratch
disk; the artifact itself is never written.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..baguette.compress import decompress_sparse
from ..core.errors import GuestError
from ..core.fsutil import work_tempdir
from ..vmhelper.qemu import Disk, Guest, second_serial_device
from ..vmhelper.toolroot import ToolRoot
from . import checks, toolsdisk

KERNEL_ARGS = "root=/dev/vdb rw net.ifnames=0 systemd.log_color=0"
DISK_SIZE = 4 << 30  # what `vmc create --size` gives; the image must grow to it


def run(zst: Path, guest: Guest, *, setup_user: str, dotfiles: tuple[str, ...],
        log_path: Path, work_dir: Path, disk_size: int = DISK_SIZE) -> checks.Report:
    """Boot `zst` to its default target with the stand-ins; the report of every check.
    The console log stays at `log_path`, the verdicts beside it (`*.results.log`)."""
    app = guest.appliance
    settings = toolsdisk.Settings("baguette", setup_user, second_serial_device(app.arch),
                                  dotfiles)
    results = log_path.with_name(log_path.name.replace(".console.log", "") + ".results.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    results.unlink(missing_ok=True)
    tmp = work_tempdir(work_dir, "conformance")
    stopped = ""
    try:
        tools = tmp / "tools.img"
        busybox = ToolRoot(app.arch, app.tools).program("busybox")  # the guest's own
        toolsdisk.make_disk(toolsdisk.write_tree(tmp / "tools", settings, busybox), tools)
        rootfs = tmp / "rootfs.img"
        size = decompress_sparse(zst, rootfs)
        os.truncate(rootfs, max(size, disk_size))
        try:
            guest.boot([Disk(tools, toolsdisk.LABEL, readonly=True), Disk(rootfs, "rootfs")],
                       f"{KERNEL_ARGS} appliance.mode=boot", log_path=log_path,
                       what="conformance boot", second_serial=results)
        except GuestError as exc:
            stopped = exc.message.split("\n")[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    output = results.read_text(errors="replace") if results.is_file() else ""
    report = checks.parse(output, "baguette", bool(setup_user))
    if stopped:
        report = checks.Report(report.kind, (*report.verdicts,
                                             checks.Verdict("vm", False, stopped)), False)
    return report
