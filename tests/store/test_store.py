"""pipeline/store/ (keys, entries, layout records, hashing) and core/fsutil.py: keys, the store,
miss explanations, atomic writes."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.core import fsutil
from pipeline.core.fsutil import atomic_path, atomic_write_bytes, link_or_copy
from pipeline.store import entries as store_mod
from pipeline.store import hashing
from pipeline.store.entries import Store, link_output
from pipeline.store.hashing import FileHashMemo, tree_digests
from pipeline.store.keys import StageInputs, stage_key
from pipeline.store.layout import (
    FILES_FILE,
    INPUTS_FILE,
    Layout,
    changed_inputs,
    explain_miss,
    read_record,
    write_record,
)


def art() -> Layout:
    """The layout of a fake /art (made inside each test: pyfakefs patches Path)."""
    return Layout(Path("/art"))

INPUTS: dict[str, Any] = {
    "config": {"suite": "bookworm", "packages": ["git", "vim"]},
    "upstream": "0123abcd",
    "dotfiles": {".bashrc": "sha-1", ".vimrc": "sha-2"},
}


def si(inputs: dict[str, Any] | None = None, *, stage: str = "rootfs",
       version: int = 1) -> StageInputs:
    return StageInputs(stage, version, INPUTS if inputs is None else inputs)


def with_change(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A deep copy of INPUTS with the value at `path` replaced (or added)."""
    new = json.loads(json.dumps(INPUTS))
    node = new
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return new


