"""pipeline/stages.py: the stage table and its keys.

A key changes only when a stage's inputs or its VERSION do: if this test fails, every user's
store is rebuilt, so change a key on purpose (a VERSION bump), never by accident (moving
code, renaming a module), and update the value here with the reason. History:
- the values of commit 60c73c1 (stages in pipeline/build.py) held unchanged through the move
  into sub-packages (commit af5c551);
- rootfs and everything downstream moved when the customize stage got one tree per guest kind
  (customize VERSION 4, integration VERSION 3), and again when its key took the secret
  scan's version (a rootfs stored under older rules is scanned again); base is unchanged.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from pipeline import config, stages
from pipeline.core.errors import PipelineError
from pipeline.store.keys import StageInputs
from tests.support.rootfs import add_sbin_init

PINNED_KEYS = {
    "base": "71a480bf1393ad036c05c22ec56a13ab",  # tarball.VERSION 4: the tree's arch
    "rootfs": "7b3d4fa40631b149d83458916c01f271",  # integration.VERSION 4: the container's DHCP
    "pack": "e8d985652e8e3f2a271a97655ffdc9ec",  # pack.VERSION 3: the mkfs subvolume route
    "baguette": "0ee300eca337845ae2ad57bb79c07f5a",
    "lxc": "7fee70c7688420ccd7426bcac137e172",
}
FIXED_APPLIANCE = StageInputs("appliance", 1, {"fixed": "for the test"})


def fixed_project(root: Path) -> config.Config:
    """A project whose every input is fixed bytes (the VM helper's key stands in: it hashes
    this host's kernel)."""
    with tarfile.open(root / "rootfs.tar", "w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, data in (("./", tarfile.DIRTYPE, b""), ("./etc/", tarfile.DIRTYPE, b""),
                                 ("./etc/os-release", tarfile.REGTYPE, b"ID=fixture\n")):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime, ti.size = kind, 0o755, 1_600_000_000, len(data)
            tf.addfile(ti, io.BytesIO(data) if data else None)
    (root / "dotfiles").mkdir()
    (root / "dotfiles" / ".bashrc").write_text("alias ll='ls -l'\n")
    (root / "images.toml").write_text(f"""
[build]
artifacts = "{root / 'artifacts'}"
[images.tiny]
source = "tarball"
dotfiles = "dotfiles"
description = "key stability"
[images.tiny.tarball]
path = "rootfs.tar"
""")
    return config.load(root / "images.toml")


def fixed_run(tmp_path: Path) -> stages.Run:
    run = stages.open_run(fixed_project(tmp_path), 1_700_000_000)
    run.keys[("appliance", "")] = FIXED_APPLIANCE
    return run


def test_keys_move_only_on_purpose(tmp_path: Path) -> None:
    run = fixed_run(tmp_path)
    image = run.config.image("tiny")
    assert {s.name: stages.key(run, s, image).key for s in stages.STAGES} == PINNED_KEYS


def test_a_changed_input_changes_its_key_and_those_downstream(tmp_path: Path) -> None:
    run = fixed_run(tmp_path)
    image = run.config.image("tiny")
    (tmp_path / "dotfiles" / ".bashrc").write_text("alias ll='ls -la'\n")
    fresh = stages.open_run(run.config, 1_700_000_000)
    fresh.keys[("appliance", "")] = FIXED_APPLIANCE
    now = {s.name: stages.key(fresh, s, image).key for s in stages.STAGES}
    assert now["base"] == PINNED_KEYS["base"]
    for stage in ("rootfs", "pack", "baguette", "lxc"):
        assert now[stage] != PINNED_KEYS[stage], stage


def test_the_table_is_the_only_stage_list() -> None:
    names = [s.name for s in stages.STAGES]
    assert names == ["base", "rootfs", "pack", "baguette", "lxc"]
    for s in stages.STAGES:  # every dependency is an earlier stage or the VM helper
        assert all(d == "appliance" or names.index(d) < names.index(s.name) for d in s.after)
    assert stages.OUTPUTS == (stages.BAGUETTE, stages.LXC)
    assert stages.stage("pack") is stages.PACK
    with pytest.raises(StopIteration):
        stages.stage("nonsense")


def test_build_links_the_stable_names_and_reuses(tmp_path: Path) -> None:
    run = fixed_run(tmp_path)
    add_sbin_init(tmp_path / "rootfs.tar")  # LXD needs an init (and the keys change)
    image = run.config.image("tiny")
    assert not stages.is_current(run, stages.LXC, image)
    entry = None
    for s in (stages.BASE, stages.ROOTFS, stages.LXC):
        entry = stages.build(run, s, image)
    assert entry is not None and entry.name == stages.key(run, stages.LXC, image).key
    out = run.layout.outputs("tiny") / "lxc"
    assert sorted(p.name for p in out.iterdir()) == ["fingerprint", "metadata.tar.xz",
                                                     "rootfs.tar.xz"]
    assert (out / "rootfs.tar.xz").samefile(entry / "rootfs.tar.xz")
    assert stages.is_current(run, stages.LXC, image)
    (out / "rootfs.tar.xz").unlink()  # a stable name gone: not current, and relinked
    assert not stages.is_current(run, stages.LXC, image)
    assert stages.build(run, stages.LXC, image) == entry
    assert stages.is_current(run, stages.LXC, image)
    assert [e.parent.name for e in stages.image_entries(run, image)] == ["base", "rootfs", "lxc"]
    assert stages.wanted_keys(run) == {stages.key(run, s, image).key for s in stages.STAGES} | {
        FIXED_APPLIANCE.key}


def test_refresh_gives_a_debian_image_a_new_base_key(tmp_path: Path) -> None:
    """`doit refresh:NAME`: the Debian base (and so every stage after it) gets a new key;
    keys computed before in the same run are dropped; other sources refuse with a hint."""
    (tmp_path / "rootfs.tar").write_bytes(b"")
    (tmp_path / "images.toml").write_text(
        f'[build]\nartifacts = "{tmp_path / "artifacts"}"\n'
        '[images.deb]\nsource = "debian"\ndotfiles = ""\n'
        '[images.tar]\nsource = "tarball"\ndotfiles = ""\n[images.tar.tarball]\n'
        'path = "rootfs.tar"\n')
    run = stages.open_run(config.load(tmp_path / "images.toml"), 1_700_000_000)
    deb = run.config.image("deb")
    before = stages.key(run, stages.BASE, deb)
    assert "refreshed" not in before.inputs, "never refreshed: the key it always had"
    stamp = stages.refresh(run, deb)
    after = stages.key(run, stages.BASE, deb)
    assert after.inputs["refreshed"] == stamp and after.key != before.key
    again = stages.open_run(config.load(tmp_path / "images.toml"), 1_700_000_000)
    assert stages.key(again, stages.BASE, again.config.image("deb")).key == after.key
    with pytest.raises(PipelineError) as e:
        stages.refresh(run, run.config.image("tar"))
    assert "a tarball base cannot be refreshed" in e.value.message
    assert "nix flake update" in (e.value.hint or "")
