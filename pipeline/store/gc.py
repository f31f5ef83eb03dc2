"""`doit gc`: free the store of what is not wanted.

The caller says what is wanted (the keys the current images.toml needs, and the newest few of
each image's build history: layout.recent_keys); everything else is removed, renamed out of
the way first, so a concurrent build never sees a half-deleted entry under a valid name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..core.log import info
from .entries import Store


@dataclass(frozen=True)
class Collected:
    kept: int
    removed: list[Path]
    freed_bytes: int


def _size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def collect(store: Store, wanted: set[str], dry_run: bool = False) -> Collected:
    """Remove every complete entry whose key is not in `wanted`."""
    removed: list[Path] = []
    freed = kept = 0
    for _stage, entries in store.entries().items():
        for entry in entries:
            if entry.name in wanted:
                kept += 1
                continue
            freed += _size(entry)
            removed.append(entry)
            if not dry_run:
                trash = entry.with_name(f".{entry.name}.gc")
                os.rename(entry, trash)
                shutil.rmtree(trash)
    info(f"gc: kept {kept} store entries, {'would remove' if dry_run else 'removed'} "
         f"{len(removed)}, {'would free' if dry_run else 'freed'} {freed / 2**20:.0f} MiB")
    return Collected(kept, removed, freed)
