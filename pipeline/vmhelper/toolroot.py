"""Where the VM helper's appliance takes its kernel, modules and programs from.

On the host's own architecture that is the host itself (`/`): its newest /boot/vmlinuz-*,
its /lib/modules, its busybox, tar, btrfs... For a guest of another architecture (verify of
an aarch64 image on an x86_64 host) it is a tool tree of that architecture: Debian's kernel,
busybox-static, btrfs-progs, tar, coreutils and findutils for it, unpacked by mmdebstrap
`--variant=extract` (packages and their dependencies, fetched from the host's Debian mirror and
checked against Debian's archive keyring, unpacked without running anything) into the user's
cache directory (`$XDG_CACHE_HOME/cros-guest-pipeline/tools-<debarch>-<suite>`), then
`depmod -b` on the host indexes its modules. It is made once (about 20 s and 450 MB here) under
a temporary name and renamed when complete. The host's own package database is never touched:
no foreign architecture is added to dpkg (that would make every `apt-get update` fetch arm64
lists, and an arm64 kernel in the host's /boot would be the newest vmlinuz-* the x86_64
appliance picks up).

On an ARM host (a Chromebook's own Linux container) the host is the aarch64 tree, and the
x86_64 tree would be the foreign one: the same code, the other way round.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..core.arch import X86_64, Arch, host_arch
from ..core.errors import PipelineError
from ..core.log import step
from ..core.run import require, run

VERSION = 1
STAMP = ".cros-tool-tree.json"
PACKAGES = ("busybox-static", "btrfs-progs", "tar", "coreutils", "findutils", "libc-bin")
SEARCH = ("usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin")
MULTIARCH = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}


@dataclass(frozen=True)
class ToolRoot:
    arch: Arch
    root: Path  # "/" for the host

    @property
    def is_host(self) -> bool:
        return self.root == Path("/")

    @property
    def multiarch(self) -> str:
        return MULTIARCH[self.arch.name]

    def program(self, name: str) -> Path:
        """A program of this tree by name (the host's: on PATH and in the sbin directories)."""
        if self.is_host:
            return Path(require(name))
        for d in SEARCH:
            candidate = self.root / d / name
            if candidate.is_file() or candidate.is_symlink():
                from .elfdeps import resolve_in

                real = resolve_in(self.root, f"/{d}/{name}")
                if real is not None:
                    return real
        raise PipelineError(f"the {self.arch.name} tool tree {self.root} has no {name}",
                            hint=f"remove {self.root} to have it made again")


def host_root() -> ToolRoot:
    return ToolRoot(host_arch() or X86_64, Path("/"))


def packages(a: Arch) -> list[str]:
    return sorted({a.kernel_package, *PACKAGES})


def tree_dir(a: Arch, suite: str, cache_dir: Path) -> Path:
    return cache_dir / f"tools-{a.deb}-{suite}"


def for_arch(a: Arch, cache_dir: Path, suite: str, mirror: str) -> ToolRoot:
    """The host for its own architecture, else the tool tree of `a` (made when missing)."""
    if a is host_arch():
        return host_root()
    return ToolRoot(a, ensure_tree(a, cache_dir, suite, mirror))


def ensure_tree(a: Arch, cache_dir: Path, suite: str, mirror: str) -> Path:
    target = tree_dir(a, suite, cache_dir)
    want = {"version": VERSION, "arch": a.deb, "suite": suite, "packages": packages(a)}
    try:
        have = json.loads((target / STAMP).read_text())
    except (OSError, ValueError):
        have = None
    if have is not None and {k: have.get(k) for k in want} == want:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with step(f"Unpacking the {a.name} tool tree ({a.kernel_package}, busybox, "
                  f"btrfs-progs) into {target}"):
            run([require("mmdebstrap"), "--quiet", "--variant=extract",
                 f"--architectures={a.deb}", f"--include={','.join(packages(a))}",
                 suite, tmp, f"deb {mirror} {suite} main"],
                hint=f"mmdebstrap could not fetch Debian's {a.deb} packages from {mirror}")
            for version in kernel_versions(tmp):
                run([require("depmod"), "-b", tmp, version],
                    hint="depmod (kmod) could not index the tool tree's modules")
        (tmp / STAMP).write_text(json.dumps({**want, "mirror": mirror}, indent=1))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def kernel_versions(root: Path) -> list[str]:
    return sorted(m.group(1) for p in (root / "boot").glob("vmlinuz-*")
                  if (m := re.match(r"vmlinuz-(.+)$", p.name)))