def leftovers(directory: Path) -> list[str]:
    """Temporary names (dot-prefixed, .tmp) left in `directory`."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# --- stage keys ------------------------------------------------------------------------------


def test_stage_key_ignores_dict_order() -> None:
    reordered = {
        "dotfiles": {".vimrc": "sha-2", ".bashrc": "sha-1"},
        "upstream": "0123abcd",
        "config": {"packages": ["git", "vim"], "suite": "bookworm"},
    }
    assert list(reordered) != list(INPUTS)
    key = stage_key("rootfs", 1, INPUTS)
    assert key == stage_key("rootfs", 1, reordered)
    assert len(key) == 32 and int(key, 16) >= 0
    assert si().key == key


@pytest.mark.parametrize("path, value", [
    (("upstream",), "0123abce"),
    (("config", "suite"), "trixie"),
    (("config", "packages"), ["vim", "git"]),  # list order is content
    (("config", "packages"), ["git", "vim", "curl"]),
    (("dotfiles", ".bashrc"), "sha-3"),
    (("dotfiles", ".zshrc"), "sha-4"),  # an added input
    (("upstream",), 123),  # same text, other type
])
def test_stage_key_changes_with_any_input(path: tuple[str, ...], value: Any) -> None:
    assert stage_key("rootfs", 1, with_change(path, value)) != stage_key("rootfs", 1, INPUTS)


def test_stage_key_changes_with_removed_input_stage_and_version() -> None:
    base = stage_key("rootfs", 1, INPUTS)
    fewer = {k: v for k, v in INPUTS.items() if k != "upstream"}
    assert stage_key("rootfs", 1, fewer) != base
    assert stage_key("pack", 1, INPUTS) != base
    assert stage_key("rootfs", 2, INPUTS) != base


# --- the store -------------------------------------------------------------------------------


def test_new_entry_commits_on_success(fs: Any) -> None:
    store = Store(art())
    s = si()
    assert not store.has(s)
    with store.new_entry(s) as tmp:
        assert tmp != store.path(s)
        assert not store.has(s)  # not visible while building
        (tmp / "rootfs.tar").write_bytes(b"tar bytes")
    entry = store.path(s)
    assert entry == Path("/art/store/rootfs") / s.key
    assert store.has(s)
    assert (entry / "rootfs.tar").read_bytes() == b"tar bytes"
    recorded = json.loads((entry / INPUTS_FILE).read_text())
    assert recorded == {"stage": "rootfs", "version": 1, "inputs": INPUTS}
    assert leftovers(entry.parent) == []


def test_new_entry_exception_leaves_nothing(fs: Any) -> None:
    store = Store(art())
    s = si()
    with pytest.raises(RuntimeError, match="build failed"), store.new_entry(s) as tmp:
        (tmp / "half.tar").write_bytes(b"half")
        raise RuntimeError("build failed")
    assert not store.has(s)
    assert not store.path(s).exists()
    assert list(store.path(s).parent.iterdir()) == []


def test_directory_without_inputs_file_is_not_an_entry(fs: Any) -> None:
    store = Store(art())
    s = si()
    fs.create_file(store.path(s) / "rootfs.tar")
    assert not store.has(s)


def test_interleaved_commits_of_one_key_keep_one_entry(tmp_path: Path) -> None:
    """The second build to finish finds the key taken and discards its own copy."""
    store = Store(Layout(tmp_path))
    s = si()
    with store.new_entry(s) as first:
        (first / "who").write_text("first")
        with store.new_entry(s) as second:
            (second / "who").write_text("second")
        assert store.has(s)
    assert store.has(s)
    assert (store.path(s) / "who").read_text() == "second"
    assert json.loads((store.path(s) / INPUTS_FILE).read_text())["inputs"] == INPUTS
    assert [p.name for p in store.path(s).parent.iterdir()] == [s.key]


def test_concurrent_commits_of_one_key_keep_one_entry(tmp_path: Path) -> None:
    """Two threads inside new_entry at once: both succeed, one complete entry remains."""
    store = Store(Layout(tmp_path))
    s = si()
    both_inside = threading.Barrier(2)
    errors: list[BaseException] = []

    def build(tag: str) -> None:
        try:
            with store.new_entry(s) as tmp:
                (tmp / "payload").write_bytes(b"x" * 100_000)
                (tmp / "who").write_text(tag)
                both_inside.wait()
        except BaseException as exc:  # reported below; abort() frees the other thread
            both_inside.abort()
            errors.append(exc)

    threads = [threading.Thread(target=build, args=(tag,)) for tag in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    entry = store.path(s)
    assert store.has(s)
    assert (entry / "who").read_text() in ("a", "b")
    assert (entry / "payload").read_bytes() == b"x" * 100_000
    assert json.loads((entry / INPUTS_FILE).read_text())["inputs"] == INPUTS
    assert sorted(p.name for p in entry.parent.iterdir()) == [s.key]


def _lock_files(store: Store) -> list[Path]:
    return sorted((store.layout.store / ".locks").glob("*.lock"))


def _free(lock_file: Path) -> bool:
    """True if an exclusive flock on `lock_file` can be taken right now (not blocking)."""
    with open(lock_file) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def test_lock_is_exclusive_while_held(tmp_path: Path) -> None:
    store = Store(Layout(tmp_path))
    with store.lock(si()):
        (lock_file,) = _lock_files(store)
        assert not _free(lock_file)
    assert _free(lock_file)


def test_lock_makes_the_second_builder_reuse(tmp_path: Path) -> None:
    """A builder that waits on the lock sees the entry the holder committed."""
    store = Store(Layout(tmp_path))
    s = si()
    seen: list[bool] = []

    def second() -> None:
        with store.lock(s):
            seen.append(store.has(s))

    with store.lock(s):
        waiter = threading.Thread(target=second)
        waiter.start()
        with store.new_entry(s) as tmp:
            (tmp / "out").write_text("built once")
    waiter.join()
    assert seen == [True]


# --- why a stage ran -------------------------------------------------------------------------


def test_explain_miss_without_record(fs: Any) -> None:
    assert explain_miss(read_record(art(), "img", "rootfs"), si()) == \
        "no previous build of this image"


def test_explain_miss_with_unreadable_record(fs: Any) -> None:
    fs.create_file(str(art().record("img", "rootfs")), contents="{not json")
    assert explain_miss(read_record(art(), "img", "rootfs"), si()) == \
        "no previous build of this image"


def test_explain_miss_names_the_changed_nested_input(fs: Any) -> None:
    write_record(art(), "img", si())
    stored = json.loads(art().record("img", "rootfs").read_text())
    assert stored["key"] == si().key and stored["inputs"] == INPUTS
    changed = si(with_change(("dotfiles", ".bashrc"), "sha-new"))
    assert explain_miss(read_record(art(), "img", "rootfs"), changed) == "changed: dotfiles/.bashrc"


def test_explain_miss_names_added_and_removed_inputs(fs: Any) -> None:
    write_record(art(), "img", si())
    new = with_change(("dotfiles", ".zshrc"), "sha-z")
    del new["upstream"]
    assert explain_miss(read_record(art(), "img", "rootfs"), si(new)) == \
        "changed: dotfiles/.zshrc, upstream"


def test_explain_miss_shortens_long_lists(fs: Any) -> None:
    write_record(art(), "img", si({f"f{i}": i for i in range(8)}))
    msg = explain_miss(read_record(art(), "img", "rootfs"), si({f"f{i}": i + 1 for i in range(8)}))
    assert msg == "changed: f0, f1, f2, f3, f4 and 3 more"


def test_explain_miss_reports_a_version_change(fs: Any) -> None:
    write_record(art(), "img", si(version=1))
    assert explain_miss(read_record(art(), "img", "rootfs"), si(version=2)) == \
        "stage code changed (version 1 -> 2)"


def test_explain_miss_with_equal_inputs(fs: Any) -> None:
    write_record(art(), "img", si())
    assert explain_miss(read_record(art(), "img", "rootfs"), si()) == \
        "the previous output is no longer in the store"


def test_changed_inputs_without_previous() -> None:
    assert changed_inputs(None, INPUTS) == []


# --- file hashes -----------------------------------------------------------------------------


@pytest.fixture
def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every path pipeline.hashing.sha256_file reads, in order."""
    calls: list[Path] = []
    real = hashing.sha256_file

    def counting(path: Path) -> str:
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(hashing, "sha256_file", counting)
    return calls


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_memo_hashes_and_skips_unchanged_files(fs: Any, count_reads: list[Path]) -> None:
    f = Path("/data/disk.img")
    fs.create_file(f, contents=b"abc" * 1000)
    memo = FileHashMemo(Path("/cache/memo.json"))
    assert memo.sha256(f) == _sha(b"abc" * 1000)
    assert memo.sha256(f) == _sha(b"abc" * 1000)
    assert count_reads == [f]


