"""The shared libraries a program of another tree needs, found in that tree without running it.

`ldd` runs the program's own dynamic loader, so it answers only for the host's architecture.
For a tree of another one (an arm64 Debian tree on x86_64) this reads the ELF file instead:
its interpreter (PT_INTERP) and its DT_NEEDED names (the dynamic segment's string table,
found through the PT_LOAD segment that maps it), then looks each name up in the tree's
library directories, recursively, the way the loader's built-in search path does on Debian
(multiarch directories first). Symlinks are resolved inside the tree, never on the host.
Little-endian ELF64 only: both guest architectures are.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from ..core.errors import PipelineError

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB = 0, 1, 5
MAX_LINKS = 40


def _u(data: bytes, off: int, size: int) -> int:
    return int.from_bytes(data[off:off + size], "little")


def read_dynamic(path: Path) -> tuple[str | None, list[str]]:
    """(interpreter, DT_NEEDED names) of an ELF64 file; (None, []) for a static one."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise PipelineError(f"{path} is not a little-endian 64-bit ELF file",
                            hint="the tool tree must hold programs for the guest's architecture")
    phoff, phentsize, phnum = _u(data, 0x20, 8), _u(data, 0x36, 2), _u(data, 0x38, 2)
    interp: str | None = None
    loads: list[tuple[int, int, int]] = []  # vaddr, offset, filesz
    dynamic: tuple[int, int] | None = None
    for i in range(phnum):
        ph = phoff + i * phentsize
        kind, offset = _u(data, ph, 4), _u(data, ph + 8, 8)
        vaddr, filesz = _u(data, ph + 16, 8), _u(data, ph + 32, 8)
        if kind == PT_INTERP:
            interp = data[offset:offset + filesz].rstrip(b"\0").decode()
        elif kind == PT_LOAD:
            loads.append((vaddr, offset, filesz))
        elif kind == PT_DYNAMIC:
            dynamic = (offset, filesz)
    if dynamic is None:
        return interp, []
    needed_offsets: list[int] = []
    strtab_vaddr = None
    off, size = dynamic
    for pos in range(off, off + size, 16):
        tag, val = _u(data, pos, 8), _u(data, pos + 8, 8)
        if tag == DT_NULL:
            break
        if tag == DT_NEEDED:
            needed_offsets.append(val)
        elif tag == DT_STRTAB:
            strtab_vaddr = val
    if strtab_vaddr is None:
        return interp, []
    strtab = next((o + strtab_vaddr - v for v, o, n in loads if v <= strtab_vaddr < v + n), None)
    if strtab is None:
        raise PipelineError(f"{path}: its dynamic string table is in no loaded segment",
                            hint="the file is damaged; reinstall its package in the tool tree")
    names = []
    for rel in needed_offsets:
        start = strtab + rel
        names.append(data[start:data.index(b"\0", start)].decode())
    return interp, names


def resolve_in(root: Path, path: str) -> Path | None:
    """The real file `path` (absolute, inside the tree) names, following symlinks inside
    `root`; None if it does not exist there."""
    parts = [p for p in path.split("/") if p]
    done = "/"
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in (".", ""):
            continue
        if part == "..":
            done = posixpath.dirname(done)
            continue
        here = posixpath.join(done, part)
        host = root / here.lstrip("/")
        if host.is_symlink():
            hops += 1
            if hops > MAX_LINKS:
                return None
            target = os.readlink(host)
            parts = [p for p in target.split("/") if p] + parts
            done = "/" if target.startswith("/") else done
            continue
        if not host.exists():
            return None
        done = here
    return root / done.lstrip("/")


def library_dirs(multiarch: str) -> tuple[str, ...]:
    return (f"/lib/{multiarch}", f"/usr/lib/{multiarch}", "/lib", "/usr/lib")


def libraries(root: Path, program: Path, multiarch: str) -> dict[str, Path]:
    """Every library `program` (a file in `root`) loads: path inside the tree -> real file."""
    found: dict[str, Path] = {}
    todo = [program]
    while todo:
        interp, needed = read_dynamic(todo.pop())
        wanted = [interp] if interp else []
        for name in needed:
            inside = next((f"{d}/{name}" for d in library_dirs(multiarch)
                           if resolve_in(root, f"{d}/{name}") is not None), None)
            if inside is None:
                raise PipelineError(f"{program}: needs {name}, which {root} does not hold",
                                    hint="add the package that ships it to the tool tree")
            wanted.append(inside)
        for inside in wanted:
            if inside in found:
                continue
            real = resolve_in(root, inside)
            if real is None:
                raise PipelineError(f"{program}: its loader {inside} is not in {root}",
                                    hint="add libc6 to the tool tree")
            found[inside] = real
            todo.append(real)
    return found
