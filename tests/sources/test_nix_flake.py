"""The `nix/` flake: every file parses, `doit check:nix` tells a check that ran from one that
could not, and the modules declare every piece of ChromeOS integration.

A full NixOS evaluation of the sample hosts needs nixpkgs, which this machine cannot fetch.
The module test therefore evaluates each module function with the real Nix evaluator but a
stand-in `lib` and `pkgs` (STUBS below) and reads back what the module declares; the NixOS
module system's merging and nixpkgs' packages are not exercised here (`doit check:nix` runs
`nix flake check` where nixpkgs is reachable)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pipeline.core.errors import PipelineError
from pipeline.sources import nixcheck
from tests.support.nixflake import nix_env  # noqa: F401 (fixture)

NIX_DIR = Path(__file__).resolve().parents[2] / "nix"
GROUPS = ["audio", "cdrom", "dialout", "disk", "floppy", "kvm", "netdev", "plugdev", "sudo",
          "tss", "video"]


def test_every_nix_file_parses(nix_env: None) -> None:  # noqa: F811
    files = nixcheck.parse_all(NIX_DIR)
    names = {p.relative_to(NIX_DIR).as_posix() for p in files}
    assert {"flake.nix", "hosts/sample.nix", "modules/chromeos-guest.nix",
            "modules/crostini.nix", "modules/baguette.nix", "modules/dotfiles.nix"} <= names


def test_a_syntax_error_is_reported_with_its_file(tmp_path: Path, nix_env: None) -> None:  # noqa: F811
    (tmp_path / "good.nix").write_text("{ a = 1; }\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "bad.nix").write_text("{ a = ; }\n")
    with pytest.raises(PipelineError) as e:
        nixcheck.parse_all(tmp_path)
    text = str(e.value)
    assert f"{tmp_path / 'sub' / 'bad.nix'}:" in text and "syntax error" in text
    assert "good.nix" not in text


def test_flake_check_passes_on_a_sound_flake(tmp_path: Path, nix_env: None) -> None:  # noqa: F811
    (tmp_path / "flake.nix").write_text(
        '{ outputs = { self }: { lib.answer = 42; }; }\n')
    nixcheck.check(tmp_path)  # raises on failure


def test_flake_check_says_why_it_cannot_run(tmp_path: Path, nix_env: None) -> None:  # noqa: F811
    (tmp_path / "flake.nix").write_text(
        '{ inputs.pkgs = { url = "https://nixpkgs.invalid/nixpkgs.tar.gz"; flake = false; };\n'
        '  outputs = { self, pkgs }: { lib.src = pkgs; }; }\n')
    with pytest.raises(PipelineError) as e:
        nixcheck.check(tmp_path)
    text = str(e.value)
    assert "`nix flake check` cannot run here" in text
    assert "no flake.lock yet" in text
    assert "where github.com and cache.nixos.org are reachable" in text


def test_flake_check_reports_a_real_problem(tmp_path: Path, nix_env: None) -> None:  # noqa: F811
    (tmp_path / "flake.nix").write_text(
        '{ outputs = { self }: { checks.x86_64-linux.broken = throw "this check is broken"; }; }\n')
    with pytest.raises(PipelineError) as e:
        nixcheck.check(tmp_path)
    assert "`nix flake check` found problems" in str(e.value)
    assert "this check is broken" in str(e.value)


STUBS = r"""
let
  lib = rec {
    mkOption = o: o;
    mkIf = c: v: if c then v else { };
    mkForce = v: v;
    mkDefault = v: v;
    types = { str = "str"; int = "int"; path = "path"; nullOr = t: t; };
    genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
    recursiveUpdate = a: b: a // builtins.mapAttrs (n: v:
      if builtins.isAttrs v && a ? ${n} && builtins.isAttrs a.${n}
      then recursiveUpdate a.${n} v else v) b;
  };
  pkgs = {
    runtimeShell = "/bin/sh"; xwayland = "/xwayland"; coreutils = "/coreutils";
    shadow = "/shadow"; util-linux = "/util-linux"; btrfs-progs = "/btrfs-progs";
    stdenv.hostPlatform.system = "x86_64-linux";
    writeTextDir = path: text: { inherit path text; };
    callPackage = fn: args: { builtBy = toString fn; inherit args; };
  };
  config = {
    chromeos.guest = { user = "user"; uid = 1000; };
    chromeos.dotfiles.source = ./dotfiles-stand-in;
    users.users.user.home = "/home/user";
    system.build.toplevel = "/toplevel";
  };
  args = { inherit lib pkgs config; modulesPath = "/nixos/modules"; };
  m = name: import (NIX_DIR + "/modules/${name}.nix") args;
  guest = (m "chromeos-guest").config;
  bag = m "baguette";
  units = guest.systemd.user.services;
