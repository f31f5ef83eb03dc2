"""pipeline/baguette/check.py: the checks a Baguette image passes before it is kept. Small
inputs made here: a tiny real btrfs (mkfs.btrfs on a 128 MiB sparse file, no root needed),
zstd frames of it, of random bytes and of zeros, and truncated or mislabelled copies."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import zstandard

from pipeline.baguette import check
from pipeline.core.errors import PipelineError, ToolError
from pipeline.core.run import run, which
from tests.support.tools import tool_missing

LABEL = "baguette-test"
SIZE = 128 << 20


def require_btrfs() -> None:
    missing = [t for t in ("mkfs.btrfs", "btrfs") if which(t) is None]
    if missing:
        tool_missing(f"missing {', '.join(missing)} (btrfs-progs; run "
                     "`python3 -m pipeline.hostsetup --tests`)")


@pytest.fixture(scope="module")
def btrfs_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh, empty btrfs labelled LABEL: no subvolume, as mkfs.btrfs makes it."""
    require_btrfs()
    image = tmp_path_factory.mktemp("btrfs") / "disk.img"
    with open(image, "wb") as f:
        f.truncate(SIZE)
    run(["mkfs.btrfs", "-q", "-L", LABEL, image])
    return image


def zst(path: Path, data: bytes, **kw: bool) -> Path:
    path.write_bytes(zstandard.ZstdCompressor(level=1, **kw).compress(data))
    return path


def refused(fn: object, *args: object) -> PipelineError:
    with pytest.raises(PipelineError) as exc:
        fn(*args)  # type: ignore[operator]
    assert "rebuild" in exc.value.hint, exc.value.hint
    return exc.value


# --- the compressed image ------------------------------------------------------------------


def test_compressed_btrfs_with_its_label_and_size_passes(tmp_path: Path,
                                                         btrfs_image: Path) -> None:
    good = zst(tmp_path / "good.zst", btrfs_image.read_bytes())
    assert check.check_compressed(good, LABEL, SIZE) is None


def test_wrong_label_is_refused(tmp_path: Path, btrfs_image: Path) -> None:
    good = zst(tmp_path / "good.zst", btrfs_image.read_bytes())
    err = refused(check.check_compressed, good, "other-label", SIZE)
    assert err.message == f"{good}: label is {LABEL!r}, expected 'other-label'"


def test_wrong_content_size_is_refused(tmp_path: Path, btrfs_image: Path) -> None:
    good = zst(tmp_path / "good.zst", btrfs_image.read_bytes())
    err = refused(check.check_compressed, good, LABEL, SIZE + 4096)
    assert err.message == (f"{good}: zstd frame content size is {SIZE}, "
                           f"expected {SIZE + 4096}")


def test_a_frame_without_its_content_size_is_refused(tmp_path: Path,
                                                     btrfs_image: Path) -> None:
    """ChromeOS needs the size up front: a streamed frame does not carry it."""
    streamed = zst(tmp_path / "streamed.zst", btrfs_image.read_bytes(),
                   write_content_size=False)
    err = refused(check.check_compressed, streamed, LABEL, SIZE)
    assert "zstd frame content size is" in err.message
    assert err.message.endswith(f"expected {SIZE}")


def test_random_bytes_are_not_a_btrfs(tmp_path: Path) -> None:
    data = os.urandom(2 << 20)
    noise = zst(tmp_path / "noise.zst", data)
    err = refused(check.check_compressed, noise, LABEL, len(data))
    assert "libmagic does not see a btrfs filesystem" in err.message
    assert str(noise) in err.message


def test_compressed_zeros_are_not_a_btrfs(tmp_path: Path) -> None:
    zeros = zst(tmp_path / "zeros.zst", bytes(SIZE // 16))
    err = refused(check.check_compressed, zeros, LABEL, SIZE // 16)
    assert "libmagic does not see a btrfs filesystem: 'data'" in err.message


def test_a_zst_cut_within_its_head_is_refused(tmp_path: Path, btrfs_image: Path) -> None:
    whole = zst(tmp_path / "whole.zst", btrfs_image.read_bytes()).read_bytes()
    cut = tmp_path / "cut.zst"
    cut.write_bytes(whole[:32])  # the frame header survives, the superblock does not
    err = refused(check.check_compressed, cut, LABEL, SIZE)
    assert "the stream ends after 0 of" in err.message


def test_a_file_that_is_not_zstd_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "not-compressed.img.zst"
    raw.write_bytes(bytes(1 << 20))
    refused(check.check_compressed, raw, LABEL, 1 << 20)


def test_a_zst_cut_after_its_head_is_refused(tmp_path: Path, btrfs_image: Path) -> None:
    whole = zst(tmp_path / "whole.zst", btrfs_image.read_bytes()).read_bytes()
    cut = tmp_path / "cut.zst"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(PipelineError):
        check.check_compressed(cut, LABEL, SIZE)


# --- the raw image -------------------------------------------------------------------------


def test_raw_zeros_fail_btrfs_check(tmp_path: Path) -> None:
    require_btrfs()
    zeros = tmp_path / "zeros.img"
    zeros.write_bytes(bytes(1 << 20))
    with pytest.raises(ToolError) as exc:
        check.check_raw(zeros)
    assert exc.value.message.startswith("btrfs failed (exit 1): check --readonly")
    assert "No valid Btrfs found" in exc.value.stderr
    assert exc.value.hint == "the filesystem is damaged; rebuild the image"


def test_raw_truncated_btrfs_fails_btrfs_check(tmp_path: Path, btrfs_image: Path) -> None:
    cut = tmp_path / "cut.img"
    cut.write_bytes(btrfs_image.read_bytes()[: 1 << 20])  # past the superblock, not the trees
    with pytest.raises(ToolError) as exc:
        check.check_raw(cut)
    assert "check --readonly" in exc.value.message
    assert exc.value.hint == "the filesystem is damaged; rebuild the image"


def test_raw_btrfs_without_the_rootfs_subvolume_is_refused(btrfs_image: Path) -> None:
    """A sound filesystem that mkfs.btrfs made without the pack stage's subvolume."""
    err = refused(check.check_raw, btrfs_image)
    assert err.message == (f"{btrfs_image}: no subvolume 'rootfs_subvol' under the top level "
                           "(found [])")
