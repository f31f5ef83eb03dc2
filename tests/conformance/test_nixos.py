"""The conformance harness on the stand-in NixOS flake (tests/support/nixflake.py with
`init="systemd"`): a NixOS-shaped system with Debian's real systemd, D-Bus, udev, logind and
sudo relocated into a Nix store, its units made from nix/modules. Built through the pipeline's
own path (`nix build` of the flake, the pipeline's stages, the Baguette disk), booted as
ChromeOS boots it. It passes every check; with the modules' old defects put back (maitred's
/usr/sbin/usermod not linked, the tools mount `nofail` and unordered) and a check that runs
/bin/cat as the old `verify` did, the harness names each failure."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline import config, stages
from pipeline.conformance import baguette as conformance
from pipeline.conformance import checks, toolsdisk
from tests.support.doit import doit
from tests.support.nixflake import MODULES, NIX_TEST_CONFIG, require_nix, write_flake
from tests.support.tools import require_vm

pytestmark = pytest.mark.vm
USER = "user"  # chromeos.guest.user's default: `vmc start` asks maitred for that name


def defective_modules(dest: Path) -> Path:
    """nix/modules with defects 6 and 10 of the review put back: no /usr/sbin/usermod link,
    and the tools disk as a `nofail` fileSystems entry with no ordering before the session."""
    dest.mkdir(parents=True)
    for f in MODULES.iterdir():
        (dest / f.name).write_text(f.read_text())
    guest = (dest / "chromeos-guest.nix").read_text()
    line = '    "/usr/sbin/usermod" = "${pkgs.shadow}/bin/usermod";\n'
    assert line in guest
    (dest / "chromeos-guest.nix").write_text(guest.replace(line, ""))
    bag = (dest / "baguette.nix").read_text()
    mount = re.search(r"  systemd\.mounts = \[\{.*?\}\];\n", bag, re.S)
    user = re.search(r'  systemd\.services\."user@\$\{[^}]*\}" = \{.*?\n  \};\n', bag, re.S)
    assert mount and user
    old = ('  fileSystems."/opt/google/cros-containers" = { device = "LABEL=cros-vm-tools"; '
           'fsType = "ext4"; options = [ "ro" "nofail" ]; };\n')
    (dest / "baguette.nix").write_text(bag.replace(mount[0], old).replace(user[0], ""))
    return dest


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both flakes built to Baguette images by `doit baguette:...` (one Nix build each)."""
    require_vm()
    require_nix()
    root = tmp_path_factory.mktemp("nixos-conformance")
    write_flake(root / "good", init="systemd")
    write_flake(root / "broken", init="systemd", modules=defective_modules(root / "modules"))
    (root / "images.toml").write_text(f"""
[build]
artifacts = "{root / 'artifacts'}"

[images.nixos]
source = "nix"
[images.nixos.nix]
flake = "good"
host = "testhost-baguette"

[images.nixbroken]
source = "nix"
[images.nixbroken.nix]
flake = "broken"
host = "testhost-baguette"
""")
    mp = pytest.MonkeyPatch()
    mp.setenv("NIX_CONFIG", NIX_TEST_CONFIG)
    try:
        doit(root, "baguette:nixos", "baguette:nixbroken")
    finally:
        mp.undo()
    return root


def boot(project: Path, name: str) -> tuple[checks.Report, Path]:
    """The harness on one image, asked to set up the configuration's user (`vmc start`)."""
    run = stages.open_run(config.load(project / "images.toml"), None)
    log = project / f"{name}.console.log"
    report = conformance.run(run.layout.outputs(name) / stages.IMAGE_NAME, stages.guest(run),
                             setup_user=USER, dotfiles=(), log_path=log, work_dir=project)
    return report, log


def test_the_nixos_stand_in_passes_every_check(project: Path) -> None:
    report, log = boot(project, "nixos")
    detail = "\n".join(report.lines()) + "\n" + log.read_text(errors="replace")[-4000:]
    assert report.failed == [], detail
    assert report.finished
    assert {v.name for v in report.verdicts} >= {n for n, _ in checks.expected("baguette", True)}
    assert "ok (usermod)" in report.verdict("user-setup").detail


def test_the_harness_names_the_modules_old_defects(project: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """One boot shows three defects: 6 (maitred's /usr/sbin/usermod missing), 10 (the tools
    mount not ordered before the session) and 16 (a check running /bin/cat, which NixOS has
    not; the old `verify` did)."""
    script = toolsdisk.standin_script()
    old = b"bb cmp /etc/resolv.conf /run/resolv.conf"
    assert old in script
    # the old `verify` read the guest's files with /bin/cat
    monkeypatch.setattr(toolsdisk, "standin_script",
                        lambda: script.replace(old, b"/bin/cat /etc/resolv.conf"))
    report, log = boot(project, "nixbroken")
    failed = {v.name: v.detail for v in report.failed}
    detail = "\n".join(report.lines())
    assert "user-setup" in failed and "/usr/sbin/usermod" in failed["user-setup"], detail
    assert "tools-mount-order" in failed, detail
    assert "resolv.conf" in failed, detail
    # what the defects do not touch still passes
    for name in ("boot", "dbus", "logind", "udevd", "tools-mount", "maitred", "sudo"):
        assert report.verdict(name).passed, detail
    assert report.finished, log.read_text(errors="replace")[-3000:]
