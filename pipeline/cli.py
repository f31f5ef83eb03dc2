"""The command line: doit's own (DoitMain) over the pipeline's task loader, so every doit
command, option and convention works (`list`, `info`, `forget`, `-a`, `-n 2`, params).

    cros-guest                          # build:baguette, from the directory of images.toml
    cros-guest lxc:NAME                 # any task `cros-guest list` shows
    cros-guest --config path/images.toml list
    cros-guest --debug build:lxc        # also every command the pipeline runs
    cros-guest init                     # a dodo.py (and a starter images.toml) here
    cros-guest setup                    # the Debian packages (apt)
    python -m pipeline ...              # the same

The config is `--config`, else $IMAGES_TOML, else `images.toml` in the current directory.
Paths in it resolve relative to it, the store defaults to `artifacts/` beside it and doit's
state (`.doit.db.sqlite`) lives beside it too. A dodo.py written by `init` loads the same
tasks for a plain `doit` (with PIPELINE_DEBUG=1 for the debug switch).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from doit.cmd_base import Command, NamespaceTaskLoader
from doit.doit_cmd import DoitMain

from . import config, starter
from .core.errors import PipelineError
from .core.log import enable_debug
from .tasks import creators, doit_config, exit_on_config_error

BIN_NAME = "cros-guest"
CONFIG_NAME = "images.toml"

OPT_CONFIG = {"name": "images_toml", "long": "config", "type": str, "default": "",
              "help": "the images.toml to build from (default: $IMAGES_TOML, else "
                      "./images.toml); its directory holds artifacts/ and doit's state"}
OPT_DEBUG = {"name": "debug", "long": "debug", "type": bool, "default": False,
             "help": "log every command the pipeline runs (argv), and other details"}


def config_path(given: str = "", env: dict[str, str] | None = None,
                cwd: Path | None = None) -> Path:
    """Which images.toml: the option, else $IMAGES_TOML, else ./images.toml (absolute)."""
    env = dict(os.environ) if env is None else env
    where = cwd or Path.cwd()
    chosen = Path(given or env.get("IMAGES_TOML") or CONFIG_NAME)
    return (where / chosen).absolute()


def namespace(path: Path, debug: bool = False) -> dict[str, Any]:
    """What a dodo.py holds for `path`: DOIT_CONFIG and the task creators. A config error
    ends the program with its one-line message (exit 2)."""
    if debug or os.environ.get("PIPELINE_DEBUG", "") not in ("", "0"):
        enable_debug()
    if not path.is_file():
        exit_on_config_error(lambda: _missing(path))
    cfg = exit_on_config_error(lambda: config.load(path))
    epoch = exit_on_config_error(config.source_date_epoch)
    return {"DOIT_CONFIG": doit_config(path.parent, cfg.build.artifacts), **exit_on_config_error(
        lambda: creators(cfg, epoch))}


def dodo_namespace(dodo_file: str) -> dict[str, Any]:
    """For a dodo.py: the images.toml beside it (or $IMAGES_TOML)."""
    return namespace(config_path(cwd=Path(dodo_file).resolve().parent))


def _missing(path: Path) -> None:
    raise PipelineError(f"{path}: not found",
                        hint=f"run {BIN_NAME} in the directory holding images.toml, pass "
                        f"--config PATH, or create one with `{BIN_NAME} init`")


class ConfigLoader(NamespaceTaskLoader):
    """doit's task loader for one images.toml (instead of a dodo.py)."""

    cmd_options = (OPT_CONFIG, OPT_DEBUG)

    def setup(self, opt_values: dict[str, Any]) -> None:
        path = config_path(opt_values.get("images_toml") or "")
        self.namespace = namespace(path, bool(opt_values.get("debug")))


class Init(Command):
    doc_purpose = "write dodo.py and, if missing, a starter images.toml and .gitignore here"
    doc_usage = "[DIR]"
    doc_description = ("Then `doit` (or cros-guest) builds the images of DIR/images.toml. "
                       "NixOS users: `nix flake init -t <this project>?dir=nix` gives a "
                       "flake with its images.toml.")

    def execute(self, opt_values: dict[str, Any], pos_args: list[str]) -> int:
        target = Path(pos_args[0] if pos_args else ".").absolute()
        try:
            for line in starter.write(target):
                print(line)
        except PipelineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 3
        return 0


class Setup(Command):
    doc_purpose = "install the Debian packages the pipeline drives (apt; root or sudo)"
    doc_usage = ""
    doc_description = "The same as `python3 -m pipeline.hostsetup --no-venv` from a checkout."

    def execute(self, opt_values: dict[str, Any], pos_args: list[str]) -> int:
        from . import hostsetup
        return hostsetup.main(["--no-venv"])


class Main(DoitMain):
    BIN_NAME = BIN_NAME
    DOIT_CMDS = (*DoitMain.DOIT_CMDS, Init, Setup)


def main(argv: list[str] | None = None) -> int:
    """The console entry point."""
    logging.captureWarnings(True)
    return int(Main(ConfigLoader()).run(
        sys.argv[1:] if argv is None else argv))
