"""The conformance harness on real images: the shipped Debian configuration built for a user
named `alice` (not the image default), as a Baguette VM under QEMU and as a Crostini container
in the real LXD; the same image asked to set up another name (maitred refuses, as the real one
does); and a broken image (no D-Bus), reported by the failing checks' names."""

from __future__ import annotations

import re
import tarfile
import tomllib
from pathlib import Path

import pytest

from pipeline import config, stages
from pipeline.conformance import baguette as conformance
from pipeline.conformance import checks, crostini, toolsdisk
from tests.support.doit import doit
from tests.support.lxd import LXD, lxd  # noqa: F401 (the fixture)
from tests.support.paths import ROOT
from tests.support.tools import require_vm

pytestmark = [pytest.mark.vm, pytest.mark.network]
# the D-Bus daemon and its units, system and user: an image built without the dbus package
DBUS = ("/dbus.service", "/dbus.socket", "/bin/dbus-daemon")


def write_config(root: Path, extra: str = "") -> None:
    shipped = tomllib.loads((ROOT / "images.toml").read_text())["images"]["bookworm"]
    packages = shipped["debian"]["packages"]
    (root / "images.toml").write_text(f"""
[build]
artifacts = "{root / 'artifacts'}"
default_images = ["alice"]

[images.alice]
source = "debian"
user = "alice"
dotfiles = "{ROOT / 'dotfiles'}"
[images.alice.debian]
suite = "bookworm"
packages = {packages!r}
{extra}""".replace("'", '"'))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_vm()
    root = tmp_path_factory.mktemp("conformance")
    write_config(root)
    built = doit(root, "baguette:alice", "lxc:alice", check=False)
    if built.returncode != 0 and "Temporary failure" in built.stdout + built.stderr:
        pytest.skip("the Debian mirror is unreachable from here")
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-4000:]
    return root


def test_baguette_image_passes_every_check(project: Path) -> None:
    proc = doit(project, "verify:alice", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    for name, _ in checks.expected("baguette", True):
        assert f"PASS  {name}" in out, name
    assert "user-setup" in out and "alice: ok (usermod)" in out
    assert "/home/alice" in out, "the login shell lands in alice's home"


def test_another_name_is_refused_as_maitred_refuses_it(project: Path) -> None:
    """ChromeOS's maitred does not rename uid 1000: `vmc start --user bob` on an image made
    for alice fails. The image's README says to build for the ChromeOS user's name."""
    run = stages.open_run(config.load(project / "images.toml"), None)
    image = run.config.image("alice")
    report = conformance.run(run.layout.outputs("alice") / stages.IMAGE_NAME,
                             stages.guest(run), setup_user="bob",
                             dotfiles=toolsdisk.dotfile_names(image.dotfiles),
                             log_path=project / "bob.console.log", work_dir=project)
    assert [v.name for v in report.failed] == ["user-setup"], report.lines()
    assert "Another user with uid 1000 already exists (alice)" in report.verdict(
        "user-setup").detail


def test_an_image_without_dbus_fails_by_name(project: Path) -> None:
    run = stages.open_run(config.load(project / "images.toml"), None)
    base = stages.main_file(run, stages.BASE, run.config.image("alice"))
    broken = project / "nodbus.tar"
    with tarfile.open(base) as src, tarfile.open(broken, "w", format=tarfile.PAX_FORMAT) as dst:
        for m in src:
            if not m.name.endswith(DBUS):
                dst.addfile(m, src.extractfile(m) if m.isreg() else None)
    write_config(project, extra=f"""
[images.nodbus]
source = "tarball"
user = "alice"
dotfiles = "{ROOT / 'dotfiles'}"
[images.nodbus.tarball]
path = "{broken}"
""")
    proc = doit(project, "baguette:nodbus", "verify:nodbus", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    named = re.search(r"ChromeOS checks failed \(([^)]*)\)", out)
    assert named, out[-4000:]
    failed = named[1].split(", ")
    for name in ("dbus", "user-session", "garcon", "user-setup"):
        assert name in failed and f"FAIL  {name} " in out, (name, out[-4000:])
    assert "PASS  tools-mount" in out, "what does not need D-Bus still passes"
    assert "Traceback" not in out


def _crostini(project: Path, lxd: LXD, tmp_path: Path, container: str,  # noqa: F811
              network: str | None) -> checks.Report:
    """The shipped image (as alice) run as a Crostini container in the test LXD; deleted
    afterwards (its session would keep running beside the rest of the suite)."""
    if "alice" not in lxd.lxc("image", "alias", "list", "--format", "csv").stdout:
        out = project / "artifacts" / "alice" / "lxc"
        lxd.import_split(out / "metadata.tar.xz", out / "rootfs.tar.xz", alias="alice")
    lxd.containers.add(container)
    log = tmp_path / "crostini.results.log"
    try:
        report = crostini.run(lxd.lxc, "alice", container=container, setup_user="alice",
                              dotfiles=toolsdisk.dotfile_names(ROOT / "dotfiles"),
                              work_dir=tmp_path, log_path=log, network=network)
    finally:
        lxd.delete(container)
    assert report.finished, log.read_text()[-3000:]
    return report


def test_crostini_container_passes_every_check(project: Path, lxd: LXD,  # noqa: F811
                                               tmp_path: Path) -> None:
    """On a bridge whose DHCP gives eth0 its address, as termina's lxdbr0."""
    report = _crostini(project, lxd, tmp_path, "alice-c", lxd.dhcp_network())
    assert report.failed == [], "\n".join(report.lines())


def test_a_container_without_an_address_fails_network_only(project: Path, lxd: LXD,  # noqa: F811
                                                           tmp_path: Path) -> None:
    """The same image with no NIC (as a container ChromeOS cannot reach): `network` fails,
    naming the missing address, and so does `failed-units` (ifupdown's networking.service
    cannot bring up an eth0 that is not there); nothing else does."""
    report = _crostini(project, lxd, tmp_path, "alice-n", None)
    assert [v.name for v in report.failed] == ["network", "failed-units"], (
        "\n".join(report.lines()))
    assert "eth0 has no IPv4 address" in report.verdict("network").detail
    assert "networking.service" in report.verdict("failed-units").detail
