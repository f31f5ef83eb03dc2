"""Where everything lives under the artifacts directory, and the per-image build records.

    <artifacts>/
      .pipeline-artifacts           the mark: this directory is the pipeline's (claim)
      store/<stage>/<key>/          a complete entry (entries.py): its files, then
          files.sha256              size and sha256 of each file (written before inputs.json)
          build.json                when it was built, how long it took, the stage's facts
          inputs.json               the named inputs that made the key (written last)
      store/.locks/<stage>-<key>.lock
      <image>/                      the image's outputs under stable names (links into the store)
      <image>/.inputs/<stage>.json  the record of the image's latest build of that stage
      <image>/.inputs/<stage>.history  the keys it was built with, newest last (gc keeps some)
      logs/<image>/<what>.console.log  VM helper console logs
      .cache/                       the hash memo (the KVM verdict is per user: accel.verdict_dir)
      tmp/run.<id>/, run.<id>.lock  one process's work directories, and the lock it holds

This module is the only one that knows these names. The record of a stage's latest build is
what `explain_miss` compares a new key's inputs with ("changed: dotfiles/.bashrc").
"""

from __future__ import annotations

import errno
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import PipelineError
from ..core.fsutil import atomic_write_bytes
from .keys import StageInputs

# Top-level names under <artifacts> that are the pipeline's own (an image may not take one):
# the default publish tree is <artifacts>/publish.
STORE, TMP, LOGS, CACHE, PUBLISH = "store", "tmp", "logs", ".cache", "publish"
RESERVED = (STORE, TMP, LOGS, CACHE, PUBLISH)

MARK = ".pipeline-artifacts"
MARK_TEXT = (b"This directory holds a ChromeOS guest image pipeline's artifacts (build.artifacts)."
             b"\nThe pipeline removes only what it made here.\n")

INPUTS_FILE = "inputs.json"
FILES_FILE = "files.sha256"
BUILD_FILE = "build.json"
HISTORY = 20  # keys remembered per image and stage


@dataclass(frozen=True)
class Layout:
    """The paths of one artifacts directory (nothing is created or removed here)."""

    root: Path

    @property
    def store(self) -> Path:
        return self.root / STORE

    def entry(self, stage: str, key: str) -> Path:
        return self.store / stage / key

    def lock(self, stage: str, key: str) -> Path:
        return self.store / ".locks" / f"{stage}-{key}.lock"

    @property
    def cache(self) -> Path:
        return self.root / CACHE

    @property
    def hash_memo(self) -> Path:
        return self.cache / "filehash.json"

    @property
    def tmp(self) -> Path:
        return self.root / TMP

    def outputs(self, image: str) -> Path:
        return self.root / image

    def console_log(self, image: str, what: str) -> Path:
        return self.root / LOGS / image / f"{what}.console.log"

    def record(self, image: str, stage: str) -> Path:
        return self.outputs(image) / ".inputs" / f"{stage}.json"

    def history(self, image: str, stage: str) -> Path:
        return self.record(image, stage).with_suffix(".history")

    def images(self) -> list[str]:
        """Every image with build records here, whatever config built it."""
        return sorted(p.name for p in self.root.iterdir()
                      if p.name not in RESERVED and (p / ".inputs").is_dir()) \
            if self.root.is_dir() else []

    def histories(self, image: str) -> list[Path]:
        records = self.outputs(image) / ".inputs"
        return sorted(records.glob("*.history")) if records.is_dir() else []


# --- the artifacts directory is the pipeline's ----------------------------------------------


