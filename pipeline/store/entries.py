"""The content-addressed store under <artifacts>/store/.

Every stage output lives at `store/<stage>/<key>/`, where the key hashes the *content* of the
stage's inputs (keys.py). A directory that exists under its final name is a complete entry:
entries are built beside it under a temporary name and renamed into place. Each entry holds
`files.sha256` (size and sha256 of every file it holds) and, written last, `inputs.json`, the
named inputs that made the key. `problems` checks an entry against its `files.sha256`: sizes
and the hashes of small files when an entry is reused, every hash in `doit fsck` and
`doit verify`. A half-built entry left by a killed build (`.<key>.*.tmp`) is removed by the
next build of that key, or by `sweep` once no build holds its lock.

Only entries are ever removed: a directory is one when its own inputs.json names its stage
(is_entry). Anything else found under store/ (a user's files, a damaged inputs.json) is left
alone and `strangers` names it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..core.errors import PipelineError
from ..core.fsutil import atomic_dir, link_or_copy, remove_stale_temps
from ..core.log import warn
from .hashing import file_digest
from .keys import StageInputs
from .layout import FILES_FILE, INPUTS_FILE, Layout

CHEAP_HASH = 1 << 20  # on reuse, files up to this size are hashed, larger ones only sized
_TEMP = re.compile(r"\.([0-9a-f]{32})\..+\.tmp")  # .<key>.*.tmp: half-built, set aside, gc'd


def is_entry(path: Path) -> bool:
    """A complete entry the pipeline made: a directory (not a symlink) whose inputs.json
    names the stage directory it is in."""
    if path.name.startswith(".") or path.is_symlink() or not path.is_dir():
        return False
    try:
        payload = json.loads((path / INPUTS_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(payload, dict) and payload.get("stage") == path.parent.name


class Store:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def path(self, si: StageInputs) -> Path:
        return self.layout.entry(si.stage, si.key)

    def _stage_dirs(self) -> list[Path]:
        base = self.layout.store
        if not base.is_dir():
            return []
        return sorted(d for d in base.iterdir()
                      if not d.name.startswith(".") and d.is_dir() and not d.is_symlink())

    def entries(self) -> dict[str, list[Path]]:
        """Complete entries by stage (is_entry: temporary names and whatever else lies in
        the store are not entries)."""
        return {d.name: sorted(p for p in d.iterdir() if is_entry(p))
                for d in self._stage_dirs()}

    def strangers(self) -> list[str]:
        """What the stage directories hold besides entries and temporary names
        (`stage/name`): never touched, only named by fsck."""
        return [f"{d.name}/{p.name}" for d in self._stage_dirs() for p in sorted(d.iterdir())
                if not p.name.startswith(".") and not is_entry(p)]

    def has(self, si: StageInputs) -> bool:
        return (self.path(si) / INPUTS_FILE).is_file()

    @contextlib.contextmanager
    def lock(self, si: StageInputs) -> Iterator[None]:
        """Serialise builds of one key across processes (the second waits, then reuses)."""
        path = self.layout.lock(si.stage, si.key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            f = open(path, "w")  # noqa: SIM115
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise PipelineError(
                f"cannot write the store under {self.layout.root}: {exc.strerror} "
                f"({exc.filename})",
                hint="build.artifacts must name a writable directory") from None
        with f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def new_entry(self, si: StageInputs, expect: dict[str, tuple[str, int]] | None = None,
                  known: dict[str, str] | None = None) -> Iterator[Path]:
        """A temporary directory to build into; committed under its key on success, with
        its files' sizes and hashes, then its inputs (last: they mark it complete).

        With `expect` ({path: (digest, size)}, what another store recorded for this key: a
        remote's entry), the files must be exactly those: any other digest, size, a missing
        or an extra file raises, naming it, and nothing enters the store. `known` gives the
        digests of files the caller hashed as it wrote them (not read again)."""
        with atomic_dir(self.path(si)) as tmp:
            yield tmp
            listed = file_list(tmp, known)
            if expect is not None:
                found = differences(expect, parse_file_list(listed))
                if found:
                    raise PipelineError(
                        f"{si.stage} entry {si.key} does not match its recorded digests: "
                        f"{'; '.join(found[:3])}",
                        hint="nothing of it entered the store; the stage is built here")
            (tmp / FILES_FILE).write_text(listed)
            payload = {"stage": si.stage, "version": si.version, "inputs": si.inputs}
            (tmp / INPUTS_FILE).write_text(json.dumps(payload, indent=1, sort_keys=True))

    @contextlib.contextmanager
    def using(self, si: StageInputs) -> Iterator[None]:
        """Hold a shared lock on an entry while reading it (gc leaves a held entry alone)."""
        path = self.layout.lock(si.stage, si.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_SH)
            yield

    @contextlib.contextmanager
    def unused(self, stage: str, key: str) -> Iterator[bool]:
        """Take the key's lock if nobody holds it (no build, no reader): True then."""
        path = self.layout.lock(stage, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def remove_stale(self, si: StageInputs) -> None:
        """Remove half-built entries of `si` left by a killed build; call under lock(si)."""
        stage_dir = self.path(si).parent
        if stage_dir.is_dir():
            for tmp in stage_dir.glob(f".{si.key}.*.tmp"):
                shutil.rmtree(tmp, ignore_errors=True)

    def sweep(self) -> None:
        """Remove every half-built entry (`.<key>.*.tmp`) whose builder is gone: its key's
        lock exists (the builder made it first) and nobody holds it."""
        for stage_dir in self._stage_dirs():
            for tmp in stage_dir.glob(".*.tmp"):
                m = _TEMP.fullmatch(tmp.name)
                lock = self.layout.lock(stage_dir.name, m.group(1)) if m else None
                if lock is None or not lock.is_file():
                    continue
                try:
                    with open(lock) as f:
                        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        shutil.rmtree(tmp, ignore_errors=True)
                        fcntl.flock(f, fcntl.LOCK_UN)
                except OSError:  # BlockingIOError: being built right now
                    continue

    def intact(self, si: StageInputs) -> bool:
        """A cheap check of a complete entry (sizes; hashes of small files)."""
        return not problems(self.path(si), full=False)

    @staticmethod
    def set_aside(entry: Path, found: list[str]) -> None:
        """Take a damaged entry out of the store (under its key's lock), saying why."""
        warn(f"{entry.parent.name} entry {entry.name} is damaged "
             f"({'; '.join(found[:3])}); removing it, to be built again")
        Store.discard(entry, "damaged")

    @staticmethod
    def discard(entry: Path, why: str = "rebuilt") -> None:
        """Take an entry out of the store (under its key's lock), to be built again: the
        stable names and a published tree keep their files (hard links)."""
        aside = entry.parent / f".{entry.name}.{why}.{os.getpid()}.tmp"
        os.rename(entry, aside)
        shutil.rmtree(aside, ignore_errors=True)


def file_list(entry: Path, known: dict[str, str] | None = None) -> str:
    """`files.sha256` of a directory: "sha256  size  path" per file, sorted (a file with
    holes gets hashing.sparse_sha256, which does not read them); a file in `known` has the
    digest given there."""
    lines = []
    for dirpath, dirnames, filenames in os.walk(entry):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(entry).as_posix()
            if rel in (FILES_FILE, INPUTS_FILE) or p.is_symlink():
                continue
            digest = (known or {}).get(rel) or file_digest(p)
            lines.append(f"{digest}  {p.stat().st_size}  {rel}\n")
    return "".join(lines)


def parse_file_list(listed: str) -> dict[str, tuple[str, int]]:
    """{path: (digest, size)} of a files.sha256 text (malformed lines are left out)."""
    out: dict[str, tuple[str, int]] = {}
    for line in listed.splitlines():
        digest, _, rest = line.partition("  ")
        size, _, rel = rest.partition("  ")
        if size.isdigit() and rel:
            out[rel] = (digest, int(size))
    return out


def recorded(entry: Path) -> dict[str, tuple[str, int]]:
    """{path: (sha256, size)} as the entry's files.sha256 gives them ({} when it has none)."""
    try:
        return parse_file_list((entry / FILES_FILE).read_text())
    except OSError:
        return {}


def differences(expected: dict[str, tuple[str, int]],
                actual: dict[str, tuple[str, int]]) -> list[str]:
    """How two {path: (digest, size)} lists differ, one phrase per file (empty: equal)."""
    found = []
    for rel in sorted(expected.keys() | actual.keys()):
        want, got = expected.get(rel), actual.get(rel)
        if got is None:
            found.append(f"{rel} is missing")
        elif want is None:
            found.append(f"{rel} is not recorded")
        elif got[1] != want[1]:
            found.append(f"{rel} has {got[1]} bytes, {want[1]} recorded")
        elif got[0] != want[0]:
            found.append(f"{rel} has sha256 {got[0]}, {want[0]} recorded")
    return found


def problems(entry: Path, full: bool = True) -> list[str]:
    """What is wrong with a complete entry, compared with its `files.sha256` (empty: fine).

    `full` hashes every file; otherwise only files up to CHEAP_HASH bytes, and the others'
    sizes are compared. An entry from before files.sha256 existed has nothing to compare.
    """
    try:
        listed = (entry / FILES_FILE).read_text()
    except FileNotFoundError:
        return [] if (entry / INPUTS_FILE).is_file() else [f"{INPUTS_FILE} is missing"]
    except OSError as exc:
        return [f"{FILES_FILE}: {exc.strerror}"]
    found = []
    for line in listed.splitlines():
        try:
            digest, size_text, rel = line.split("  ", 2)
            size = int(size_text)
        except ValueError:
            found.append(f"{FILES_FILE} has a malformed line")
            continue
        p = entry / rel
        try:
            actual = p.stat().st_size
        except OSError:
            found.append(f"{rel} is missing")
            continue
        if actual != size:
            found.append(f"{rel} has {actual} bytes, {size} expected")
        elif (full or size <= CHEAP_HASH) and file_digest(p, like=digest) != digest:
            found.append(f"{rel} does not match its sha256")
    return found


def link_output(src: Path, dst: Path) -> None:
    """Give a store file its stable per-image name (and drop what a killed link left)."""
    if dst.parent.is_dir():
        remove_stale_temps(dst)
    link_or_copy(src, dst)
