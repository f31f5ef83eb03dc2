"""The installed tool: a wheel in a fresh venv builds an image from a config repository
outside the checkout, through the console entry point and `python -m pipeline`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.install import build_wheel, fresh_venv
from tests.support.paths import ROOT
from tests.support.rootfs import busybox_rootfs


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("install")
    return fresh_venv(tmp / "venv", build_wheel(tmp / "wheel"))


def _run(argv: list[str | Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("IMAGES_TOML", "PYTHONPATH")}
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True,
                          text=True, check=False)


def test_the_wheel_builds_an_image_from_the_users_repo(installed: Path,
                                                       tmp_path: Path) -> None:
    repo = tmp_path / "my-images"
    (repo / "roots").mkdir(parents=True)
    busybox_rootfs(repo / "roots" / "tiny.tar")
    (repo / "home").mkdir()
    (repo / "home" / ".profile").write_text("export EDITOR=vi\n")
    # every path relative to images.toml; no artifacts setting: artifacts/ beside it
    (repo / "images.toml").write_text(
        '[images.tiny]\nsource = "tarball"\ndotfiles = "home"\n'
        '[images.tiny.tarball]\npath = "roots/tiny.tar"\n')
    where = _run([installed / "python", "-c", "import pipeline; print(pipeline.__file__)"],
                 repo)
    assert where.stdout.startswith(str(installed.parent)), where.stdout + where.stderr

    first = _run([installed / "cros-guest", "lxc:tiny"], repo)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    out = repo / "artifacts" / "tiny" / "lxc"
    assert (out / "metadata.tar.xz").is_file() and (out / "rootfs.tar.xz").is_file()
    assert (repo / ".doit.db.sqlite").is_file(), "doit's state lives beside images.toml"
    assert not (ROOT / "artifacts" / "tiny").exists()

    again = _run([installed / "python", "-m", "pipeline", "lxc:tiny"], repo)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "-- lxc:tiny" in again.stdout and ".  " not in again.stdout

    # the package data: the guest's init and the appliance recipe, the NixOS modules
    data = _run([installed / "python", "-c", "from pipeline.core import paths; "
                 "print(paths.qemu_dir() / 'init', paths.qemu_dir() / 'appliance.toml', "
                 "paths.nix_dir() / 'flake.nix', paths.nix_dir() / 'modules/baguette.nix', "
                 "paths.nix_dir() / 'template/dotfiles/.bashrc')"], repo)
    assert len(data.stdout.split()) == 5, data.stderr
    for p in data.stdout.split():
        assert Path(p).is_file() and str(installed.parent) in p, data.stdout + data.stderr


def test_init_writes_a_dodo_plain_doit_runs(installed: Path, tmp_path: Path) -> None:
    made = _run([installed / "cros-guest", "init"], tmp_path)
    assert made.returncode == 0, made.stderr
    assert {"dodo.py", "images.toml", ".gitignore"} <= {p.name for p in tmp_path.iterdir()}
    listing = _run([installed / "python", "-m", "doit", "list"], tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "build:baguette / build:lxc" in listing.stdout
    again = _run([installed / "cros-guest", "init"], tmp_path)
    assert again.returncode == 0 and "kept" in again.stdout, "init keeps the user's config"


def test_no_images_toml_is_one_message_with_a_hint(installed: Path, tmp_path: Path) -> None:
    proc = _run([installed / "cros-guest", "list"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {tmp_path / 'images.toml'}: not found")
    assert "cros-guest init" in proc.stderr and "Traceback" not in proc.stderr