in {
  userUnits = builtins.attrNames units;
  garcon = units.cros-garcon.serviceConfig.ExecStart;
  garconWantedBy = units.cros-garcon.wantedBy;
  sommelier = units."sommelier@".serviceConfig.ExecStart;
  sommelierX = units."sommelier-x@".serviceConfig.ExecStart;
  notificationd = units.cros-notificationd.serviceConfig.ExecStart;
  defaultWants = guest.systemd.user.targets.default.wants;
  groups = builtins.attrNames guest.users.groups;
  userGroups = guest.users.users.user.extraGroups;
  udev = guest.services.udev.extraRules;
  journald = guest.services.journald.extraConfig;
  resolv = guest.environment.etc."resolv.conf".source;
  root = bag.fileSystems."/";
  tools = bag.fileSystems."/opt/google/cros-containers";
  vshd = bag.systemd.services.vshd.serviceConfig.ExecStart;
  maitred = bag.systemd.services.maitred.serviceConfig.ExecStart;
  maitredPath = bag.systemd.services.maitred.path;
  portListener = bag.systemd.services.cros-port-listener.serviceConfig.ExecStart;
  daemonsRequire = bag.systemd.services.vshd.requires;
  resize = bag.systemd.services.baguette-resize.serviceConfig.ExecStart;
  resizeWantedBy = bag.systemd.services.baguette-resize.wantedBy;
  noBootLoader = !bag.boot.loader.grub.enable && !bag.boot.initrd.enable;
  tarball = bag.system.build.tarball;
  crostiniImports = (m "crostini").imports;
  dotfiles = ((m "dotfiles").config).system.activationScripts.chromeos-dotfiles.text;
}
"""


def test_modules_declare_every_integration_piece(tmp_path: Path, nix_env: None) -> None:  # noqa: F811
    (tmp_path / "dotfiles-stand-in").mkdir()
    expr = tmp_path / "probe.nix"
    expr.write_text(STUBS.replace("NIX_DIR", str(NIX_DIR)))
    proc = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", str(expr)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    tools = "/opt/google/cros-containers/bin"
    # garcon and sommelier (Wayland + X) user services, started for the user's session
    assert {"cros-garcon", "sommelier@", "sommelier-x@", "cros-notificationd"} <= set(
        d["userUnits"])
    assert d["garcon"] == f"{tools}/garcon --server" and d["garconWantedBy"] == [
        "default.target"]
    assert d["sommelier"].startswith(f"{tools}/sommelier --parent ")
    assert "--socket=wayland-%i" in d["sommelier"]
    assert d["sommelierX"].startswith(f"{tools}/sommelier -X --x-display=%i")
    assert d["defaultWants"] == ["sommelier@0.service", "sommelier-x@0.service"]
    assert d["notificationd"].startswith(f"{tools}/notificationd")
    # groups, udev rule, journald, resolv.conf
    assert set(GROUPS) <= set(d["groups"]) and set(GROUPS) <= set(d["userGroups"])
    assert 'KERNEL=="wl*", MODE="0666"' in d["udev"]
    assert d["journald"] == "ForwardToConsole=yes"
    assert d["resolv"] == "/run/resolv.conf"
    # Baguette: root on /dev/vdb btrfs, the tools disk read-only, the VM's daemons
    assert d["root"] == {"device": "/dev/vdb", "fsType": "btrfs"}
    assert d["tools"]["device"] == "LABEL=cros-vm-tools" and "ro" in d["tools"]["options"]
    assert d["vshd"] == f"{tools}/vshd" and d["maitred"] == f"{tools}/maitred"
    assert d["portListener"] == f"{tools}/port_listener"
    assert "/shadow" in d["maitredPath"], "maitred needs usermod (shadow) on its PATH"
    assert d["daemonsRequire"] == ["opt-google-cros\\x2dcontainers.mount"]
    assert d["resize"] == "/btrfs-progs/bin/btrfs filesystem resize max /"
    assert d["resizeWantedBy"] == ["multi-user.target"]
    assert d["noBootLoader"] is True
    assert d["tarball"]["builtBy"].endswith("/lib/make-system-tarball.nix")
    assert d["tarball"]["args"]["contents"] == [{"source": "/toplevel/init",
                                                 "target": "/sbin/init"}]
    # Crostini: NixOS's LXC container profile; dotfiles copied into the home, user-owned
    assert d["crostiniImports"] == ["/nixos/modules/virtualisation/lxc-container.nix"]
    assert "cp -rT" in d["dotfiles"] and "chown -R user:users /home/user" in d["dotfiles"]


def test_the_flake_carries_no_secret(tmp_path: Path) -> None:
    """The secret scan the rootfs stage runs finds nothing in nix/ (and the user and root
    passwords are locked, not hashed)."""
    import tarfile

    from pipeline.rootfs import secrets

    with tarfile.open(tmp_path / "nix.tar", "w") as tf:
        tf.add(NIX_DIR, arcname="nix")
    assert secrets.scan(tmp_path / "nix.tar") == []
    text = "\n".join(p.read_text() for p in nixcheck.nix_files(NIX_DIR))
    assert "hashedPassword = \"!\";" in text
    assert "initialHashedPassword = lib.mkForce \"!\";" in text
