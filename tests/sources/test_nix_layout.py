"""The stand-in NixOS flake has the real NixOS layout (tests/support/nixflake.py says which
sources it follows), and `nixos_layout_problems` reads a tree for what ChromeOS runs by
absolute path: it finds the old defects of maitred's /usr/sbin/useradd and usermod not
linked, and of `verify` running /bin/cat and /usr/bin/findmnt, which NixOS has not, and no
/etc/os-release in the Baguette tarball."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from tests.support.nixflake import (
    NIX_TEST_CONFIG,
    activated_tree,
    build_tarball,
    nixos_layout_problems,
    require_nix,
    write_flake,
)

# what `doit verify` once ran in the guest
OLD_VERIFY_RUNS = ["/bin/cat", "/usr/bin/findmnt"]
MAITRED_RUNS = ["/usr/sbin/useradd", "/usr/sbin/usermod", "/bin/bash"]
TOP = {"dev", "etc", "etc/os-release", "nix", "nix/store", "nix-path-registration", "proc",
       "sbin", "sbin/init", "sys"}
BAGUETTE_TOP = TOP | {"boot", "mnt", "mnt/shared", "mnt/stateful", "run", "tmp"}
LINKED = {"/usr/sbin/useradd", "/usr/sbin/usermod", "/bin/bash",
          "/usr/lib/openssh/sftp-server"}


@pytest.fixture(scope="module")
def flakes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    require_nix()
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("NIX_CONFIG", NIX_TEST_CONFIG)
    root = tmp_path_factory.mktemp("nixflakes")
    try:
        out = {}
        for links in (True, False):
            flake = write_flake(root / f"links-{links}", links=links)
            for kind in ("crostini", "baguette"):
                out[f"{kind}-{links}"] = build_tarball(flake, kind)
        return out
    finally:
        monkeypatch.undo()


def outside_store(tree: Path) -> dict[str, str]:
    """Every file and link of `tree` outside /nix/store: path -> 'file' or the link target."""
    found = {}
    for here, dirs, files in os.walk(tree):  # links to directories are listed, not entered
        base = Path(here)
        rel = "" if base == tree else "/" + base.relative_to(tree).as_posix()
        dirs[:] = [d for d in dirs if f"{rel}/{d}" != "/nix/store"]
        for name in files + [d for d in dirs if (base / d).is_symlink()]:
            p = base / name
            found[f"{rel}/{name}"] = os.readlink(p) if p.is_symlink() else "file"
    return found


@pytest.mark.parametrize("kind, top", [("crostini", TOP), ("baguette", BAGUETTE_TOP)])
def test_the_tarball_is_laid_out_as_nixos_makes_it(flakes: dict[str, Path], kind: str,
                                                    top: set[str], tmp_path: Path) -> None:
    with tarfile.open(flakes[f"{kind}-True"]) as tf:
        members = {m.name.removeprefix("./"): m for m in tf}
        tf.extractall(tmp_path, filter="fully_trusted")
    assert {n for n in members if not n.startswith("nix/store/")} - {"."} == top
    init = members["sbin/init"]
    assert init.isreg() and init.mode & 0o111, "a copy of the system's init, not a link"
    assert init.uid == 0 and members["nix-path-registration"].isreg()
    assert members["etc/os-release"].issym()
    assert members["etc/os-release"].linkname.startswith("/nix/store/")
    assert "bin/cat" not in members and not any(n.startswith("usr") for n in members)
    assert nixos_layout_problems(tmp_path, kind, booted=False) == []


@pytest.mark.parametrize("kind", ["crostini", "baguette"])
def test_booted_only_sh_and_env_are_outside_the_store(flakes: dict[str, Path], kind: str,
                                                       tmp_path: Path) -> None:
    """Once NixOS's activation ran: the programs outside /nix/store are /bin/sh and
    /usr/bin/env, and the ones the module links for ChromeOS; /etc holds links into the
    store (and the files NixOS writes)."""
    tree = activated_tree(flakes[f"{kind}-True"], tmp_path / "tree")
    found = outside_store(tree)
    programs = {p for p in found if p.startswith(("/bin/", "/sbin/", "/usr/"))}
    assert programs == {"/bin/sh", "/usr/bin/env", "/sbin/init"} | LINKED
    assert all(found[p].startswith("/nix/store/") for p in programs - {"/sbin/init"})
    assert found["/etc/static"].startswith("/nix/store/") and "/etc/NIXOS" in found
    assert found["/etc/os-release"] == "/etc/static/os-release"
    assert found["/run/current-system"].startswith("/nix/store/")
    assert {"/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"} <= set(found)
    assert (tree / "etc/gshadow").stat().st_mode & 0o777 == 0o640
    users = [ln.split(":")[0] for ln in (tree / "etc/passwd").read_text().splitlines()]
    assert users == ["root", "user"]
    members = {ln.split(":")[0]: ln.split(":")[3]
               for ln in (tree / "etc/group").read_text().splitlines()}
    assert members["sudo"] == members["video"] == "user"
    assert (tree / "home/user/.profile").is_file()
    assert (tree / "etc/skel/.profile").is_file()
    assert nixos_layout_problems(tree, kind) == []


@pytest.mark.parametrize("kind", ["crostini", "baguette"])
def test_the_problems_of_items_6_and_16_are_found(flakes: dict[str, Path], kind: str,
                                                   tmp_path: Path) -> None:
    """Without the links (the old modules), maitred's programs are missing; what `verify`
    ran before is missing from any NixOS tree; a tarball without /etc/os-release (the old
    Baguette module) or with a /sbin/init from elsewhere is reported."""
    old = activated_tree(flakes[f"{kind}-False"], tmp_path / "old")
    assert nixos_layout_problems(old, kind, MAITRED_RUNS) == [
        f"{p}: missing ({kind})" for p in MAITRED_RUNS]
    assert f"/usr/lib/openssh/sftp-server: missing ({kind})" in nixos_layout_problems(old, kind)
    new = activated_tree(flakes[f"{kind}-True"], tmp_path / "new")
    assert nixos_layout_problems(new, kind, OLD_VERIFY_RUNS) == [
        f"{p}: missing ({kind})" for p in OLD_VERIFY_RUNS]

    with tarfile.open(flakes[f"{kind}-True"]) as tf:
        tf.extractall(tmp_path / "tarball", filter="fully_trusted")
    (tmp_path / "tarball/etc/os-release").unlink()
    (tmp_path / "tarball/sbin/init").unlink()
    (tmp_path / "tarball/sbin/init").write_text("#!/bin/busybox sh\n")
    (tmp_path / "tarball/sbin/init").chmod(0o755)
    assert nixos_layout_problems(tmp_path / "tarball", kind, booted=False) == [
        f"/etc/os-release: missing ({kind})",
        f"/sbin/init: not a script of the system's closure ({kind})"]
