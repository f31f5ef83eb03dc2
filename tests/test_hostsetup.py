"""hostsetup's btrfs-progs decision: on Debian 12 with btrfs-progs older than 6.12, the
backports suite is added (unless apt already has it) and pinned to that one package; with a
new enough one, or on another release, nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import hostsetup


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[Path, str]:
    out: dict[Path, str] = {}
    monkeypatch.setattr(hostsetup, "_write_root_file", lambda p, t: out.__setitem__(p, t))
    monkeypatch.setattr(hostsetup, "backports_configured", lambda suite: False)
    monkeypatch.setattr(hostsetup, "debian_mirror", lambda: "http://mirror.example/debian")
    return out


def test_bookworm_with_6_2_pins_btrfs_progs_to_backports(
        written: dict[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostsetup, "installed_version", lambda p: (6, 2))
    monkeypatch.setattr(hostsetup, "codename", lambda: "bookworm")
    assert hostsetup.btrfs_progs_from_backports() is True
    pin = written[hostsetup.APT_PIN]
    assert "Package: btrfs-progs\nPin: release n=bookworm-backports\nPin-Priority: 500" in pin
    assert "Package: *" not in pin  # nothing else is pinned up
    source = written[hostsetup.APT_SOURCE]
    assert "Suites: bookworm-backports" in source and "http://mirror.example/debian" in source


@pytest.mark.parametrize(("version", "release"), [((6, 14), "bookworm"), ((6, 2), "bullseye"),
                                                  ((6, 14), "trixie")])
def test_nothing_is_written_otherwise(version: tuple[int, int], release: str,
                                      written: dict[Path, str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostsetup, "installed_version", lambda p: version)
    monkeypatch.setattr(hostsetup, "codename", lambda: release)
    assert hostsetup.btrfs_progs_from_backports() is False
    assert written == {}


def test_apt_sources_are_read_in_both_formats(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://deb.example/debian\nSuites: bookworm bookworm-updates\n")
    assert hostsetup.debian_mirror(tmp_path) == "http://deb.example/debian"
    assert not hostsetup.backports_configured("bookworm-backports", tmp_path)
    (tmp_path / "sources.list").write_text(
        "deb [arch=amd64] http://one.example/debian bookworm-backports main\n")
    assert hostsetup.debian_mirror(tmp_path) == "http://one.example/debian"
    assert hostsetup.backports_configured("bookworm-backports", tmp_path)
    (tmp_path / "sources.list").write_text("# deb http://x/debian bookworm-backports main\n")
    assert not hostsetup.backports_configured("bookworm-backports", tmp_path)
    os_release = tmp_path / "os-release"
    os_release.write_text('NAME="Debian"\nVERSION_CODENAME=bookworm\n')
    assert hostsetup.codename(os_release) == "bookworm"


def test_python3_venv_is_installed_by_set_up() -> None:
    assert "python3-venv" in hostsetup.PACKAGES, "venv's ensurepip is python3-venv's on Debian"


def test_a_half_made_venv_is_made_again(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A venv whose creation failed after its python (no pip: ensurepip was missing) is
    created again on the next run instead of being taken as done."""
    import subprocess
    import venv

    half = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(half)
    assert (half / "bin" / "python").exists() and not hostsetup.has_pip(half)
    installs: list[list[str]] = []
    real_run = subprocess.run

    def run(argv: list[str], **kw: object) -> object:
        if "install" in argv and "-e" in argv:  # the project's install: recorded only
            installs.append(argv)
            return subprocess.CompletedProcess(argv, 0)
        return real_run(argv, **kw)  # type: ignore[call-overload]

    monkeypatch.setattr(hostsetup.subprocess, "run", run)
    hostsetup.ensure_venv("", half)
    assert hostsetup.has_pip(half), "created again, with pip"
    assert installs and installs[0][0] == str(half / "bin" / "python")
    assert (half / ".installed").is_file()


def test_no_venv_installs_the_packages_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """`cros-guest setup` (an installed package): apt, and no .venv next to the package."""
    asked: list[list[str]] = []
    monkeypatch.setattr(hostsetup, "install_packages", lambda names: asked.append(names))
    monkeypatch.setattr(hostsetup, "install_gitleaks", lambda: None)
    monkeypatch.setattr(hostsetup, "register_foreign_binaries", lambda: None)

    def no_venv(*_args: object) -> None:
        raise AssertionError("a venv was made")

    monkeypatch.setattr(hostsetup, "ensure_venv", no_venv)
    assert hostsetup.main(["--no-venv"]) == 0
    assert asked and "python3-venv" in asked[0] and "lxd" not in asked[0]


def test_a_host_that_forbids_binfmt_misc_is_told_so(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Set-up goes on (x86_64 images still build) but says in one line why aarch64 Debian
    images cannot, and what to do."""
    from pipeline.core import binfmt

    monkeypatch.setattr(hostsetup.os, "geteuid", lambda: 0)
    monkeypatch.setattr(binfmt, "register", lambda a: "binfmt_misc cannot be mounted at "
                        "/proc/sys/fs/binfmt_misc: permission denied")
    hostsetup.register_foreign_binaries()
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("setup: aarch64 Debian images cannot be built here: binfmt_misc "
                          "cannot be mounted at /proc/sys/fs/binfmt_misc: permission denied;")
    assert "privileged container" in err
