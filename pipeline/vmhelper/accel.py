"""Choosing the VM helper's accelerator, and saying why.

`/dev/kvm` opening is not proof that KVM works: on some hosts (nested or paravirtualised
KVM) QEMU aborts, hangs or hits an emulation failure. So `auto` boots the appliance once in
probe mode under KVM with a short timeout, and falls back to TCG when that fails. The verdict
is remembered per host (kernel release, QEMU binary, CPU model) in the user's cache directory
(verdict_dir: $XDG_CACHE_HOME, else ~/.cache), so a new artifacts directory or checkout does
not pay the probe again.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..config import Accel
from ..core.errors import GuestError, PipelineError
from ..core.fsutil import atomic_write_bytes
from ..core.log import info, warn
from ..core.run import require
from .appliance import Appliance
from .qemu import boot

PROBE_TIMEOUT = 15.0  # a working KVM boots the probe in 1-2 s


@dataclass(frozen=True)
class Choice:
    accel: Accel
    reason: str


def verdict_dir() -> Path:
    """Where this user keeps the KVM verdicts: $XDG_CACHE_HOME/cros-guest-pipeline (the XDG
    base directory rule: ~/.cache when unset or not absolute)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base.startswith("/") else Path.home() / ".cache"
    return root / "cros-guest-pipeline"


def kvm_device_problem(dev: Path = Path("/dev/kvm")) -> str | None:
    """Why KVM cannot even be tried, or None."""
    if not dev.exists():
        return f"{dev} does not exist (no KVM on this host)"
    try:
        fd = os.open(dev, os.O_RDWR)
    except OSError as exc:
        return f"{dev} cannot be opened read-write ({exc.strerror}; join the 'kvm' group)"
    os.close(fd)
    return None


def _host_id(qemu_binary: str) -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    qemu = Path(require(qemu_binary)).stat()
    return f"{platform.release()}|{qemu.st_size}:{qemu.st_mtime_ns}|{model}"


def probe_kvm(appliance: Appliance, log_path: Path) -> str | None:
    """Boot the appliance under KVM; None if it worked, else why not."""
    try:
        boot(appliance, Accel.KVM, [], "appliance.mode=probe", log_path=log_path,
             timeout=PROBE_TIMEOUT, memory_mib=256, what="KVM probe", expect="READY",
             retry=False, job=True)
    except GuestError as exc:
        return exc.message.split("\n")[0]
    return None


def choose(setting: Accel, appliance: Appliance, cache_dir: Path,
           kvm_device: Path = Path("/dev/kvm")) -> Choice:
    """The accelerator for `setting`, probing KVM once per host; logs which and why."""
    if setting is Accel.TCG:
        return _say(Choice(Accel.TCG, "build.accel = \"tcg\""))
    problem = kvm_device_problem(kvm_device)
    if problem is None:
        verdict_file = cache_dir / "kvm-verdict.json"
        host = _host_id(appliance.arch.qemu)
        try:
            verdicts = json.loads(verdict_file.read_text())
        except (OSError, ValueError):
            verdicts = {}
        if host in verdicts:
            problem = verdicts[host] or None
            suffix = f" (remembered verdict for this host, {verdict_file})"
        else:
            problem, suffix = _probe_and_remember(appliance, cache_dir, verdicts, host)
        if problem is None:
            return _say(Choice(Accel.KVM, "KVM works" + suffix))
        problem = f"KVM is present but broken: {problem}{suffix}"
    if setting is Accel.KVM:
        raise PipelineError(
            f"build.accel = \"kvm\" but KVM is unusable: {problem}",
            hint="set build.accel = \"auto\" (falls back to TCG) or \"tcg\"; "
            f"delete {cache_dir / 'kvm-verdict.json'} to probe again",
        )
    return _say(Choice(Accel.TCG, problem))


def _probe_and_remember(appliance: Appliance, cache_dir: Path, verdicts: dict[str, str],
                        host: str) -> tuple[str | None, str]:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        log_dir = cache_dir
    except OSError as exc:  # no usable home (a system user): probe, remember nothing
        warn(f"cannot keep the KVM verdict in {cache_dir} ({exc.strerror}); "
             "set XDG_CACHE_HOME to a writable directory")
        log_dir = Path(tempfile.mkdtemp(prefix="kvm-probe."))
    problem = probe_kvm(appliance, log_dir / "kvm-probe.console.log")
    if log_dir is cache_dir:
        verdicts[host] = problem or ""
        atomic_write_bytes(cache_dir / "kvm-verdict.json",
                           json.dumps(verdicts, indent=1).encode())
    return problem, " (probed)"


def _say(choice: Choice) -> Choice:
    info(f"accelerator: {choice.accel.value} ({choice.reason})")
    return choice
