"""`doit check:nix`: are the user's flakes sound? Every .nix file must parse, then
`nix flake check` evaluates every NixOS configuration and module in it.

The flakes checked (`flakes`): the local flakes the config's `nix` images build from, and a
flake.nix beside images.toml; with neither, the package's own (nix/: its modules, the
sample host, the template).

`nix flake check` needs the flake's inputs (nixpkgs): where they cannot be fetched (no
network, no flake.lock yet) the check says so and fails; it never reports a check that did
not run as passed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from ..config import Config
from ..core.errors import PipelineError
from ..core.log import info, step
from ..core.paths import nix_dir
from ..core.run import require
from .nixcli import OFFLINE, run_nix, too_old_for_nixpkgs, trim_error


def nix_files(flake_dir: Path) -> list[Path]:
    return sorted(p for p in flake_dir.rglob("*.nix") if p.is_file())


def parse_all(flake_dir: Path) -> list[Path]:
    """`nix-instantiate --parse` on every .nix file; one error lists every file that fails."""
    tool = require("nix-instantiate")
    files = nix_files(flake_dir)
    if not files:
        raise PipelineError(f"{flake_dir}: no .nix files", hint="is this the flake directory?")
    failed = []
    for f in files:
        proc = subprocess.run([tool, "--parse", str(f)], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            failed.append(f"{f}:\n{trim_error(proc.stderr, 6)}")
    if failed:
        raise PipelineError("these Nix files do not parse:\n" + "\n".join(failed),
                            hint="fix the syntax error at the line and column shown")
    return files


def flake_check(flake_dir: Path, timeout: float = 1800) -> None:
    proc = run_nix(["flake", "check", str(flake_dir.resolve())], "`nix flake check`", timeout)
    if proc.returncode == 0:
        return
    refused = too_old_for_nixpkgs(proc.stderr, "running `nix flake check`")
    if refused is not None:
        raise refused
    if OFFLINE.search(proc.stderr):
        lock = flake_dir / "flake.lock"
        raise PipelineError(
            "`nix flake check` cannot run here: the flake's inputs (nixpkgs) cannot be "
            f"fetched{'' if lock.is_file() else ', and there is no flake.lock yet'}:\n"
            f"{trim_error(proc.stderr, 4)}",
            hint="run `doit check:nix` where github.com and cache.nixos.org are reachable; "
                 "the .nix files themselves parse")
    raise PipelineError(f"`nix flake check` found problems:\n{trim_error(proc.stderr)}",
                        hint=f"`nix flake check --show-trace {flake_dir}` shows the trace")


def check(flake_dir: Path) -> None:
    files = parse_all(flake_dir)
    info(f"{len(files)} .nix files parse")
    flake_check(flake_dir)
    info("nix flake check passed")


def flakes(config: Config) -> list[Path]:
    """The flake directories `doit check:nix` checks for this config (see above)."""
    found = [Path(i.nix.flake) for i in config.images.values()
             if i.nix is not None and Path(i.nix.flake).is_absolute()]
    if (config.path.parent / "flake.nix").is_file():
        found.append(config.path.parent.resolve())
    return list(dict.fromkeys(found)) or [nix_dir()]


def check_all(config: Config) -> None:
    for flake_dir in flakes(config):
        with step(f"Checking the flake {flake_dir}"):
            check(flake_dir)
