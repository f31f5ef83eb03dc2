"""A NixOS-shaped flake to a Baguette image and a Crostini container, through the real doit
CLI, the real Nix and a real LXD. The flake is the self-contained stand-in of
tests/support/nixflake.py (a real NixOS configuration needs nixpkgs, unreachable here); everything
after `nix eval` / `nix build` is the path a real configuration takes."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest

from pipeline.baguette import check as validate
from tests.support.doit import doit, ran
from tests.support.lxd import LXD, lxd  # noqa: F401 (fixture)
from tests.support.nixflake import nix_env, write_flake  # noqa: F401 (fixture)
from tests.support.tools import require_vm

pytestmark = pytest.mark.vm


@pytest.fixture
def project(tmp_path: Path, nix_env: None) -> Path:  # noqa: F811
    require_vm()
    # unique contents, so Nix really builds (its store outlives the test)
    write_flake(tmp_path / "flake", motd=f"first {uuid.uuid4()}\n")
    (tmp_path / "images.toml").write_text(f"""
[build]
accel = "tcg"
artifacts = "{tmp_path / 'artifacts'}"

[images.nixvm]
source = "nix"
description = "NixOS stand-in (Baguette)"
[images.nixvm.nix]
flake = "flake"
host = "testhost-baguette"

[images.nixlxc]
source = "nix"
description = "NixOS stand-in (Crostini)"
[images.nixlxc.nix]
flake = "flake"
host = "testhost"
""")
    return tmp_path


BUILT = {"base:nixvm", "rootfs:nixvm", "pack:nixvm", "baguette:nixvm", "base:nixlxc",
         "rootfs:nixlxc", "lxc:nixlxc"}


def test_flake_to_baguette_and_lxc_cached_then_rebuilt(project: Path, lxd: LXD) -> None:  # noqa: F811
    first = doit(project, "baguette:nixvm", "lxc:nixlxc")
    assert ran(first) >= BUILT
    assert "building /nix/store/" in first.stderr
    image = project / "artifacts" / "nixvm" / "baguette_rootfs.img.zst"
    [raw] = (project / "artifacts" / "store" / "pack").glob("*/disk.img")
    validate.check_raw(raw)
    validate.check_compressed(image, "nixos-root", raw.stat().st_size)
    digest = hashlib.sha256(image.read_bytes()).hexdigest()

    again = doit(project, "baguette:nixvm", "lxc:nixlxc")
    assert ran(again) == set(), "same derivation paths: nothing reruns"
    assert hashlib.sha256(image.read_bytes()).hexdigest() == digest

    second = f"second {uuid.uuid4()}\n"
    (project / "flake" / "motd").write_text(second)
    changed = doit(project, "baguette:nixvm", "lxc:nixlxc")
    assert ran(changed) >= BUILT
    assert "changed: tarball" in changed.stderr, "the log names the input that changed"
    assert hashlib.sha256(image.read_bytes()).hexdigest() != digest

    # the Crostini pair starts in LXD, with the NixOS metadata's own template applied
    lxc_dir = project / "artifacts" / "nixlxc" / "lxc"
    fp = lxd.import_split(lxc_dir / "metadata.tar.xz", lxc_dir / "rootfs.tar.xz", "nixlxc")
    assert fp == (lxc_dir / "fingerprint").read_text().strip()
    lxd.launch("nixlxc", "n1")
    try:
        assert lxd.exec("n1", "cat", "/etc/motd") == second
        assert lxd.exec("n1", "cat", "/etc/nixos-container-name").strip() == \
            "n1 (from the NixOS metadata)"
        assert lxd.exec("n1", "cat", "/etc/hostname").strip() == "n1"
    finally:
        lxd.delete("n1")
