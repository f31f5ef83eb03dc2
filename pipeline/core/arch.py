"""Guest architectures: every name one architecture goes by, in one table.

    name      Debian   LXD      Nix             ELF e_machine  QEMU system emulator
    x86_64    amd64    amd64    x86_64-linux    62 (EM_X86_64)  qemu-system-x86_64 -M q35
    aarch64   arm64    arm64    aarch64-linux   183 (EM_AARCH64) qemu-system-aarch64 -M virt

`images.<name>.arch` takes the first column (LXC's metadata.yaml uses it as it is). The host's
architecture is `platform.machine()`. `elf_machine` reads the architecture an ELF file is for
from its header (the 16-bit e_machine at offset 18, in the byte order EI_DATA names), which is
all a rootfs needs to say what it runs on.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    name: str  # images.toml, LXC metadata.yaml, uname -m
    deb: str  # Debian's architecture (mmdebstrap --architectures, .deb names)
    lxd: str  # simplestreams product arch
    nix: str  # Nix's system
    elf_machine: int
    qemu: str  # the system emulator
    machine: str  # its -machine
    console: str  # the guest kernel's serial console
    qemu_package: str  # the Debian package of the emulator
    kernel_package: str  # Debian's kernel metapackage for it


X86_64 = Arch("x86_64", "amd64", "amd64", "x86_64-linux", 62, "qemu-system-x86_64", "q35",
              "ttyS0", "qemu-system-x86", "linux-image-amd64")
AARCH64 = Arch("aarch64", "arm64", "arm64", "aarch64-linux", 183, "qemu-system-aarch64", "virt",
               "ttyAMA0", "qemu-system-arm", "linux-image-arm64")
ARCHES: dict[str, Arch] = {a.name: a for a in (X86_64, AARCH64)}
_BY_MACHINE = {a.elf_machine: a for a in ARCHES.values()}
# names `uname -m` may print for them
_UNAME = {"x86_64": X86_64, "amd64": X86_64, "aarch64": AARCH64, "arm64": AARCH64}
# other e_machine values a rootfs may hold, named in a refusal
_OTHER_MACHINES = {3: "i386", 40: "arm (32-bit)", 8: "mips", 20: "ppc", 21: "ppc64",
                   22: "s390x", 243: "riscv64", 258: "loongarch64"}


def arch(name: str) -> Arch:
    return ARCHES[name]


def host_arch() -> Arch | None:
    """This machine's architecture, if it is one guests can have."""
    return _UNAME.get(platform.machine())


def elf_machine(head: bytes) -> int | None:
    """e_machine of an ELF header (at least its first 20 bytes), or None if not ELF."""
    if len(head) < 20 or head[:4] != b"\x7fELF" or head[5] not in (1, 2):
        return None
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")


def machine_name(machine: int) -> str:
    """What an e_machine value is called (ours by their config name)."""
    if machine in _BY_MACHINE:
        return _BY_MACHINE[machine].name
    return _OTHER_MACHINES.get(machine, f"ELF machine {machine}")


def from_elf_machine(machine: int) -> Arch | None:
    return _BY_MACHINE.get(machine)
