"""The package's data directories, read through importlib.resources: `qemu/` (the VM
helper's guest side: its init and the appliance recipe) and `nix/` (the flake with the NixOS
modules and the template `nix flake init -t` copies).

In the checkout they stay at the top level; `pipeline/data/qemu` and `pipeline/data/nix` are
links to them, which a wheel holds as plain files (pyproject.toml's package data).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from .errors import PipelineError


def data_dir(name: str) -> Path:
    """The directory `pipeline/data/<name>` on disk (the VM helper and Nix need real paths)."""
    found = files("pipeline").joinpath("data", name)
    if not isinstance(found, Path) or not found.is_dir():
        raise PipelineError(f"the package's data directory {name}/ is missing ({found})",
                            hint="reinstall the package from a wheel or the checkout "
                            "(`pip install cros-guest-pipeline`); a zipped install is not "
                            "supported")
    return found.resolve()


def qemu_dir() -> Path:
    return data_dir("qemu")


def nix_dir() -> Path:
    return data_dir("nix")


def _located(name: str) -> Path:
    found = files("pipeline").joinpath("data", name)
    return found.resolve() if isinstance(found, Path) else Path(str(found))


QEMU_DIR = _located("qemu")  # read at use; data_dir() says what is wrong when it is missing
NIX_DIR = _located("nix")