def test_memo_rehashes_when_content_and_mtime_change(fs: Any, count_reads: list[Path]) -> None:
    f = Path("/data/f")
    fs.create_file(f, contents=b"old!")
    os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    memo = FileHashMemo(Path("/memo.json"))
    assert memo.sha256(f) == _sha(b"old!")
    f.write_bytes(b"new!")  # same size
    os.utime(f, ns=(2_000_000_000, 2_000_000_000))
    assert memo.sha256(f) == _sha(b"new!")
    assert count_reads == [f, f]


def test_memo_rehashes_when_size_changes_with_same_mtime(fs: Any,
                                                         count_reads: list[Path]) -> None:
    f = Path("/data/f")
    fs.create_file(f, contents=b"four")
    os.utime(f, ns=(5, 5))
    memo = FileHashMemo(Path("/memo.json"))
    memo.sha256(f)
    f.write_bytes(b"five!")
    os.utime(f, ns=(5, 5))
    assert memo.sha256(f) == _sha(b"five!")
    assert len(count_reads) == 2


def test_memo_rehashes_a_replaced_file(fs: Any, count_reads: list[Path]) -> None:
    """Same size and mtime but a new inode (an atomic rewrite) is a new identity."""
    f = Path("/data/f")
    fs.create_file(f, contents=b"AAAA")
    os.utime(f, ns=(7, 7))
    memo = FileHashMemo(Path("/memo.json"))
    memo.sha256(f)
    fs.create_file("/data/g", contents=b"BBBB")
    os.utime("/data/g", ns=(7, 7))
    os.replace("/data/g", f)
    assert memo.sha256(f) == _sha(b"BBBB")
    assert len(count_reads) == 2


