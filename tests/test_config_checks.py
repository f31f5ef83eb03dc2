"""pipeline/config.py: the checks that keep the pipeline's directories apart and refuse values
that would write a wrong image: overlapping locations, reserved image names, hostnames,
SOURCE_DATE_EPOCH, timeouts, tarball paths that are not files, a non-UTF-8 locale."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline import config
from pipeline.core.errors import ConfigError
from tests.support.paths import ROOT

IMG = '[images.x]\nsource = "debian"\n'


def error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config.parse(textwrap.dedent(text), tmp_path / "images.toml")
    assert info.value.hint.strip(), f"no hint for {info.value.message!r}"
    return info.value


# --- where things live: no directory inside another that it would swallow or sweep ----------


def test_publish_dir_inside_the_store_is_refused(tmp_path: Path) -> None:
    exc = error(tmp_path, f'[publish]\ndir = "{tmp_path}/artifacts/store"\n' + IMG)
    assert exc.message.startswith("publish.dir:") and "store" in exc.message


@pytest.mark.parametrize("inside", ["store/x", "tmp", "logs/pub", ".cache", "x", "x/pub", ""])
def test_publish_dir_inside_what_the_pipeline_manages_is_refused(tmp_path: Path,
                                                                 inside: str) -> None:
    exc = error(tmp_path, f'[publish]\ndir = "{tmp_path}/artifacts/{inside}"\n' + IMG)
    assert exc.message.startswith("publish.dir:")


def test_publish_dir_holding_the_artifacts_is_refused(tmp_path: Path) -> None:
    exc = error(tmp_path, f'[publish]\ndir = "{tmp_path}"\n' + IMG)
    assert exc.message.startswith("publish.dir:") and "artifacts" in exc.message


def test_publish_dir_beside_the_artifacts_is_fine(tmp_path: Path) -> None:
    cfg = config.parse(f'[publish]\ndir = "{tmp_path}/site"\n' + IMG, tmp_path / "images.toml")
    assert cfg.publish.dir == tmp_path / "site"
    cfg = config.parse(f'[publish]\ndir = "{tmp_path}/artifacts/site"\n' + IMG,
                       tmp_path / "images.toml")
    assert cfg.publish.dir == tmp_path / "artifacts" / "site"


@pytest.mark.parametrize("name", ["publish", "store", "tmp", "logs"])
def test_an_image_named_like_a_reserved_output_dir_is_refused(tmp_path: Path,
                                                               name: str) -> None:
    exc = error(tmp_path, f'[images.{name}]\nsource = "debian"\n')
    assert exc.message.startswith(f"images.{name}:") and "reserved" in exc.message


def test_artifacts_inside_the_dotfiles_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dotfiles").mkdir()
    exc = error(tmp_path, '[build]\nartifacts = "dotfiles/artifacts"\n' + IMG)
    assert exc.message.startswith("build.artifacts:") and "dotfiles" in exc.message
    (tmp_path / "home").mkdir()
    exc = error(tmp_path, '[build]\nartifacts = "home/.cache/cros"\n' + IMG
                + 'dotfiles = "home"\n')
    assert exc.message.startswith("build.artifacts:")


def test_publish_dir_inside_the_dotfiles_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dotfiles").mkdir()
    exc = error(tmp_path, '[publish]\ndir = "dotfiles/www"\n' + IMG)
    assert exc.message.startswith("publish.dir:") and "dotfiles" in exc.message


@pytest.mark.parametrize("where", ["/", "~", "~/"])
def test_root_or_home_as_artifacts_is_refused(tmp_path: Path, where: str) -> None:
    exc = error(tmp_path, f'[build]\nartifacts = "{where}"\n' + IMG)
    assert exc.message.startswith("build.artifacts:")


# --- values ---------------------------------------------------------------------------------


@pytest.mark.parametrize("hostname", ["box\n10.6.6.6 github.com", "box name", "-box", "box-",
                                      "a..b", "b\u00f6x", "x" * 64, ".".join(["a" * 60] * 5),
                                      "box\t", "box#1"])
def test_hostnames_must_be_rfc1123(tmp_path: Path, hostname: str) -> None:
    quoted = hostname.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
    exc = error(tmp_path, IMG + f'hostname = "{quoted}"\n')
    assert exc.message.startswith("images.x.hostname:")


@pytest.mark.parametrize("hostname", ["box", "Box-1", "box.example.org", "a" * 63, "9box"])
def test_good_hostnames_pass(tmp_path: Path, hostname: str) -> None:
    cfg = config.parse(IMG + f'hostname = "{hostname}"\n', tmp_path / "images.toml")
    assert cfg.image("x").hostname == hostname


def test_an_image_name_that_is_no_hostname_needs_one(tmp_path: Path) -> None:
    exc = error(tmp_path, '[images.box-]\nsource = "debian"\n')
    assert exc.message.startswith("images.box-.hostname:") and "hostname" in exc.hint


@pytest.mark.parametrize("value", ["\u00b2", "\u0661\u0662\u0663", "999999999999", "-1",
                                   " 1", "1e9", "0x10"])
def test_source_date_epoch_must_be_ascii_seconds_in_range(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.source_date_epoch({"SOURCE_DATE_EPOCH": value})
    assert info.value.message.startswith("SOURCE_DATE_EPOCH=") and info.value.hint


@pytest.mark.parametrize("value, seconds", [("0", 0), ("1700000000", 1_700_000_000),
                                            ("8589934591", 8_589_934_591)])
def test_source_date_epoch_accepted(value: str, seconds: int) -> None:
    assert config.source_date_epoch({"SOURCE_DATE_EPOCH": value}) == seconds


@pytest.mark.parametrize("value", [0, -1])
def test_vm_timeout_must_be_positive(tmp_path: Path, value: int) -> None:
    exc = error(tmp_path, f"[build]\nvm_timeout = {value}\n" + IMG)
    assert exc.message.startswith("build.vm_timeout:")


@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
def test_tarball_path_that_is_not_a_file_says_what_it_is(tmp_path: Path, kind: str) -> None:
    if kind == "directory":
        path = tmp_path / "rootfs.tar"
        path.mkdir()
    elif kind == "fifo":
        path = tmp_path / "rootfs.tar"
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
    exc = error(tmp_path, f'[images.x]\nsource = "tarball"\n[images.x.tarball]\n'
                f'path = "{path}"\n')
    assert exc.message.startswith("images.x.tarball.path:")
    assert "does not exist" not in exc.message and "not a regular file" in exc.message


def test_non_ascii_images_toml_under_a_c_locale(tmp_path: Path) -> None:
    toml = tmp_path / "images.toml"
    toml.write_text(IMG + 'description = "Zo\u00eb\'s b\u00f6x \u2603"\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LC_")}
    env.update(LANG="C", LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    code = ("import sys; from pathlib import Path; from pipeline import config; "
            f"print(config.load(Path({str(toml)!r})).image('x').description.encode())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Zo\\xc3\\xab" in proc.stdout


def test_images_toml_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    toml = tmp_path / "images.toml"
    toml.write_bytes(IMG.encode() + b'description = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        config.load(toml)
    assert "UTF-8" in info.value.message and info.value.hint
