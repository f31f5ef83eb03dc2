"""A tiny aarch64 Debian image for the aarch64 tests, and the arm64 tool tree.

The image is the smallest one the ChromeOS conformance checks pass on: minbase, systemd-sysv,
the guest packages every ChromeOS image gets, sudo (the `sudo` check) and btrfs-progs (maitred
grows the filesystem with `btrfs`: the `resize` check); no dotfiles. It is
built from the Debian mirror by mmdebstrap `--architectures=arm64` (maintainer scripts under
qemu-user), so the tests using it are marked `network` and `vm`, and share one build and one
boot through session fixtures (tests/e2e/test_aarch64.py). No pytest here."""

from __future__ import annotations

from pathlib import Path

from pipeline.core import binfmt
from pipeline.core.arch import AARCH64
from pipeline.core.run import which
from pipeline.hostsetup import codename
from pipeline.sources.debian import host_mirror
from pipeline.vmhelper import toolroot
from pipeline.vmhelper.accel import verdict_dir

IMAGE = "tiny-arm"


def write_project(root: Path) -> Path:
    (root / "images.toml").write_text(f"""
[build]
accel = "tcg"
artifacts = "{root / 'artifacts'}"

[images.{IMAGE}]
description = "tiny aarch64 Debian (tests)"
source = "debian"
arch = "aarch64"
dotfiles = ""
[images.{IMAGE}.debian]
variant = "minbase"
packages = ["btrfs-progs", "sudo"]
[images.{IMAGE}.lxc]
compression_level = 0
""")
    return root / "images.toml"


def aarch64_missing() -> str | None:
    """What this host lacks to build and boot aarch64 guests, or None."""
    if which(AARCH64.qemu) is None:
        return f"{AARCH64.qemu} is not installed ({AARCH64.qemu_package})"
    why = binfmt.problem(AARCH64)
    return f"qemu-user cannot run aarch64 programs here: {why}" if why else None


def arm64_tools() -> toolroot.ToolRoot:
    """The arm64 tool tree the pipeline uses for verify on this host (made once per user)."""
    suite = codename() or "bookworm"
    return toolroot.ToolRoot(AARCH64, toolroot.ensure_tree(AARCH64, verdict_dir(), suite,
                                                           host_mirror(suite)))
