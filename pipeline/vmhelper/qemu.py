"""The VM helper's host side: boot the appliance under QEMU and read what it says.

Technical details. QEMU gets the appliance kernel and initramfs, the disks as raw virtio
drives in the order given (vda, vdb, ...), no network, no display, and the serial console in
a log file that is kept on disk. The guest reports on the console with `@@`-prefixed lines
(see qemu/init). A guest that does not power off within the timeout is killed, and the error
names the console log. `-no-reboot` with `panic=-1` turns a guest panic into a QEMU exit.
QEMU never outlives the pipeline: SIGTERM is handled like Ctrl-C while it runs (QEMU is
killed and the caller's cleanup runs), and QEMU gets SIGKILL should the process that started
it die anyway (PR_SET_PDEATHSIG).

The emulator follows the appliance's architecture: x86_64 is `qemu-system-x86_64 -M q35`
(console ttyS0, a second 16550 UART as ttyS1), aarch64 is `qemu-system-aarch64 -M virt`
(console on its PL011, ttyAMA0; a PCI 16550, `pci-serial`, is the second port, ttyS0 there).
Under TCG an aarch64 guest gets `-cpu max` with QEMU's own pointer-authentication algorithm
(`pauth-impdef=on`: the architected QARMA cipher costs a lot to emulate).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Accel
from ..core.arch import X86_64, Arch
from ..core.errors import GuestError
from ..core.log import Status, warn
from ..core.run import log_command, require_version
from .appliance import Appliance


@dataclass(frozen=True)
class Disk:
    """A raw virtio disk; the guest finds it by `serial` (qemu/init: disk_by_serial)."""

    path: Path
    serial: str
    readonly: bool = False


@dataclass(frozen=True)
class Guest:
    """How the VM helper's guests run: the appliance, the accelerator, the limits, and the
    clock they start at (SOURCE_DATE_EPOCH, or None for the host's time)."""

    appliance: Appliance
    accel: Accel
    timeout: float
    memory_mib: int = 1024
    clock: int | None = None
    accel_reason: str = ""  # why this accelerator (accel.choose)

    def boot(self, disks: list[Disk], cmdline: str, *, log_path: Path, what: str,
             expect: str | None = None, second_serial: Path | None = None,
             job: bool = False) -> GuestResult:
        return boot(self.appliance, self.accel, disks, cmdline, log_path=log_path,
                    timeout=self.timeout, memory_mib=self.memory_mib, what=what,
                    expect=expect, clock=self.clock, second_serial=second_serial, job=job)


@dataclass
class GuestResult:
    console: str
    log_path: Path
    seconds: float
    markers: dict[str, list[str]] = field(default_factory=dict)

    def marker(self, name: str) -> str | None:
        values = self.markers.get(name)
        return values[-1] if values else None


# Kernel arguments for every guest (all are throwaway): under TCG, mitigations=off alone cuts
# about a fifth of the appliance's boot (no retpolines, no page-table isolation to emulate);
# no crypto self-tests, no TSC watchdog.
KERNEL_ARGS = "mitigations=off cryptomgr.notests"
ARCH_KERNEL_ARGS = {"x86_64": "tsc=reliable no_timer_check"}
JOB_MEMORY_MIB = 384  # a short job's guest: less memory to initialise at boot
# under TCG, x86_64 jobs take qemu64 (no AVX: fewer raid6 benchmarks at btrfs load, cheaper to
# emulate); aarch64 guests take `max` with QEMU's cheap pointer authentication
TCG_CPU = {"x86_64": ("max", "qemu64"), "aarch64": ("max,pauth-impdef=on",) * 2}
SECOND_SERIAL = {"x86_64": "ttyS1", "aarch64": "ttyS0"}  # the guest's name for second_serial


def second_serial_device(a: Arch) -> str:
    """/dev/... of the port `second_serial` writes to, as the guest's kernel names it."""
    return f"/dev/{SECOND_SERIAL[a.name]}"


def _cpu(a: Arch, accel: Accel, job: bool) -> str:
    if accel is Accel.KVM:
        return "host"
    boot, short = TCG_CPU[a.name]
    return short if job else boot


def qemu_argv(appliance: Appliance, accel: Accel, disks: list[Disk], cmdline: str,
              memory_mib: int, log_path: Path, clock: int | None = None,
              second_serial: Path | None = None, job: bool = False) -> list[str]:
    """QEMU's argv: q35 with virtio-pci disks in the order given (vda, vdb, ...).

    `job`: the appliance's own init runs a short, single-threaded job (pack, delta, inspect,
    probe) rather than booting an image's init: one vCPU (no secondary CPU to bring up), at
    most JOB_MEMORY_MIB, and under TCG the plain qemu64 CPU model.

    The emulator, machine and console follow the appliance's architecture (`arch`). An
    x86_64 kernel boots through PVH when the appliance holds an uncompressed vmlinux (no
    firmware, no decompression). `microvm` boots ~0.5 s faster but stalled before any
    console output in about 1 boot of 30 here, q35 in none of 60. With `clock` (unix seconds,
    SOURCE_DATE_EPOCH) the guest's clock starts there instead of now, so the times the guest
    kernel writes into the image (ctime, otime of what it changes) carry no build date.
    `second_serial` is a file the guest's /dev/ttyS1 writes to (the console is ttyS0).
    """
    a = appliance.arch
    args = " ".join(filter(None, (KERNEL_ARGS, ARCH_KERNEL_ARGS.get(a.name, ""))))
    argv = [
        require_version(a.qemu),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-machine", a.machine,
        "-accel", accel.value,
        "-cpu", _cpu(a, accel, job),
        "-smp", "1" if job else str(cpu_count()),
        "-m", str(min(memory_mib, JOB_MEMORY_MIB) if job else memory_mib),
        "-kernel", str(appliance.kernel),
        "-initrd", str(appliance.initrd),
        "-append", f"console={a.console} panic=-1 quiet loglevel=4 {args} {cmdline}",
        "-serial", f"file:{log_path}",
        "-nic", "none",
    ]
    if second_serial is not None and a is X86_64:
        argv += ["-serial", f"file:{second_serial}"]
    elif second_serial is not None:  # virt has one UART of its own: a PCI one is the second
        argv += ["-chardev", f"file,id=serial1,path={second_serial}",
                 "-device", "pci-serial,chardev=serial1"]
    if clock is not None:
        start = datetime.datetime.fromtimestamp(clock, datetime.UTC)
        argv += ["-rtc", f"base={start.strftime('%Y-%m-%dT%H:%M:%S')},clock=vm"]
    for i, d in enumerate(disks):
        opts = (f"id=disk{i},file={d.path},format=raw,if=none,cache=unsafe,discard=unmap,"
                "werror=report,rerror=report")  # a full host disk: an I/O error, not a pause
        if d.readonly:
            opts += ",readonly=on"
        argv += ["-drive", opts, "-device", f"virtio-blk-pci,drive=disk{i},serial={d.serial}"]
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


BOOT_DEADLINE = 60.0  # the appliance prints @@BOOTED ~3 s after start under TCG


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt meanwhile, as SIGINT does (main thread only: Python
    runs signal handlers there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_PRCTL: Callable[..., int] | None
try:  # resolved here, not in the forked child (no dynamic loading between fork and exec)
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the thread that started it ends (PR_SET_PDEATHSIG;
    the whole process is gone then, or that thread finished waiting for it)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL))


