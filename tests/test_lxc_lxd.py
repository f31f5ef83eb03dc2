"""Crostini images from the pipeline, imported and started by a real LXD (tests/lxd.py):
split xz, squashfs and unified; the hostname template; LXD's fingerprint = ours."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import time
from pathlib import Path

import pytest

from pipeline import config
from pipeline import stages as build
from tests.conftest import tool_missing
from tests.lxd import LXD, lxd  # noqa: F401 (the fixture)

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "cat", "hostname", "sleep", "true", "ls", "id")


def busybox_rootfs(path: Path) -> Path:
    """A tiny rootfs LXD can start: static busybox, a script as /sbin/init, os-release."""
    if not BUSYBOX.is_file():
        tool_missing("busybox-static is not installed (run `python3 -m pipeline.hostsetup`)")

    def add(tf: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644,
            data: bytes = b"", link: str = "") -> None:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.linkname, ti.mtime, ti.size = kind, mode, link, 1_700_000_000, len(
            data)
        tf.addfile(ti, io.BytesIO(data) if data else None)

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        add(tf, "./", tarfile.DIRTYPE, 0o755)
        add(tf, "./bin/", tarfile.DIRTYPE, 0o755)
        add(tf, "./bin/busybox", mode=0o755, data=BUSYBOX.read_bytes())
        for applet in APPLETS:
            add(tf, f"./bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
        for d in ("dev", "proc", "sys", "tmp", "run", "root"):
            add(tf, f"./{d}/", tarfile.DIRTYPE, 0o755)
        add(tf, "./etc/", tarfile.DIRTYPE, 0o755)
        add(tf, "./etc/os-release", data=b'NAME="Busybox Fixture"\nID=busybox-fixture\n'
            b"VERSION_CODENAME=tiny\n")
        add(tf, "./sbin/", tarfile.DIRTYPE, 0o755)
        add(tf, "./sbin/init", mode=0o755, data=b"#!/bin/sh\nexec /bin/busybox sleep 1000000\n")
    return path


def project(tmp_path: Path, lxc_table: str) -> build.Context:
    busybox_rootfs(tmp_path / "rootfs.tar")
    text = f"""
[build]
artifacts = "{tmp_path / 'artifacts'}"
[images.tiny]
source = "tarball"
dotfiles = ""
description = "busybox test image"
[images.tiny.tarball]
path = "rootfs.tar"
[images.tiny.lxc]
{lxc_table}
"""
    (tmp_path / "images.toml").write_text(text)
    return build.Context(config.load(tmp_path / "images.toml"), 1_700_000_000)


FORMATS = {
    "split-xz": 'rootfs_format = "tar.xz"',
    "squashfs": 'rootfs_format = "squashfs"',
    "unified": "unified = true",
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_image_starts_in_lxd(fmt: str, tmp_path: Path, lxd: LXD) -> None:  # noqa: F811
    if fmt == "squashfs" and shutil.which("tar2sqfs") is None:
        tool_missing("squashfs-tools-ng is not installed (run `python3 -m pipeline.hostsetup`)")
    ctx = project(tmp_path, FORMATS[fmt])
    image = ctx.config.image("tiny")
    build.base(ctx, image)
    build.rootfs(ctx, image)
    files, ours = build.lxc_image(ctx, image)
    alias, name = f"tiny-{fmt}", f"c-{fmt}"
    start = time.monotonic()
    if fmt == "unified":
        (single,) = files
        theirs = lxd.import_unified(single, alias)
    else:
        theirs = lxd.import_split(*files, alias=alias)
    imported = time.monotonic()
    assert theirs == ours, "LXD's fingerprint differs from the one the pipeline printed"
    try:
        lxd.launch(alias, name)
        launched = time.monotonic()
        assert "ID=busybox-fixture" in lxd.exec(name, "cat", "/etc/os-release")
        assert lxd.exec(name, "cat", "/etc/hostname").strip() == name
        assert f"127.0.1.1\t{name}" in lxd.exec(name, "cat", "/etc/hosts")
        sizes = {f.name: os.path.getsize(f) for f in files}
        print(f"\n{fmt}: import {imported - start:.2f} s, launch {launched - imported:.2f} s, "
              f"sizes {sizes}")
    finally:
        lxd.delete(name)  # the fixture deletes the images it saw imported


@pytest.mark.network
@pytest.mark.vm
def test_debian_default_image_runs_systemd_in_lxd(tmp_path: Path, lxd: LXD) -> None:  # noqa: F811
    """The shipped configuration's Debian image as a Crostini container: systemd boots."""
    root = Path(__file__).resolve().parent.parent
    shipped = (root / "images.toml").read_text()
    (tmp_path / "images.toml").write_text(
        shipped.replace("[build]", f'[build]\nartifacts = "{tmp_path / "artifacts"}"', 1)
        .replace('dotfiles = "dotfiles"', f'dotfiles = "{root / "dotfiles"}"'))
    ctx = build.Context(config.load(tmp_path / "images.toml"))
    image = ctx.config.image(ctx.config.build.default_images[0])
    build.base(ctx, image)
    build.rootfs(ctx, image)
    files, ours = build.lxc_image(ctx, image)
    start = time.monotonic()
    assert lxd.import_split(*files, alias="bookworm") == ours
    imported = time.monotonic()
    try:
        lxd.launch("bookworm", "deb1")
        launched = time.monotonic()
        assert "ID=debian" in lxd.exec("deb1", "cat", "/etc/os-release")
        assert lxd.exec("deb1", "cat", "/etc/hostname").strip() == "deb1"
        state = lxd.exec("deb1", "sh", "-c", "systemctl is-system-running --wait || true")
        assert state.strip() in ("running", "degraded"), state
        home = lxd.exec("deb1", "ls", "-la", f"/home/{image.user}")
        assert ".bashrc" in home and f" {image.user} " in home
        sizes = {f.name: os.path.getsize(f) for f in files}
        print(f"\nbookworm: import {imported - start:.2f} s, launch {launched - imported:.2f} s,"
              f" sizes {sizes}")
    finally:
        lxd.delete("deb1")
