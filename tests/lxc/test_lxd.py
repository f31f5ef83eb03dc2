"""Crostini images from the pipeline, imported and started by a real LXD (tests/lxd.py):
split xz, squashfs and unified; the hostname template; LXD's fingerprint = ours."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from pipeline import config, stages
from tests.support.lxd import LXD, lxd  # noqa: F401 (the fixture)
from tests.support.projects import lxc_outputs
from tests.support.rootfs import FORMATS, busybox_rootfs
from tests.support.tools import tool_missing


def project(tmp_path: Path, lxc_table: str) -> stages.Run:
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
    return stages.open_run(config.load(tmp_path / "images.toml"), 1_700_000_000)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_image_starts_in_lxd(fmt: str, tmp_path: Path, lxd: LXD) -> None:  # noqa: F811
    if fmt == "squashfs" and shutil.which("tar2sqfs") is None:
        tool_missing("squashfs-tools-ng is not installed (run `python3 -m pipeline.hostsetup`)")
    ctx = project(tmp_path, FORMATS[fmt])
    image = ctx.config.image("tiny")
    stages.build(ctx, stages.BASE, image)
    stages.build(ctx, stages.ROOTFS, image)
    files, ours = lxc_outputs(ctx, image)
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
    root = Path(__file__).resolve().parents[2]
    shipped = (root / "images.toml").read_text()
    (tmp_path / "images.toml").write_text(
        shipped.replace("[build]", f'[build]\nartifacts = "{tmp_path / "artifacts"}"', 1)
        .replace('dotfiles = "dotfiles"', f'dotfiles = "{root / "dotfiles"}"'))
    ctx = stages.open_run(config.load(tmp_path / "images.toml"), None)
    image = ctx.config.image(ctx.config.build.default_images[0])
    stages.build(ctx, stages.BASE, image)
    stages.build(ctx, stages.ROOTFS, image)
    files, ours = lxc_outputs(ctx, image)
    start = time.monotonic()
    assert lxd.import_split(*files, alias="bookworm") == ours
    imported = time.monotonic()
    try:
        lxd.launch("bookworm", "deb1")
        launched = time.monotonic()
        assert "ID=debian" in lxd.exec("deb1", "cat", "/etc/os-release")
        assert lxd.exec("deb1", "cat", "/etc/hostname").strip() == "deb1"
        state = lxd.exec("deb1", "sh", "-c", "systemctl is-system-running --wait 2>&1 || true")
        assert state.strip() in ("running", "degraded"), state
        home = lxd.exec("deb1", "ls", "-la", f"/home/{image.user}")
        assert ".bashrc" in home and f" {image.user} " in home
        sizes = {f.name: os.path.getsize(f) for f in files}
        print(f"\nbookworm: import {imported - start:.2f} s, launch {launched - imported:.2f} s,"
              f" sizes {sizes}")
    finally:
        lxd.delete("deb1")
