"""The checkout's data directories the code reads: `qemu/` (the VM helper's guest side) and
`nix/` (the flake with the NixOS modules)."""

from __future__ import annotations

from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
QEMU_DIR = CHECKOUT / "qemu"
NIX_DIR = CHECKOUT / "nix"
