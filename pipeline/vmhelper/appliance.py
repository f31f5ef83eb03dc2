"""The VM helper's appliance: the host kernel plus a small initramfs, cached by content.

Technical details. The initramfs holds `qemu/init` as /init, static busybox, GNU tar,
`btrfs`, GNU xargs, chown and chmod with the shared libraries `ldd` lists, and the kernel
modules the guest needs resolved with `modprobe -S KVER --show-depends`: virtio disks and
btrfs for every mode, ext4 (and dummy) listed apart for mode `boot` only. Every byte of it is
unpacked and every module relocated at each boot, which costs under TCG. Its store
key hashes the kernel, every copied file, the recipe and the init script, so a kernel or
btrfs-progs upgrade rebuilds it and nothing else does.

It is made from a tool tree (toolroot.py): the host itself for the host's architecture, or a
tree of another architecture's Debian packages (an aarch64 appliance on an x86_64 host, for
verify of an aarch64 image). From another tree, libraries are read from each program's ELF
header (elfdeps.py) instead of `ldd`, which can only run the host's programs, and modules are
resolved with `modprobe -d TREE`. An aarch64 kernel is used as it is (QEMU loads its Image);
an x86_64 bzImage is unpacked for PVH boot.
"""

from __future__ import annotations

import lzma
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..core.arch import X86_64, Arch
from ..core.errors import PipelineError
from ..core.fsutil import atomic_path
from ..core.log import step
from ..core.paths import QEMU_DIR
from ..core.run import require, run
from ..store.entries import Store, problems
from ..store.hashing import FileHashMemo, sha256_file
from ..store.keys import StageInputs
from . import elfdeps
from .cpio import CpioWriter
from .toolroot import ToolRoot, host_root

VERSION = 4  # 3: boot-only modules; no mkfs.btrfs, zstd; 4: its architecture
INIT_SCRIPT = QEMU_DIR / "init"
RECIPE = QEMU_DIR / "appliance.toml"


@dataclass(frozen=True)
class Appliance:
    kernel: Path
    initrd: Path
    key: str
    arch: Arch = X86_64  # what its kernel and programs run on (qemu.py picks the emulator)
    tools: Path = Path("/")  # the tool tree it was made from (its busybox serves conformance)


@dataclass(frozen=True)
class Plan:
    """Everything the initramfs will hold: appliance path -> host path."""

    kernel: Path
    kernel_version: str
    files: dict[str, Path]
    modules: list[Path]
    boot_modules: list[Path]  # loaded only when the guest boots an image (mode `boot`)
    tools: ToolRoot = field(default_factory=host_root)


def find_kernel(configured: Path | None, root: Path = Path("/"),
                package: str = X86_64.kernel_package) -> tuple[Path, str]:
    if configured is not None:
        kernel = configured
    else:
        candidates = sorted((root / "boot").glob("vmlinuz-*"), key=_version_key)
        if not candidates:
            raise PipelineError(
                f"no kernel for the VM helper: {root / 'boot'}/vmlinuz-* not found",
                hint=f"install one (apt-get install {package}), "
                "or set build.kernel in images.toml",
            )
        kernel = candidates[-1]
    m = re.match(r"vmlinuz-(.+)$", kernel.name)
    if not kernel.is_file() or not m:
        raise PipelineError(f"build.kernel: {kernel} is not a vmlinuz-VERSION file",
                            hint="point it at /boot/vmlinuz-<version> with modules installed")
    try:
        with open(kernel, "rb"):
            pass
    except PermissionError:
        raise PipelineError(f"{kernel} is not readable by this user",
                            hint=f"make it readable (sudo chmod 0644 {kernel})") from None
    version = m.group(1)
    if not (root / "lib" / "modules" / version).is_dir():
        raise PipelineError(f"no modules for kernel {version} in "
                            f"{root / 'lib' / 'modules' / version}",
                            hint="install the matching linux-image package")
    return kernel, version


