"""A small project for publish tests: a busybox tree from the tarball source (with a dpkg
database, setuid/setgid files and a capability), built up to its Crostini image."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from pipeline import config, stages
from tests.support.rootfs import CAP_NET_RAW, busybox_rootfs

DPKG_STATUS = b"""Package: busybox
Status: install ok installed
Architecture: amd64
Version: 1:1.35.0-4+b3
Description: Tiny utilities
 for small systems

Package: gone
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: base-files
Status: install ok installed
Architecture: amd64
Version: 12.4+deb12u5
"""


def enrich(tarball: Path) -> None:
    """Add what the manifest reports: a dpkg database, setuid/setgid files, a capability."""
    def add(tf: tarfile.TarFile, name: str, mode: int = 0o644, data: bytes = b"",
            kind: bytes = tarfile.REGTYPE, pax: dict[str, str] | None = None) -> None:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.mtime, ti.size = kind, mode, 1_700_000_000, len(data)
        ti.pax_headers = pax or {}
        tf.addfile(ti, io.BytesIO(data) if data else None)

    with tarfile.open(tarball, "a", format=tarfile.PAX_FORMAT) as tf:
        for d in ("./usr/", "./usr/bin/", "./var/", "./var/lib/", "./var/lib/dpkg/"):
            add(tf, d, 0o755, kind=tarfile.DIRTYPE)
        add(tf, "./var/lib/dpkg/status", data=DPKG_STATUS)
        add(tf, "./usr/bin/su", 0o4755, b"setuid\n")
        add(tf, "./usr/bin/wall", 0o2755, b"setgid\n")
        add(tf, "./usr/bin/ping", 0o755, b"ping\n", pax={
            "SCHILY.xattr.security.capability": CAP_NET_RAW.decode("utf-8", "surrogateescape")})


def write_project(tmp_path: Path, extra: str = "", description: str = "busybox test image",
                  rich: bool = True, lxc: str = "") -> Path:
    if not (tmp_path / "rootfs.tar").exists():
        busybox_rootfs(tmp_path / "rootfs.tar")
        if rich:
            enrich(tmp_path / "rootfs.tar")
    (tmp_path / "images.toml").write_text(f"""
[build]
artifacts = "{tmp_path / 'artifacts'}"
default_images = ["tiny"]
{extra}
[images.tiny]
source = "tarball"
dotfiles = ""
description = "{description}"
[images.tiny.tarball]
path = "rootfs.tar"
[images.tiny.lxc]
{lxc}
""")
    return tmp_path / "images.toml"


def built(toml: Path) -> stages.Run:
    ctx = stages.open_run(config.load(toml), 1_700_000_000)
    image = ctx.config.image("tiny")
    stages.build(ctx, stages.BASE, image)
    stages.build(ctx, stages.ROOTFS, image)
    lxc_outputs(ctx, image)
    return ctx




def lxc_outputs(run: stages.Run, image: config.Image) -> tuple[list[Path], str]:
    """Build the image's LXC stage: its files under their stable names, and the fingerprint."""
    entry = stages.build(run, stages.LXC, image)
    out = run.layout.outputs(image.name) / "lxc"
    return [out / f for f in stages.lxc_files(entry)], (entry / "fingerprint").read_text().strip()
