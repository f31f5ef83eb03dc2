"""Store keys: what a stage's output depends on, hashed.

A key hashes the stage's name, its code version and its named inputs (hashes of files and
trees, config values, upstream keys): never a module path or a time, so moving code keeps
every key, and a stage whose code changes meaning bumps its VERSION.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any


def digest(value: Any) -> str:
    """A stable hash of a JSON-able value (dict keys sorted)."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def stage_key(stage: str, version: int, inputs: dict[str, Any]) -> str:
    """The store key of a stage's output: its name, its code version, and its inputs."""
    return digest({"stage": stage, "version": version, "inputs": inputs})[:32]


@dataclass(frozen=True)
class StageInputs:
    """What a stage's output depends on: named, JSON-able values (hashes, config values)."""

    stage: str
    version: int
    inputs: dict[str, Any]

    @property
    def key(self) -> str:
        return stage_key(self.stage, self.version, self.inputs)