def test_memo_persists_across_instances(fs: Any, count_reads: list[Path]) -> None:
    f = Path("/data/f")
    fs.create_file(f, contents=b"payload")
    memo_path = Path("/cache/memo.json")
    first = FileHashMemo(memo_path)
    digest = first.sha256(f)
    first.save()
    assert memo_path.is_file()
    assert FileHashMemo(memo_path).sha256(f) == digest == _sha(b"payload")
    assert count_reads == [f]


def test_memo_without_save_forgets(fs: Any, count_reads: list[Path]) -> None:
    f = Path("/data/f")
    fs.create_file(f, contents=b"payload")
    FileHashMemo(Path("/memo.json")).sha256(f)
    FileHashMemo(Path("/memo.json")).sha256(f)
    assert len(count_reads) == 2


def test_memo_save_writes_only_when_something_was_hashed(fs: Any) -> None:
    memo_path = Path("/cache/memo.json")
    FileHashMemo(memo_path).save()
    assert not memo_path.exists()


def test_memo_survives_a_corrupt_memo_file(fs: Any) -> None:
    fs.create_file("/memo.json", contents="{truncated")
    fs.create_file("/f", contents=b"x")
    assert FileHashMemo(Path("/memo.json")).sha256(Path("/f")) == _sha(b"x")


# --- tree manifests --------------------------------------------------------------------------


@pytest.fixture
def tree(fs: Any) -> Path:
    root = Path("/dotfiles")
    fs.create_file(root / ".bashrc", contents="alias ll='ls -l'\n", st_mode=stat.S_IFREG | 0o644)
    fs.create_file(root / ".config/git/config", contents="[user]\n",
                   st_mode=stat.S_IFREG | 0o600)
    fs.create_symlink(root / ".vimrc", ".config/vim/vimrc")
    fs.create_symlink(root / "cfg", ".config")  # a link to a directory: not followed
    os.chmod(root / ".config", 0o755)
    os.chmod(root / ".config/git", 0o700)
    return root


def test_tree_digests_entries(tree: Path) -> None:
    assert tree_digests(tree) == {
        ".bashrc": "644:" + _sha(b"alias ll='ls -l'\n"),
        ".config": "dir:755",
        ".config/git": "dir:700",
        ".config/git/config": "600:" + _sha(b"[user]\n"),
        ".vimrc": "link:.config/vim/vimrc",
        "cfg": "link:.config",
    }


def test_tree_digests_ignores_mtimes(tree: Path) -> None:
    before = tree_digests(tree)
    for p in (tree / ".bashrc", tree / ".config", tree / ".config/git/config"):
        os.utime(p, ns=(123_456_789, 123_456_789))
    assert tree_digests(tree) == before


def _diff(a: dict[str, str], b: dict[str, str]) -> set[str]:
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def test_tree_digests_sees_content(tree: Path) -> None:
    before = tree_digests(tree)
    (tree / ".bashrc").write_text("alias ll='ls -la'\n")
    assert _diff(before, tree_digests(tree)) == {".bashrc"}


def test_tree_digests_sees_file_and_dir_modes(tree: Path) -> None:
    before = tree_digests(tree)
    os.chmod(tree / ".bashrc", 0o755)
    os.chmod(tree / ".config/git", 0o750)
    assert _diff(before, tree_digests(tree)) == {".bashrc", ".config/git"}


def test_tree_digests_sees_renames(tree: Path) -> None:
    before = tree_digests(tree)
    os.rename(tree / ".bashrc", tree / ".bash_profile")
    after = tree_digests(tree)
    assert _diff(before, after) == {".bashrc", ".bash_profile"}
    assert after[".bash_profile"] == before[".bashrc"]


def test_tree_digests_sees_symlink_targets(tree: Path) -> None:
    before = tree_digests(tree)
    os.unlink(tree / ".vimrc")
    os.symlink(".config/nvim/init.vim", tree / ".vimrc")
    after = tree_digests(tree)
    assert _diff(before, after) == {".vimrc"}
    assert after[".vimrc"] == "link:.config/nvim/init.vim"


def test_tree_digests_of_missing_root(fs: Any) -> None:
    assert tree_digests(Path("/nowhere")) == {}


