"""The VM helper's host side: boot the appliance under QEMU and read what it says.

Technical details. QEMU gets the appliance kernel and initramfs, the disks as raw virtio
drives in the order given (vda, vdb, ...), no network, no display, and the serial console in
a log file that is kept on disk. The guest reports on the console with `@@`-prefixed lines
(see qemu/init). A guest that does not power off within the timeout is killed, and the error
names the console log. `-no-reboot` with `panic=-1` turns a guest panic into a QEMU exit.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .appliance import Appliance
from .config import Accel
from .errors import GuestError
from .run import require


@dataclass(frozen=True)
class Disk:
    """A raw virtio disk; the guest finds it by `serial` (qemu/init: disk_by_serial)."""

    path: Path
    serial: str
    readonly: bool = False


@dataclass
class GuestResult:
    console: str
    log_path: Path
    seconds: float
    markers: dict[str, list[str]] = field(default_factory=dict)

    def marker(self, name: str) -> str | None:
        values = self.markers.get(name)
        return values[-1] if values else None


def qemu_argv(appliance: Appliance, accel: Accel, disks: list[Disk], cmdline: str,
              memory_mib: int, log_path: Path, smp: int | None = None,
              machine: str = "microvm") -> list[str]:
    """QEMU's argv. `microvm` (virtio-mmio, no PCI, no firmware) boots the appliance in
    about half the time of `q35`; the boot test uses `q35` for ChromeOS's PCI disk order."""
    argv = [
        require("qemu-system-x86_64"),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-machine", "microvm,acpi=on" if machine == "microvm" else machine,
        "-accel", accel.value,
        "-cpu", "host" if accel is Accel.KVM else "max",
        # one vCPU boots faster under TCG; the guest's work is serial anyway
        "-smp", str(smp or (1 if machine == "microvm" else cpu_count())),
        "-m", str(memory_mib),
        "-kernel", str(appliance.kernel),
        "-initrd", str(appliance.initrd),
        "-append", f"console=ttyS0 panic=-1 quiet loglevel=4 {cmdline}",
        "-serial", f"file:{log_path}",
        "-nic", "none",
    ]
    device = "virtio-blk-device" if machine == "microvm" else "virtio-blk-pci"
    for i, d in enumerate(disks):
        opts = f"id=disk{i},file={d.path},format=raw,if=none,cache=unsafe,discard=unmap"
        if d.readonly:
            opts += ",readonly=on"
        argv += ["-drive", opts, "-device", f"{device},drive=disk{i},serial={d.serial}"]
    return argv


def parse_markers(console: str) -> dict[str, list[str]]:
    markers: dict[str, list[str]] = {}
    for line in console.splitlines():
        line = line.strip("\r")
        idx = line.find("@@")
        if idx < 0:
            continue
        word, _, rest = line[idx + 2:].partition(" ")
        if word:
            markers.setdefault(word, []).append(rest)
    return markers


def boot(appliance: Appliance, accel: Accel, disks: list[Disk], cmdline: str, *,
         log_path: Path, timeout: float, memory_mib: int = 1024, what: str = "VM helper",
         expect: str | None = None, machine: str = "microvm") -> GuestResult:
    """Boot the appliance and wait for it to power off; raise GuestError on any failure.

    `expect` names the marker that means success (e.g. "PACKED"); `@@ERROR` always fails.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_bytes(b"")
    argv = qemu_argv(appliance, accel, disks, cmdline, memory_mib, log_path, machine=machine)
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        _, stderr_b = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise GuestError(
            f"{what}: the guest did not finish within {timeout:.0f} s and was killed "
            f"(console log: {log_path})",
            hint="read the console log's last lines; raise build.vm_timeout if the machine "
            "is just slow (TCG emulation is several times slower than KVM)",
            console_log=str(log_path),
        ) from None
    seconds = time.monotonic() - start
    console = log_path.read_text(errors="replace")
    stderr = stderr_b.decode(errors="replace").strip()
    markers = parse_markers(console)
    result = GuestResult(console, log_path, seconds, markers)
    if "ERROR" in markers:
        raise GuestError(
            f"{what}: the guest reported an error: {markers['ERROR'][-1]} "
            f"(console log: {log_path})",
            hint="the console log shows the guest's whole run",
            console_log=str(log_path),
        )
    if proc.returncode != 0:
        raise GuestError(
            f"{what}: QEMU exited with {proc.returncode}: {_tail(stderr)} "
            f"(console log: {log_path})",
            hint="check the QEMU message above; with build.accel = \"kvm\" try \"tcg\"",
            console_log=str(log_path),
        )
    if expect is not None and expect not in markers:
        panic = "Kernel panic" in console
        raise GuestError(
            f"{what}: the guest stopped without reporting {expect}"
            f"{' (kernel panic)' if panic else ''}: {_tail(console)} (console log: {log_path})",
            hint="the console log shows the guest's whole run",
            console_log=str(log_path),
        )
    return result


def _tail(text: str, lines: int = 4) -> str:
    kept = [ln.strip() for ln in text.strip().splitlines() if ln.strip()][-lines:]
    return " | ".join(kept)[-600:]


def memory_mib(nbytes: int) -> int:
    return max(256, nbytes // (1024 * 1024))


def cpu_count() -> int:
    return max(1, min(4, len(os.sched_getaffinity(0))))