def _run_qemu(argv: list[str], log_path: Path, timeout: float,
              deadline: float) -> tuple[int | None, str, bool]:
    """Run QEMU until it exits; returns (exit code or None if killed, stderr, booted)."""
    log_path.write_bytes(b"")
    with _terminate_as_interrupt():
        return _wait_qemu(argv, log_path, timeout, deadline)


def _wait_qemu(argv: list[str], log_path: Path, timeout: float,
               deadline: float) -> tuple[int | None, str, bool]:
    log_command(argv)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
    start = time.monotonic()
    booted = False
    status = Status("guest")  # its @@STEP lines as they arrive (on a terminal)
    try:
        while True:
            try:
                _, err = proc.communicate(timeout=0.25)
                return proc.returncode, err.decode(errors="replace").strip(), True
            except subprocess.TimeoutExpired:
                pass
            elapsed = time.monotonic() - start
            if not booted or status.enabled:
                console = log_path.read_bytes()
                booted = booted or b"@@BOOTED" in console
                steps = console.rsplit(b"@@STEP ", 1)
                if len(steps) == 2:
                    status.line(steps[1].split(b"\n", 1)[0].decode(errors="replace"))
            if elapsed > timeout or (not booted and elapsed > deadline):
                return None, "", booted
    finally:
        status.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def boot(appliance: Appliance, accel: Accel, disks: list[Disk], cmdline: str, *,
         log_path: Path, timeout: float, memory_mib: int = 1024, what: str = "VM helper",
         expect: str | None = None, retry: bool = True, clock: int | None = None,
         second_serial: Path | None = None, job: bool = False) -> GuestResult:
    """Boot the appliance and wait for it to power off; raise GuestError on any failure.

    `expect` names the marker that means success (e.g. "PACKED"); `@@ERROR` always fails.
    A guest that has not even reached the appliance's /init by BOOT_DEADLINE is killed and
    started once more (unless `retry` is false): emulated boots very rarely stall before the
    kernel prints anything.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = qemu_argv(appliance, accel, disks, cmdline, memory_mib, log_path, clock, second_serial,
                     job)
    start = time.monotonic()
    for attempt in (1, 2):
        code, stderr, booted = _run_qemu(argv, log_path, timeout, min(BOOT_DEADLINE, timeout))
        if code is not None or booted or attempt == 2 or not retry:
            break
        warn(f"{what}: the guest did not start within {BOOT_DEADLINE:.0f} s; starting it again")
    if code is None:
        late = "did not finish" if booted else "did not start"
        limit = timeout if booted else min(BOOT_DEADLINE, timeout)
        raise GuestError(
            f"{what}: the guest {late} within {limit:g} s and was killed "
            f"(console log: {log_path})",
            hint="read the console log's last lines; raise build.vm_timeout if the machine "
            "is just slow (TCG emulation is several times slower than KVM)",
            console_log=str(log_path),
        )
    seconds = time.monotonic() - start
    console = log_path.read_text(errors="replace")
    markers = parse_markers(console)
    result = GuestResult(console, log_path, seconds, markers)
    if "ERROR" in markers:
        raise GuestError(
            f"{what}: the guest reported an error: {markers['ERROR'][-1]} "
            f"(console log: {log_path})",
            hint="the console log shows the guest's whole run",
            console_log=str(log_path),
        )
    if code != 0:
        raise GuestError(
            f"{what}: QEMU exited with {code}: {_tail(stderr)} (console log: {log_path})",
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
