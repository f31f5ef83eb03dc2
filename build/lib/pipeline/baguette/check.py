"""Validate a Baguette image: what ChromeOS relies on, checked without mounting anything.

- the .zst: the whole stream decompresses to the content size its frame carries (a cut copy
  fails), and libmagic calls its head a BTRFS filesystem with our label;
- the raw image: `btrfs check` finds no error, the top level holds exactly one entry, the
  subvolume `rootfs_subvol`, and that subvolume is the default.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..core.errors import PipelineError
from ..core.run import run
from .pack import SUBVOL

SUPERBLOCK = 0x10000
HEAD = 1 << 20
CHUNK = 4 << 20


def _bad(what: str, path: Path) -> PipelineError:
    return PipelineError(f"{path}: {what}",
                         hint="the image is not what ChromeOS boots; rebuild it "
                         "(`doit forget` the image's tasks) and report this if it persists")


def check_compressed(zst: Path, label: str, image_size: int) -> None:
    """The whole stream decompresses to `image_size` bytes, and its head is our btrfs."""
    import magic
    import zstandard

    try:
        with open(zst, "rb") as f:
            params = zstandard.get_frame_parameters(f.read(18))
            if params.content_size != image_size:
                raise _bad(f"zstd frame content size is {params.content_size}, "
                           f"expected {image_size}", zst)
            f.seek(0)
            reader = zstandard.ZstdDecompressor().stream_reader(f, read_size=CHUNK)
            head = reader.read(HEAD)
            total = len(head)
            while chunk := reader.read(CHUNK):
                total += len(chunk)
    except zstandard.ZstdError as exc:
        raise _bad(f"not a whole zstd stream ({exc})", zst) from None
    if total != image_size:
        raise _bad(f"the stream ends after {total} of {image_size} bytes (cut short?)", zst)
    described = magic.from_buffer(head)
    if "BTRFS" not in described:
        raise _bad(f"libmagic does not see a btrfs filesystem: {described!r}", zst)
    found = head[SUPERBLOCK + 0x12B: SUPERBLOCK + 0x12B + 256].split(b"\0")[0].decode()
    if found != label:
        raise _bad(f"label is {found!r}, expected {label!r}", zst)


def check_raw(image: Path) -> None:
    run(["btrfs", "check", "--readonly", image],
        hint="the filesystem is damaged; rebuild the image")
    root = run(["btrfs", "inspect-internal", "dump-tree", "-t", "root", image],
               capture_stdout=True).stdout.decode()
    refs = dict((m.group(2), int(m.group(1))) for m in re.finditer(
        r"key \(FS_TREE ROOT_REF (\d+)\).*?\n\s+root ref key .*? name (\S+)", root))
    if SUBVOL not in refs:
        raise _bad(f"no subvolume {SUBVOL!r} under the top level (found {sorted(refs)})", image)
    default = re.search(r"location key \((\d+|FS_TREE) ROOT_ITEM [^)]*\).*?\n.*?\n\s+name: default",
                        root)
    if default is None or default.group(1) != str(refs[SUBVOL]):
        raise _bad(f"the default subvolume is not {SUBVOL!r}", image)
    top = run(["btrfs", "inspect-internal", "dump-tree", "-t", "5", image],
              capture_stdout=True).stdout.decode()
    names = re.findall(r"DIR_INDEX \d+\).*?\n(?:.*\n){1,3}?\s+name: (.*)", top)
    if names != [SUBVOL]:
        raise _bad(f"the top level should hold only {SUBVOL!r}, it holds {names[:5]}", image)
