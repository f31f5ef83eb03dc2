"""pipeline/publish/tree.py: versions get distinct names, the old ones go only after the new
tree and index are in place, a failed publish leaves the tree as it was, the lock and the
`keep` policy belong to the published tree, and what is shipped is checked against the
store's recorded digests first."""

from __future__ import annotations

import datetime
import os
import threading
from pathlib import Path

import pytest

from pipeline import config, stages
from pipeline.core.errors import PipelineError
from pipeline.core.fsutil import held_lock
from pipeline.publish import tree as publish
from tests.support.projects import built, write_project
from tests.support.published import served_consistently

T0 = datetime.datetime(2026, 11, 24, 8, 0, tzinfo=datetime.UTC)
SECOND = datetime.timedelta(seconds=1)


def versions(root: Path, image: str = "tiny") -> list[str]:
    return sorted(os.listdir(root / "images" / image / "x86_64"))


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def test_two_builds_published_within_a_minute_get_distinct_versions(tmp_path: Path) -> None:
    publish.publish(built(write_project(tmp_path)), T0)
    done = publish.publish(built(write_project(tmp_path, description="second")), T0 + 30 * SECOND)
    root = tmp_path / "artifacts" / "publish"
    assert done.versions == {"tiny": "20261124_0801"} and done.new == ["tiny"]
    assert versions(root) == ["20261124_0800", "20261124_0801"]
    publish.verify_tree(root)


def test_a_failed_republish_in_the_same_minute_leaves_the_tree_as_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    publish.publish(built(write_project(tmp_path)), T0)
    root = tmp_path / "artifacts" / "publish"
    before = snapshot(root)
    again = built(write_project(tmp_path, description="second"))

    def broken(*args: object, **kwargs: object) -> None:
        raise PipelineError("disk on fire")

    monkeypatch.setattr(publish, "manifest", broken)
    with pytest.raises(PipelineError, match="disk on fire"):
        publish.publish(again, T0 + 10 * SECOND)
    assert snapshot(root) == before
    publish.verify_tree(root)


@pytest.mark.parametrize("fails", ["images.json", "index.json", "SHA256SUMS"])
def test_a_publish_failing_while_writing_the_index_rolls_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: str) -> None:
    for n in range(2):
        toml = write_project(tmp_path, "[publish]\nkeep = 2\n", description=f"build {n}")
        publish.publish(built(toml), T0 + n * 60 * SECOND)
    root = tmp_path / "artifacts" / "publish"
    before = snapshot(root)
    ctx = built(write_project(tmp_path, "[publish]\nkeep = 2\n", description="third"))
    real = publish.atomic_write_bytes

    def failing(target: Path, data: bytes) -> None:
        if target.name == fails:
            raise OSError(28, "No space left on device", str(target))
        real(target, data)

    monkeypatch.setattr(publish, "atomic_write_bytes", failing)
    with pytest.raises(OSError):
        publish.publish(ctx, T0 + 120 * SECOND)
    assert snapshot(root) == before, "the oldest version went before the new index was in place"
    assert [p.name for p in (root / "images/tiny/x86_64").iterdir()] != [] and \
        versions(root) == ["20261124_0800", "20261124_0801"]
    publish.verify_tree(root)


def test_a_future_dated_version_does_not_get_the_new_one_pruned(tmp_path: Path) -> None:
    day = datetime.timedelta(days=1)
    for n in (1, 2):  # a clock that was ahead
        toml = write_project(tmp_path, "[publish]\nkeep = 2\n", description=f"ahead {n}")
        publish.publish(built(toml), T0 + n * day)
    done = publish.publish(built(write_project(tmp_path, "[publish]\nkeep = 2\n",
                                               description="now")), T0)
    root = tmp_path / "artifacts" / "publish"
    assert done.versions == {"tiny": "20261126_0801"}
    assert versions(root) == ["20261126_0800", "20261126_0801"]
    publish.verify_tree(root)


def test_keep_prunes_only_the_images_this_config_publishes(tmp_path: Path) -> None:
    site = tmp_path / "site"
    other = tmp_path / "other"
    other.mkdir()
    toml = write_project(other, f'[publish]\ndir = "{site}"\nkeep = 5\n')
    toml.write_text(toml.read_text().replace("tiny", "other"))
    for n in range(3):
        toml.write_text(toml.read_text().replace(f'"busybox test image{n - 1 if n else ""}"',
                                                 f'"busybox test image{n}"'))
        ctx = stages.open_run(config.load(toml), 1_700_000_000)
        image = ctx.config.image("other")
        for stage in (stages.BASE, stages.ROOTFS, stages.LXC):
            stages.build(ctx, stage, image)
        publish.publish(ctx, T0 + n * 60 * SECOND)
    assert len(versions(site, "other")) == 3
    mine = write_project(tmp_path, f'[publish]\ndir = "{site}"\nkeep = 2\n')
    for n in range(3):
        publish.publish(built(write_project(tmp_path, f'[publish]\ndir = "{site}"\nkeep = 2\n',
                                            description=f"mine {n}")), T0 + n * 60 * SECOND)
    assert len(versions(site, "tiny")) == 2
    assert len(versions(site, "other")) == 3, "another config's versions were pruned"
    publish.verify_tree(site)
    del mine


def test_the_publish_lock_lives_in_the_published_tree(tmp_path: Path) -> None:
    """Two artifacts directories publishing into one tree wait for each other."""
    site = tmp_path / "site"
    ctx = built(write_project(tmp_path, f'[publish]\ndir = "{site}"\n'))
    site.mkdir()
    finished = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            publish.publish(ctx, T0)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finished.set()

    with held_lock(site / publish.LOCK):  # another artifacts directory is publishing
        thread = threading.Thread(target=run)
        thread.start()
        assert not finished.wait(1.0), "publish did not wait for the tree's lock"
    thread.join()
    assert errors == [] and versions(site) == ["20261124_0800"]


def test_publish_refuses_a_damaged_store_file_and_removes_the_entry(tmp_path: Path) -> None:
    ctx = built(write_project(tmp_path))
    entry = stages.entry(ctx, stages.LXC, ctx.config.image("tiny"))
    rootfs = entry / "rootfs.tar.xz"
    with open(rootfs, "r+b") as f:  # damaged in place, same size
        f.seek(rootfs.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(PipelineError) as exc:
        publish.publish(ctx, T0)
    assert "rootfs.tar.xz" in exc.value.message and "recorded" in exc.value.message
    assert "doit lxc:tiny" in exc.value.hint
    assert not entry.exists(), "the damaged entry stays in the store"
    root = tmp_path / "artifacts" / "publish"
    assert not (root / "images").exists() and served_consistently(root) == []