def _version_key(p: Path) -> list[int | str]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def _libraries(binary: str) -> list[Path]:
    if not _has_interpreter(binary):
        return []  # static: nothing to copy
    proc = run(["ldd", binary], capture_stdout=True)
    libs = []
    for line in proc.stdout.decode().splitlines():
        m = re.search(r"(/\S+) \(0x", line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


def _has_interpreter(binary: str) -> bool:
    """True for a dynamically linked ELF64 (it has a PT_INTERP program header)."""
    with open(binary, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        phoff = int.from_bytes(head[0x20:0x28], "little")
        phentsize = int.from_bytes(head[0x36:0x38], "little")
        phnum = int.from_bytes(head[0x38:0x3A], "little")
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return any(int.from_bytes(table[i:i + 4], "little") == 3  # PT_INTERP
               for i in range(0, len(table), phentsize))


def _modules(version: str, names: list[str], root: Path = Path("/")) -> list[Path]:
    out: list[Path] = []
    tree = [] if root == Path("/") else ["-d", str(root)]
    for name in names:
        proc = run(["modprobe", *tree, "-S", version, "--show-depends", name],
                   capture_stdout=True,
                   hint=f"the kernel {version} must provide the module {name}")
        for line in proc.stdout.decode().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "insmod":
                path = Path(parts[1])
                if path not in out:
                    out.append(path)
    return out


def plan(kernel_setting: Path | None, tools: ToolRoot | None = None) -> Plan:
    """What the appliance holds, from the host or from `tools` (build.kernel is the host's
    kernel: a tool tree of another architecture brings its own)."""
    tools = tools or host_root()
    if tools.is_host:
        kernel, version = find_kernel(kernel_setting, package=tools.arch.kernel_package)
    else:
        kernel, version = find_kernel(None, tools.root, tools.arch.kernel_package)
    recipe = tomllib.loads(RECIPE.read_text())
    files: dict[str, Path] = {}
    for inside, tool in recipe["binaries"].items():
        if tools.is_host:
            host = require(tool)
            files[inside] = Path(host)
            for lib in _libraries(host):
                files.setdefault(str(lib), lib)
        else:
            program = tools.program(tool)
            files[inside] = program
            for lib_inside, lib in elfdeps.libraries(tools.root, program,
                                                     tools.multiarch).items():
                files.setdefault(lib_inside, lib)
    modules = _modules(version, list(recipe["modules"]["load"]), tools.root)
    boot = [m for m in _modules(version, list(recipe["modules"].get("boot", [])), tools.root)
            if m not in modules]
    return Plan(kernel, version, files, modules, boot, tools)


def inputs(p: Plan, memo: FileHashMemo) -> StageInputs:
    return StageInputs(
        "appliance",
        VERSION,
        {
            "arch": p.tools.arch.name,
            "kernel": memo.sha256(p.kernel),
            "init": sha256_file(INIT_SCRIPT),
            "recipe": sha256_file(RECIPE),
            "files": {inside: memo.sha256(host) for inside, host in sorted(p.files.items())},
            "modules": [memo.sha256(m) for m in p.modules],
            "boot_modules": [memo.sha256(m) for m in p.boot_modules],
        },
    )


def _module_bytes(path: Path) -> tuple[str, bytes]:
    name = path.name
    if name.endswith(".xz"):
        return name[:-3], lzma.decompress(path.read_bytes())
    if name.endswith(".zst"):
        import zstandard

        return name[:-4], zstandard.ZstdDecompressor().decompressobj().decompress(
            path.read_bytes())
    return name, path.read_bytes()


def write_initrd(p: Plan, target: Path) -> None:
    with atomic_path(target) as tmp, open(tmp, "wb") as out:
        cpio = CpioWriter(out)
        made: set[str] = set()

        def mkdirs(path: str) -> None:
            parts = Path(path).parent.parts[1:]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in made:
                    cpio.directory(d)
                    made.add(d)

        for d in ("proc", "sys", "dev", "tmp", "mnt", "job", "modules"):
            mkdirs(f"/{d}/x")
        cpio.file("init", INIT_SCRIPT.read_bytes(), 0o755)
        for inside, host in sorted(p.files.items()):
            mkdirs(inside)
            cpio.file(inside.lstrip("/"), Path(host).resolve().read_bytes(), 0o755)
        for listing, mods in (("order", p.modules), ("boot-order", p.boot_modules)):
            order = []
            for m in mods:
                name, data = _module_bytes(m)
                cpio.file(f"modules/{name}", data, 0o644)
                order.append(name)
            cpio.file(f"modules/{listing}", ("\n".join(order) + "\n").encode(), 0o644)
        cpio.close()


def pvh_kernel(bzimage: bytes) -> bytes | None:
    """The uncompressed vmlinux inside a bzImage, if it can boot through PVH.

    QEMU loads such an ELF directly (no firmware, no in-guest decompression), which saves
    about 2 s of every boot under TCG. None when the payload's compression is unknown or the
    kernel lacks the PVH entry note (CONFIG_PVH); the bzImage is used then.
    """
    import gzip
    import zlib

    for magic, unpack in (
        (b"\xfd7zXZ\x00", lambda d: lzma.LZMADecompressor().decompress(d)),
        (b"\x28\xb5\x2f\xfd", _zstd_first_frame),
        (b"\x1f\x8b\x08", lambda d: zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(d)),
    ):
        start = bzimage.find(magic)
        if start < 0:
            continue
        try:
            elf = unpack(bzimage[start:])
        except (lzma.LZMAError, zlib.error, gzip.BadGzipFile, ValueError, Exception):
            continue
        if elf[:4] == b"\x7fELF" and _has_pvh_note(elf):
            return elf
    return None


def _zstd_first_frame(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def _has_pvh_note(elf: bytes) -> bool:
    """True if a PT_NOTE holds the Xen note XEN_ELFNOTE_PHYS32_ENTRY (18)."""
    if elf[4] != 2:
        return False
    phoff = int.from_bytes(elf[0x20:0x28], "little")
    phentsize = int.from_bytes(elf[0x36:0x38], "little")
    phnum = int.from_bytes(elf[0x38:0x3A], "little")
    for i in range(phnum):
        ph = elf[phoff + i * phentsize: phoff + (i + 1) * phentsize]
        if int.from_bytes(ph[0:4], "little") != 4:  # PT_NOTE
            continue
        off = int.from_bytes(ph[8:16], "little")
        size = int.from_bytes(ph[32:40], "little")
        notes = elf[off:off + size]
        pos = 0
        while pos + 12 <= len(notes):
            namesz = int.from_bytes(notes[pos:pos + 4], "little")
            descsz = int.from_bytes(notes[pos + 4:pos + 8], "little")
            ntype = int.from_bytes(notes[pos + 8:pos + 12], "little")
            name = notes[pos + 12:pos + 12 + namesz]
            if name.rstrip(b"\0") == b"Xen" and ntype == 18:
                return True
            pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return False


def ensure(store: Store, kernel_setting: Path | None, memo: FileHashMemo,
           tools: ToolRoot | None = None) -> Appliance:
    """The appliance for this host (or made from `tools`), built once per distinct content."""
    p = plan(kernel_setting, tools)
    si = inputs(p, memo)
    entry = store.path(si)
    if not (store.has(si) and store.intact(si)):
        with store.lock(si):
            found = problems(entry, full=False) if store.has(si) else []
            if found:
                store.set_aside(entry, found)
            if not store.has(si):
                store.remove_stale(si)
                with step(f"Building the VM helper appliance ({p.tools.arch.name})"), \
                        store.new_entry(si) as tmp:
                    bzimage = p.kernel.read_bytes()
                    elf = pvh_kernel(bzimage) if p.tools.arch is X86_64 else None
                    (tmp / "kernel").write_bytes(elf if elf is not None else bzimage)
                    write_initrd(p, tmp / "initrd.cpio")
    return Appliance(entry / "kernel", entry / "initrd.cpio", si.key, p.tools.arch,
                     p.tools.root)
