"""pipeline/store/fsck.py: `doit fsck` and the first step of `doit verify` check store
entries against their files.sha256; a damaged entry is named, set aside and the check fails;
an entry from before files.sha256 is counted, not condemned. stages.image_entries is the list
`doit verify:<image>` checks. The project is the tiny busybox tarball image (no VM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import config, stages
from pipeline.core.errors import PipelineError
from pipeline.store import fsck
from pipeline.store.layout import FILES_FILE
from tests.support.projects import built, write_project

OTHER = """
[images.other]
source = "tarball"
dotfiles = ""
hostname = "elsewhere"
[images.other.tarball]
path = "rootfs.tar"
"""


@pytest.fixture
def run(tmp_path: Path) -> stages.Run:
    return built(write_project(tmp_path))


def entry(run: stages.Run, stage: stages.Stage) -> Path:
    return stages.entry(run, stage, run.config.image("tiny"))


def flip_byte(path: Path, offset: int) -> None:
    """Change one byte in place: same size, other content (a disk fault, a hand edit)."""
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1)
        f.seek(offset)
        f.write(bytes([old[0] ^ 0xFF]))


def test_intact_entries_are_counted(run: stages.Run,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert fsck.check_store(run.store) == 3  # base, rootfs, lxc
    err = capsys.readouterr().err
    assert "Verifying 3 store entries" in err and "3 entries intact" in err
    assert "predate" not in err
    assert {s: len(e) for s, e in run.store.entries().items()} == {"base": 1, "rootfs": 1,
                                                                    "lxc": 1}


def test_a_same_size_corruption_is_named_and_set_aside(run: stages.Run) -> None:
    rootfs = entry(run, stages.ROOTFS)
    tar = rootfs / "rootfs.tar"
    size = tar.stat().st_size
    flip_byte(tar, size // 2)
    assert tar.stat().st_size == size
    with pytest.raises(PipelineError) as exc:
        fsck.check_store(run.store)
    assert exc.value.message == (
        f"1 damaged store entries were removed: rootfs/{rootfs.name}")
    assert "build again" in exc.value.hint
    entries = run.store.entries()
    assert entries["rootfs"] == []
    assert not rootfs.exists()
    assert list(rootfs.parent.iterdir()) == []  # nothing left under a temporary name
    assert entries["base"] == [entry(run, stages.BASE)]  # the others were checked and kept
    assert entries["lxc"] == [entry(run, stages.LXC)]
    # the next build makes it again, and then it checks out
    stages.build(run, stages.ROOTFS, run.config.image("tiny"))
    assert (rootfs / "rootfs.tar").stat().st_size == size
    assert fsck.check_store(run.store) == 3


def test_a_corrupt_published_file_damages_its_entry(run: stages.Run) -> None:
    """The stable name shares the store's inode: editing it is a store corruption."""
    lxc_entry = entry(run, stages.LXC)
    published = run.layout.outputs("tiny") / "lxc" / "metadata.tar.xz"
    assert published.samefile(lxc_entry / "metadata.tar.xz")
    flip_byte(published, 20)
    with pytest.raises(PipelineError, match=f"lxc/{lxc_entry.name}"):
        fsck.check(run.store, [lxc_entry, entry(run, stages.BASE)])
    assert run.store.entries()["lxc"] == []
    assert len(run.store.entries()["base"]) == 1


def test_several_damaged_entries_are_all_named(run: stages.Run) -> None:
    base, rootfs = entry(run, stages.BASE), entry(run, stages.ROOTFS)
    flip_byte(base / "base.tar", 600)
    (rootfs / "rootfs.tar").chmod(0o644)
    with open(rootfs / "rootfs.tar", "ab") as f:
        f.write(b"\0" * 512)  # another size
    with pytest.raises(PipelineError) as exc:
        fsck.check_store(run.store)
    assert exc.value.message.startswith("2 damaged store entries were removed: ")
    assert f"base/{base.name}" in exc.value.message
    assert f"rootfs/{rootfs.name}" in exc.value.message
    assert run.store.entries() == {"base": [], "rootfs": [], "lxc": [entry(run, stages.LXC)]}


def test_an_entry_without_files_sha256_predates_it(run: stages.Run,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    old = entry(run, stages.ROOTFS)
    (old / FILES_FILE).unlink()
    flip_byte(old / "rootfs.tar", 100)  # nothing to compare it with: not reported
    capsys.readouterr()
    assert fsck.check_store(run.store) == 3
    err = capsys.readouterr().err
    assert f"1 entries predate {FILES_FILE}: nothing to compare them with" in err
    assert "3 entries intact" in err
    assert old.is_dir() and run.store.entries()["rootfs"] == [old]


def test_check_of_no_entries(run: stages.Run) -> None:
    assert fsck.check(run.store, []) == 0
    assert len(run.store.entries()["lxc"]) == 1


# --- the entries of one image ------------------------------------------------------------


def test_image_entries_lists_only_existing_entries_of_that_image(tmp_path: Path) -> None:
    toml = write_project(tmp_path)
    toml.write_text(toml.read_text() + OTHER)
    run = built(toml)
    tiny, other = run.config.image("tiny"), run.config.image("other")
    # pack and baguette need the VM helper: keyed, but not built, so not listed
    assert stages.image_entries(run, tiny) == [entry(run, s)
                                               for s in (stages.BASE, stages.ROOTFS, stages.LXC)]
    # the other image shares the base (same tarball), nothing else of it is built
    assert stages.image_entries(run, other) == [entry(run, stages.BASE)]
    stages.build(run, stages.ROOTFS, other)
    other_rootfs = stages.entry(run, stages.ROOTFS, other)
    assert other_rootfs != entry(run, stages.ROOTFS)
    assert stages.image_entries(run, other) == [entry(run, stages.BASE), other_rootfs]
    assert other_rootfs not in stages.image_entries(run, tiny)
    assert fsck.check(run.store, stages.image_entries(run, other)) == 2


def test_image_entries_follow_the_config_not_the_history(tmp_path: Path) -> None:
    run = built(write_project(tmp_path, description="first"))
    first_lxc = entry(run, stages.LXC)
    again = stages.open_run(config.load(write_project(tmp_path, description="second")),
                            1_700_000_000)
    listed = stages.image_entries(again, again.config.image("tiny"))
    assert listed == [entry(run, stages.BASE), entry(run, stages.ROOTFS)]
    assert first_lxc.is_dir() and first_lxc not in listed
