"""`doit gc`: free the store of what is not wanted.

The caller says what is wanted (the keys the current images.toml needs, the newest few of
the build history of every image in the artifacts directory, whatever config built it:
layout.recent_keys); everything else is removed, renamed out of the way first, so a
concurrent build never sees a half-deleted entry under a valid name. Whatever the config,
an entry is kept while any process holds its lock (a build making or reading it), and `doit
gc` keeps it while it is younger than MIN_AGE: another config's build may be about to read it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.log import info
from .entries import Store
from .layout import INPUTS_FILE

MIN_AGE = 3600  # seconds: entries (and build records) this recent are kept


@dataclass(frozen=True)
class Collected:
    kept: int
    removed: list[Path]
    freed_bytes: int
    in_use: int = 0  # kept because a process holds their lock
    recent: int = 0  # kept because younger than min_age


def _size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def _age(entry: Path) -> float:
    """Seconds since the entry was committed (its inputs.json is written last; ctime, which
    no one can set back)."""
    st = (entry / INPUTS_FILE).stat()
    return time.time() - max(st.st_mtime, st.st_ctime)


def collect(store: Store, wanted: set[str], dry_run: bool = False,
            min_age: float = 0) -> Collected:
    """Remove every complete entry whose key is not in `wanted`, that no process holds and
    that is older than `min_age` seconds (`doit gc` passes MIN_AGE: stages.collect_garbage)."""
    removed: list[Path] = []
    freed = kept = in_use = recent = 0
    for stage, entries in store.entries().items():
        for entry in entries:
            if entry.name in wanted:
                kept += 1
                continue
            if _age(entry) < min_age:
                recent += 1
                continue
            with store.unused(stage, entry.name) as free:
                if not free:
                    in_use += 1
                    continue
                freed += _size(entry)
                removed.append(entry)
                if not dry_run:
                    trash = entry.with_name(f".{entry.name}.gc.tmp")
                    os.rename(entry, trash)
                    shutil.rmtree(trash)
    held = f"; {in_use} in use by a running build" if in_use else ""
    young = f"; {recent} built in the last {min_age / 60:.0f} minutes" if recent else ""
    info(f"gc: kept {kept + in_use + recent} store entries{held}{young}, "
         f"{'would remove' if dry_run else 'removed'} {len(removed)}, "
         f"{'would free' if dry_run else 'freed'} {freed / 2**20:.0f} MiB")
    return Collected(kept + in_use + recent, removed, freed, in_use, recent)