def claim(layout: Layout) -> None:
    """Make sure the artifacts directory is the pipeline's before anything is written or
    removed there: one with the mark is; a new or empty one gets the mark, and so does one
    laid out as artifacts directories were before the mark (only the layout's own names at
    its top: store/, tmp/, logs/, .cache/, publish/, image directories with .inputs/).
    Anything else is refused: the pipeline sweeps what it left there, so it never shares a
    directory with other data."""
    root = layout.root
    if (root / MARK).is_file():
        return
    if root.exists() and not root.is_dir():
        raise PipelineError(f"build.artifacts: {root} is not a directory",
                            hint="point build.artifacts at a new or empty directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
        foreign = sorted(p.name for p in root.iterdir()
                         if p.name not in RESERVED and not (p / ".inputs").is_dir())
        if not foreign:
            atomic_write_bytes(root / MARK, MARK_TEXT)
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        raise PipelineError(f"build.artifacts: cannot write the store under {root}: "
                            f"{exc.strerror} ({exc.filename})",
                            hint="free space there, or point build.artifacts at a larger disk"
                            if full else "build.artifacts must name a writable directory"
                            ) from None
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5
                                          else "")
        raise PipelineError(
            f"build.artifacts: {root} is not empty and is no artifacts directory ({shown})",
            hint="point build.artifacts at a new or empty directory: the pipeline removes "
                 "what it made there and shares the directory with nothing else")


# --- build records ------------------------------------------------------------------------


def read_record(layout: Layout, image: str, stage: str) -> dict[str, Any] | None:
    """The image's latest build of `stage` ({stage, version, key, inputs}), if any."""
    try:
        record = json.loads(layout.record(image, stage).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_record(layout: Layout, image: str, si: StageInputs) -> None:
    """Remember the inputs of the image's latest build of this stage, and append its key to
    the stage's history (newest last)."""
    payload = {"stage": si.stage, "version": si.version, "key": si.key, "inputs": si.inputs}
    record = layout.record(image, si.stage)
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(record, json.dumps(payload, indent=1, sort_keys=True).encode())
    history = layout.history(image, si.stage)
    keys = read_history(history)
    if keys[-1:] != [si.key]:
        keys = [k for k in keys if k != si.key] + [si.key]
        atomic_write_bytes(history, ("\n".join(keys[-HISTORY:]) + "\n").encode())


def read_history(history: Path) -> list[str]:
    try:
        return history.read_text().split()
    except OSError:
        return []


def recent_keys(layout: Layout, images: list[str], keep: int) -> set[str]:
    """The newest `keep` keys of every stage in each image's history."""
    keys: set[str] = set()
    for image in images:
        for history in layout.histories(image):
            keys.update(read_history(history)[-keep:] if keep else [])
    return keys


def recorded_since(layout: Layout, images: list[str], seconds: float) -> set[str]:
    """The keys of the images' latest builds recorded in the last `seconds` (a build under
    way has recorded the stages it finished, and reads them next)."""
    keys: set[str] = set()
    for image in images:
        records = layout.outputs(image) / ".inputs"
        for record in records.glob("*.json") if records.is_dir() else []:
            try:
                st = record.stat()
                if time.time() - max(st.st_mtime, st.st_ctime) < seconds:
                    keys.add(json.loads(record.read_text())["key"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return keys


def read_entry_inputs(entry: Path) -> dict[str, Any] | None:
    """The inputs a complete entry was built from (its inputs.json), if readable."""
    try:
        payload = json.loads((entry / INPUTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    inputs = payload.get("inputs") if isinstance(payload, dict) else None
    return inputs if isinstance(inputs, dict) else None


def read_build_facts(entry: Path) -> dict[str, Any]:
    """The build.json of a store entry ({} for an entry built before it was recorded)."""
    try:
        facts = json.loads((entry / BUILD_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return facts if isinstance(facts, dict) else {}


# --- why did a stage run? -------------------------------------------------------------


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}/" if isinstance(v, dict) else f"{prefix}{k}"))
        return out or {prefix.rstrip("/"): {}}
    return {prefix: value}


def changed_inputs(previous: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """Names of the inputs that differ, as sorted paths (e.g. `dotfiles/.bashrc`)."""
    if previous is None:
        return []
    old, new = _flatten(previous), _flatten(current)
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def explain_miss(previous: dict[str, Any] | None, si: StageInputs) -> str:
    """One line saying why `si` is not in the store, compared with the image's last build
    (`previous`, from read_record)."""
    if previous is None:
        return "no previous build of this image"
    if previous.get("version") != si.version:
        return f"stage code changed (version {previous.get('version')} -> {si.version})"
    changed = changed_inputs(previous.get("inputs"), si.inputs)
    if not changed:
        return "the previous output is no longer in the store"
    shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
    return f"changed: {shown}"