# --- atomic writes ---------------------------------------------------------------------------


@pytest.fixture
def umask() -> Iterator[Any]:
    """Set the process umask for one test; restored afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def test_atomic_path_replaces_target(tmp_path: Path) -> None:
    target = tmp_path / "out.img"
    target.write_bytes(b"old")
    with atomic_path(target, suffix=".img") as tmp:
        assert tmp.parent == target.parent and tmp != target
        assert target.read_bytes() == b"old"  # untouched until the body is done
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["out.img"]


def test_atomic_path_failure_keeps_old_target(tmp_path: Path) -> None:
    target = tmp_path / "out.img"
    target.write_bytes(b"old")
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise ValueError("interrupted")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.img"]


def test_atomic_path_failure_without_old_target(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.img"
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert os.listdir(tmp_path / "sub") == []


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_path_mode_follows_umask(tmp_path: Path, umask: Any, mask: int,
                                        mode: int) -> None:
    """The artifact gets 0666 & ~umask like any new file, not mkstemp's 0600."""
    umask(mask)
    target = tmp_path / "out.img"
    atomic_write_bytes(target, b"data")
    assert stat.S_IMODE(target.stat().st_mode) == mode
    assert umask(mask) == mask  # atomic_path put the umask back


def test_atomic_write_bytes(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.json"
    atomic_write_bytes(target, b'{"k": 1}')
    assert target.read_bytes() == b'{"k": 1}'


# --- publishing ------------------------------------------------------------------------------


def test_link_or_copy_hard_links(tmp_path: Path) -> None:
    src = tmp_path / "store-file"
    src.write_bytes(b"artifact")
    dst = tmp_path / "out" / "baguette_rootfs.img.zst"
    link_or_copy(src, dst)
    assert dst.read_bytes() == b"artifact"
    assert os.path.samefile(src, dst)
    assert leftovers(dst.parent) == []


def test_link_or_copy_replaces_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Up to the single rename, dst holds the old content and the new file is elsewhere."""
    src = tmp_path / "new"
    src.write_bytes(b"new artifact")
    dst = tmp_path / "published"
    dst.write_bytes(b"old artifact")
    seen: list[tuple[bytes, bytes]] = []
    real_replace = os.replace

    def spy(a: Any, b: Any) -> None:
        seen.append((Path(a).read_bytes(), Path(b).read_bytes()))
        real_replace(a, b)

    monkeypatch.setattr(fsutil.os, "replace", spy)
    link_or_copy(src, dst)
    assert seen == [(b"new artifact", b"old artifact")]
    assert dst.read_bytes() == b"new artifact"
    assert sorted(os.listdir(tmp_path)) == ["new", "published"]


def test_link_or_copy_falls_back_to_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"artifact")

    def no_link(a: Any, b: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(fsutil.os, "link", no_link)
    dst = tmp_path / "dst"
    link_or_copy(src, dst)
    assert dst.read_bytes() == b"artifact"
    assert not os.path.samefile(src, dst)
    assert sorted(os.listdir(tmp_path)) == ["dst", "src"]


def test_link_or_copy_failure_keeps_old_dst(tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    dst.write_bytes(b"old")
    with pytest.raises(OSError):
        link_or_copy(tmp_path / "missing", dst)
    assert dst.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["dst"]


def test_link_output_links_store_file(tmp_path: Path) -> None:
    src = tmp_path / "store" / "pack" / "k" / "disk.img"
    src.parent.mkdir(parents=True)
    src.write_bytes(b"disk")
    dst = tmp_path / "bookworm" / "disk.img"
    link_output(src, dst)
    assert os.path.samefile(src, dst)


# --- entry verification and what killed builds leave -----------------------------------------


def test_entry_records_its_files_and_verifies(tmp_path: Path) -> None:
    store = Store(Layout(tmp_path))
    s = si()
    with store.new_entry(s) as tmp:
        (tmp / "big.img").write_bytes(b"b" * (store_mod.CHEAP_HASH + 1))
        (tmp / "sub").mkdir()
        (tmp / "sub" / "small").write_bytes(b"small")
    entry = store.path(s)
    listed = (entry / FILES_FILE).read_text().splitlines()
    assert [line.split("  ")[1:] for line in listed] == [
        [str(store_mod.CHEAP_HASH + 1), "big.img"], ["5", "sub/small"]]
    assert store_mod.problems(entry) == [] and store.intact(s)

    with open(entry / "big.img", "r+b") as f:  # same size, other bytes: only a full check
        f.write(b"X")
    assert store.intact(s)
    assert store_mod.problems(entry) == ["big.img does not match its sha256"]
    (entry / "sub" / "small").write_bytes(b"SMALL")  # small files are hashed on reuse
    assert not store.intact(s)
    (entry / "sub" / "small").write_bytes(b"small!")
    assert "sub/small has 6 bytes, 5 expected" in store_mod.problems(entry, full=False)
    (entry / "sub" / "small").unlink()
    assert "sub/small is missing" in store_mod.problems(entry, full=False)


def test_an_entry_from_before_file_lists_is_accepted(tmp_path: Path) -> None:
    store = Store(Layout(tmp_path))
    s = si()
    with store.new_entry(s) as tmp:
        (tmp / "f").write_text("x")
    (store.path(s) / FILES_FILE).unlink()
    assert store.intact(s) and store_mod.problems(store.path(s)) == []


def test_set_aside_and_stale_entries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(Layout(tmp_path))
    s = si()
    with store.new_entry(s) as tmp:
        (tmp / "f").write_text("x")
    stage_dir = store.path(s).parent
    (stage_dir / f".{s.key}.abc123.tmp").mkdir()  # a killed build's half-built entry
    (stage_dir / ".otherkey.abc123.tmp").mkdir()  # another key's: not ours to remove
    store.remove_stale(s)
    assert sorted(p.name for p in stage_dir.iterdir()) == [".otherkey.abc123.tmp", s.key]
    store.set_aside(store.path(s), ["f does not match its sha256"])
    assert not store.has(s)
    assert sorted(p.name for p in stage_dir.iterdir()) == [".otherkey.abc123.tmp"]
    assert "is damaged (f does not match its sha256)" in capsys.readouterr().err


def test_stale_run_directories_go_and_nothing_else(tmp_path: Path) -> None:
    with contextlib.ExitStack() as held:
        mine = fsutil.hold_run_dir(tmp_path, held)
        (tmp_path / "run.0123456789abcdef").mkdir()  # a killed run's, its lock gone
        (tmp_path / "run.0123456789abcdef" / "half").write_text("x")
        (tmp_path / "run.fedcba9876543210.lock").write_text("")  # a killed run's, not held
        (tmp_path / "pack.1234.xyz").mkdir()  # no run directory: never touched
        (tmp_path / "run.photos").mkdir()
        fsutil.remove_stale_run_dirs(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [mine.name, f"{mine.name}.lock", "pack.1234.xyz", "run.photos"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pack.1234.xyz", "run.photos"]


def reaped_pid() -> int:
    """The pid of a child that has exited and been reaped."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_link_output_removes_what_a_killed_link_left(tmp_path: Path) -> None:
    src = tmp_path / "store-file"
    src.write_bytes(b"image")
    out = tmp_path / "out"
    out.mkdir()
    dst = out / "baguette_rootfs.img.zst"
    dead = reaped_pid()
    for name in (f".{dst.name}.{dead}.abcd1234.tmp",  # an older version's, by pid: no lock
                 f".{dst.name}.0badc0ffee00.tmp",  # a killed writer's, its lock not held
                 f".{dst.name}.0badc0ffee00.lock", f".other.{dead}.abcd1234.tmp"):
        (out / name).write_bytes(b"half")
    with atomic_path(dst) as live:  # a live writer's (in this process, or another)
        live.write_bytes(b"being written")
        link_output(src, dst)
        assert dst.read_bytes() == b"image"
        assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".lock")) == \
            sorted([dst.name, live.name, f".other.{dead}.abcd1234.tmp"])
    assert dst.read_bytes() == b"being written"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [dst.name, f".other.{dead}.abcd1234.tmp"])
