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
from typing import Any

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
            "modules/crostini.nix", "modules/baguette.nix", "modules/dotfiles.nix",
            "template/flake.nix", "template/host.nix"} <= names


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


def test_the_flake_offers_both_kinds_for_both_architectures(tmp_path: Path,
                                                           nix_env: None) -> None:  # noqa: F811
    """Item 18: the sample host per guest kind on x86_64 and aarch64, and each module as a
    path in nixosModules (evaluated with a stand-in nixpkgs whose nixosSystem returns its
    arguments)."""
    fake = tmp_path / "nixpkgs"
    fake.mkdir()
    (fake / "flake.nix").write_text(
        "{ outputs = { self }: { lib.nixosSystem = { system, modules }:\n"
        "  { inherit system; modules = map (m: if builtins.isPath m then baseNameOf m\n"
        "    else \"inline\") modules; }; }; }\n")
    def output(attr: str, apply: str) -> Any:
        proc = subprocess.run(
            ["nix", "eval", "--json", f"path:{NIX_DIR}#{attr}", "--apply", apply,
             "--override-input", "nixpkgs", f"path:{fake}", "--no-write-lock-file"],
            capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    out = {"hosts": output("nixosConfigurations", "cs: cs"),
           "modules": output("nixosModules", "builtins.mapAttrs (n: m: baseNameOf m)"),
           "templates": output("templates", "builtins.mapAttrs (n: t: baseNameOf t.path)")}
    assert out["templates"] == {"default": "template"}
    assert out["modules"] == {"crostini": "crostini.nix", "baguette": "baguette.nix",
                              "chromeos-guest": "chromeos-guest.nix",
                              "dotfiles": "dotfiles.nix"}
    assert {n: c["system"] for n, c in out["hosts"].items()} == {
        "sample-crostini": "x86_64-linux", "sample-crostini-aarch64": "aarch64-linux",
        "sample-baguette": "x86_64-linux", "sample-baguette-aarch64": "aarch64-linux"}
    assert out["hosts"]["sample-baguette-aarch64"]["modules"] == ["baguette.nix",
                                                                  "sample.nix"]
    assert 'inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";' in (
        NIX_DIR / "flake.nix").read_text()


STUBS = r"""
let
  lib = rec {
    mkOption = o: o;
    mkIf = c: v: if c then v else { };
    mkMerge = builtins.foldl' recursiveUpdate { };
    mkForce = v: v;
    mkDefault = v: v;
    types = { str = "str"; int = "int"; path = "path"; nullOr = t: t; enum = vs: vs; };
    genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
    mapAttrsToList = f: a: map (n: f n a.${n}) (builtins.attrNames a);
    concatStrings = builtins.concatStringsSep "";
    optionalString = c: s: if c then s else "";
    optionalAttrs = c: a: if c then a else { };
    makeBinPath = ps: builtins.concatStringsSep ":" (map (p: "${p}/bin") ps);
    recursiveUpdate = a: b: a // builtins.mapAttrs (n: v:
      if builtins.isAttrs v && a ? ${n} && builtins.isAttrs a.${n}
      then recursiveUpdate a.${n} v else v) b;
  };
  pkgs = {
    runtimeShell = "/bin/sh"; xwayland = "/xwayland"; coreutils = "/coreutils";
    shadow = "/shadow"; util-linux = "/util-linux"; btrfs-progs = "/btrfs-progs";
    bashInteractive = "/bash"; openssh = "/openssh"; xauth = "/xauth";
    stdenv.hostPlatform.system = "x86_64-linux";
    writeTextDir = path: text: { inherit path text; };
    # the script's text stands in for its store path, so the probe can read it
    writeShellScript = name: text: "/script/${name}[${text}]";
    callPackage = fn: args: { builtBy = toString fn; inherit args; };
  };
  config = user: {
    chromeos.guest = { inherit user; uid = 1000; };
    chromeos.dotfiles.source = ./dotfiles-stand-in;
    users.users.user.home = "/home/user";
    users.mutableUsers = true;
    system.build.toplevel = "/toplevel";
    nix.package.out = "/nix-pkg";
  };
  # `options` as NixOS 26.05 declares them (boot.bootspec.enable) and as later releases do
  # (lib.mkRemovedOptionModule: a hidden option that fails when defined)
  older = { boot.bootspec = { enable = { }; extensions = { }; }; };
  newer = { boot.bootspec = { enable = { visible = false; }; extensions = { }; }; };
  args = options: user: {
    inherit lib pkgs options; config = config user; modulesPath = "/nixos/modules";
  };
  m = name: import (NIX_DIR + "/modules/${name}.nix") (args older "user");
  guest = (m "chromeos-guest").config;
  bag = m "baguette";
  bagNewer = import (NIX_DIR + "/modules/baguette.nix") (args newer "user");
  cros = m "crostini";
  units = guest.systemd.user.services;
  services = bag.systemd.services;
  etc = guest.environment.etc;
  names = i: if builtins.isPath i then baseNameOf i else i;  # a path's file, not its copy
  dotfiles = user: ((import (NIX_DIR + "/modules/dotfiles.nix") (args older user)).config)
    .system.activationScripts.chromeos-dotfiles.text;
in {
  # what needs no user in the image, apart (an error there leaves the rest readable)
  noUser.dotfiles = dotfiles null;
  main = {
    userUnits = builtins.attrNames units;
    garcon = units.cros-garcon.serviceConfig.ExecStart;
    garconWantedBy = units.cros-garcon.wantedBy;
    sommelier = units."sommelier@".serviceConfig.ExecStart;
    sommelierX = units."sommelier-x@".serviceConfig.ExecStart;
    notificationd = units.cros-notificationd.serviceConfig.ExecStart;
    defaultWants = guest.systemd.user.targets.default.wants;
    groups = builtins.attrNames guest.users.groups;
    user = guest.users.users.user or null;
    userDefault = (m "chromeos-guest").options.chromeos.guest.user.default;
    root = guest.users.users.root or null;
    guestTmpfiles = guest.systemd.tmpfiles.rules or [ ];
    udev = guest.services.udev.extraRules;
    guestJournald = guest.services.journald or null;
    journaldDropIn = etc."systemd/journald.conf.d/50-console.conf".text or null;
    gshadow = etc.gshadow or null;
    guestResolv = etc."resolv.conf" or null;
    firewall = guest.networking.firewall.enable or null;
    absolutePaths = guest.system.activationScripts.chromeos-absolute-paths.text or "";
    kinds.crostini = cros.chromeos.guest.kind or null;
    kinds.baguette = bag.chromeos.guest.kind or null;
    rootFs = bag.fileSystems."/";
    toolsFileSystem = bag.fileSystems."/opt/google/cros-containers" or null;
    toolsMounts = bag.systemd.mounts or [ ];
    userManager = services."user@1000" or null;
    vshd = services.vshd.serviceConfig.ExecStart;
    maitred = services.maitred.serviceConfig.ExecStart;
    maitredPath = services.maitred.environment.PATH or null;
    portListener = services.cros-port-listener.serviceConfig.ExecStart;
    daemonsRequire = services.vshd.requires;
    resize = services.baguette-resize.serviceConfig.ExecStart;
    resizeWantedBy = services.baguette-resize.wantedBy;
    registerNixPaths = services.register-nix-paths or null;
    dhcpcd = bag.networking.dhcpcd.enable or null;
    hosts = bag.networking.hosts or null;
    bagResolv = bag.environment.etc."resolv.conf".source or null;
    boot = {
      grub = bag.boot.loader.grub.enable;
      initScript = bag.boot.loader.initScript.enable or false;
      initrd = bag.boot.initrd.enable;
      kernel = bag.boot.kernel.enable or null;
      modprobe = bag.boot.modprobeConfig.enable or null;
      bootspecOlder = bag.boot.bootspec or null;
      bootspecNewer = bagNewer.boot.bootspec or null;
    };
    tarball = bag.system.build.tarball;
    crostiniImports = map names cros.imports;
    baguetteImports = map names (bag.imports or [ ]);
    crostiniRoot = cros.users.users.root or null;
    crostiniEtc = cros.environment.etc or null;
    dotfiles = dotfiles "user";
  };
}
"""


def probe(tmp: Path, part: str) -> dict[str, Any]:
    proc = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-A", part,
                           str(tmp / "probe.nix")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.nixflake import require_nix

    require_nix()
    tmp = tmp_path_factory.mktemp("modules")
    (tmp / "dotfiles-stand-in").mkdir()
    (tmp / "probe.nix").write_text(STUBS.replace("NIX_DIR", str(NIX_DIR)))
    return tmp


@pytest.fixture(scope="module")
def modules(probe_dir: Path) -> dict[str, Any]:
    """What the modules declare, evaluated once with the real Nix against the stubs."""
    return probe(probe_dir, "main")


TOOLS = "/opt/google/cros-containers/bin"
TOOLS_MOUNT = "opt-google-cros\\x2dcontainers.mount"


def test_user_services_garcon_sommelier_notificationd(modules: dict[str, Any]) -> None:
    d = modules
    assert {"cros-garcon", "sommelier@", "sommelier-x@", "cros-notificationd"} <= set(
        d["userUnits"])
    assert d["garcon"] == f"{TOOLS}/garcon --server" and d["garconWantedBy"] == [
        "default.target"]
    assert d["sommelier"].startswith(f"{TOOLS}/sommelier --parent ")
    assert "--socket=wayland-%i" in d["sommelier"]
    assert d["sommelierX"].startswith(f"{TOOLS}/sommelier -X --x-display=%i")
    assert d["defaultWants"] == ["sommelier@0.service", "sommelier-x@0.service"]
    assert d["notificationd"].startswith(f"{TOOLS}/notificationd")
    assert 'KERNEL=="wl*", MODE="0666"' in d["udev"]


def test_sommelier_x_writes_the_xauth_cookie_it_is_given(modules: dict[str, Any]) -> None:
    """--x-auth names ~/.Xauthority, so the child run once Xwayland is up
    adds a random cookie for its display (as ChromeOS's own unit does)."""
    x = modules["sommelierX"]
    assert "--x-auth=%h/.Xauthority" in x
    assert '/xauth/bin/xauth -f "$HOME/.Xauthority" add "$DISPLAY" .' in x
    assert '"$(/util-linux/bin/mcookie)"' in x
    assert "systemctl --user import-environment DISPLAY" in x


def test_groups_user_and_linger(modules: dict[str, Any]) -> None:
    """Item 12: linger through the users option (not a tmpfiles file NixOS may undo); the
    image has its uid-1000 user unless told not to (`vmc start` needs garcon first)."""
    d = modules
    assert d["userDefault"] == "user"
    assert set(GROUPS) <= set(d["groups"])
    user = d["user"]
    assert user["uid"] == 1000 and set(GROUPS) <= set(user["extraGroups"])
    assert user["hashedPassword"] == "!"
    assert user.get("linger") is True
    assert not any("linger" in rule for rule in d["guestTmpfiles"])


def test_root_has_one_password_option(modules: dict[str, Any]) -> None:
    """Item 17: lxc-container's initialHashedPassword "" is cancelled, not overridden with a
    second value, so root's only password option is chromeos-guest's locked hashedPassword."""
    assert modules["root"] == {"hashedPassword": "!"}
    assert modules["crostiniRoot"] == {"initialHashedPassword": None}


def test_crostini_integration(modules: dict[str, Any]) -> None:
    """Items 4 and 5, and item 3's other half: the firewall off, an empty /etc/gshadow for
    tremplin, and resolv.conf left to NixOS (LXD's DHCP gives DNS) in the shared module."""
    d = modules
    assert d["crostiniImports"] == ["/nixos/modules/virtualisation/lxc-container.nix",
                                    "chromeos-guest.nix", "dotfiles.nix"]
    assert d["kinds"] == {"crostini": "crostini", "baguette": "baguette"}
    assert d["firewall"] is False
    assert d["gshadow"] == {"mode": "0640", "group": "shadow", "text": ""}
    assert d["guestResolv"] is None and d["crostiniEtc"] is None


def test_journald_forwards_to_the_console_through_a_drop_in(modules: dict[str, Any]) -> None:
    """Item 2: services.journald.extraConfig is removed on NixOS 26.11."""
    assert modules["guestJournald"] is None
    assert modules["journaldDropIn"] == "[Journal]\nForwardToConsole=yes\n"


def test_absolute_paths_chromeos_runs(modules: dict[str, Any]) -> None:
    """Item 6: maitred runs /usr/sbin/useradd and /usr/sbin/usermod by absolute path (with
    the shell /bin/bash), garcon /usr/lib/openssh/sftp-server: activation links them."""
    text = modules["absolutePaths"]
    for target, path in [("/shadow/bin/useradd", "/usr/sbin/useradd"),
                         ("/shadow/bin/usermod", "/usr/sbin/usermod"),
                         ("/bash/bin/bash", "/bin/bash"),
                         ("/openssh/libexec/sftp-server", "/usr/lib/openssh/sftp-server")]:
        assert f"ln -sfn {target} {path}\n" in text
        assert f"mkdir -p {path.rsplit('/', 1)[0]}\n" in text


def test_maitred_path(modules: dict[str, Any]) -> None:
    """Item 6: the tools first, as ChromeOS's unit has it, then what maitred runs by name."""
    path = modules["maitredPath"]
    assert path is not None and path.startswith(f"{TOOLS}:/usr/sbin:/usr/bin:/sbin:/bin:")
    assert "/btrfs-progs/bin" in path.split(":") and "/util-linux/bin" in path.split(":")


def test_baguette_daemons_root_and_resize(modules: dict[str, Any]) -> None:
    d = modules
    assert d["rootFs"] == {"device": "/dev/vdb", "fsType": "btrfs"}
    assert d["vshd"] == f"{TOOLS}/vshd" and d["maitred"] == f"{TOOLS}/maitred"
    assert d["portListener"] == f"{TOOLS}/port_listener"
    assert d["daemonsRequire"] == [TOOLS_MOUNT]
    assert d["resize"] == "/btrfs-progs/bin/btrfs filesystem resize max /"
    assert d["resizeWantedBy"] == ["multi-user.target"]
    assert d["baguetteImports"] == ["chromeos-guest.nix", "dotfiles.nix"]


def test_tools_mount_is_ordered_before_the_user_session(modules: dict[str, Any]) -> None:
    """Item 10: a mount unit before local-fs.target (not a `nofail` fileSystems entry, which
    is not ordered), and user@1000 after it."""
    d = modules
    assert d["toolsFileSystem"] is None
    [mount] = d["toolsMounts"]
    assert mount["what"] == "LABEL=cros-vm-tools"
    assert mount["where"] == "/opt/google/cros-containers" and mount["options"] == "ro"
    assert "local-fs.target" in mount["before"] and mount["wantedBy"] == ["local-fs.target"]
    assert mount["unitConfig"] == {"DefaultDependencies": False}
    assert "nofail" not in json.dumps(mount)
    assert d["userManager"] == {"overrideStrategy": "asDropin", "after": [TOOLS_MOUNT],
                                "wants": [TOOLS_MOUNT]}


def test_baguette_network_is_maitreds(modules: dict[str, Any]) -> None:
    """Items 3 and 9: no dhcpcd (maitred configures eth0), resolv.conf from maitred's
    /run/resolv.conf (Baguette only), the `arc` host."""
    d = modules
    assert d["dhcpcd"] is False
    assert d["hosts"] == {"100.115.92.2": ["arc"]}
    assert d["bagResolv"] == "/run/resolv.conf"


def test_baguette_registers_the_store_with_nix(modules: dict[str, Any]) -> None:
    """Item 7: /nix-path-registration into Nix's database, and the system profile, once."""
    unit = modules["registerNixPaths"]
    assert unit is not None
    assert unit["unitConfig"] == {"ConditionPathExists": "/nix-path-registration",
                                  "DefaultDependencies": False}
    assert unit["wantedBy"] == ["sysinit.target"] and "sysinit.target" in unit["before"]
    script = unit["script"]
    assert "/nix-pkg/bin/nix-store --load-db < /nix-path-registration\n" in script
    assert "/nix-pkg/bin/nix-env -p /nix/var/nix/profiles/system --set /run/current-system" \
        in script
    assert script.index("--load-db") < script.index("rm /nix-path-registration")


def test_baguette_boot_init_script_no_kernel(modules: dict[str, Any]) -> None:
    """Items 8 and 14: the init-script boot loader (nixos-rebuild rewrites /sbin/init), no
    kernel, initrd or modprobe, and bootspec (which names a kernel) off where the option
    still exists (26.05) and untouched where it is a removed one (later releases fail on
    its definition)."""
    b = modules["boot"]
    assert b["grub"] is False and b["initScript"] is True and b["initrd"] is False
    assert b["kernel"] is False and b["modprobe"] is False
    assert b["bootspecOlder"] == {"enable": False} and b["bootspecNewer"] == {}


def test_baguette_tarball(modules: dict[str, Any]) -> None:
    """Item 16's image half: /etc/os-release is in the tarball (as in NixOS's container
    tarball), and /boot for the init-script boot loader."""
    t = modules["tarball"]
    assert t["builtBy"].endswith("/lib/make-system-tarball.nix")
    assert t["args"]["contents"] == [
        {"source": "/toplevel/init", "target": "/sbin/init"},
        {"source": "/toplevel/etc/os-release", "target": "/etc/os-release"}]
    assert "boot" in t["args"]["extraCommands"].split()


def test_dotfiles_go_to_skel_and_to_the_users_home(modules: dict[str, Any],
                                                   probe_dir: Path) -> None:
    """The user maitred creates gets the dotfiles from /etc/skel; a declared user gets them
    copied into the home, owned by them."""
    with_user, without = modules["dotfiles"], probe(probe_dir, "noUser")["dotfiles"]
    for text in (with_user, without):
        assert "/coreutils/bin/mv /etc/skel.new /etc/skel" in text
    assert "chown -R user:users /home/user" in with_user and "cp -rT" in with_user
    assert "/home/" not in without


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
    assert "initialHashedPassword = lib.mkForce null;" in text


def test_the_template_is_a_config_repository(tmp_path: Path) -> None:
    """`nix flake init -t` copies nix/template: its images.toml loads as it is, its images
    build the template's own flake, and check:nix checks that flake."""
    import shutil

    from pipeline import config

    repo = tmp_path / "mine"
    shutil.copytree(NIX_DIR / "template", repo)
    cfg = config.load(repo / "images.toml")
    assert {n: (i.nix.flake, i.nix.host) for n, i in cfg.images.items() if i.nix} == {
        "vm": (str(repo), "baguette"), "container": (str(repo), "crostini")}
    assert nixcheck.flakes(cfg) == [repo]
    assert (repo / "dotfiles" / ".bashrc").is_file()


def test_check_nix_checks_the_users_flake(tmp_path: Path, nix_env: None) -> None:  # noqa: F811
    """A flake beside images.toml is the one checked (not the package's): a syntax error in
    the user's module fails check:nix naming that file."""
    from pipeline import config

    (tmp_path / "rootfs.tar").write_bytes(b"")
    (tmp_path / "images.toml").write_text(
        '[images.t]\nsource = "tarball"\ndotfiles = ""\n[images.t.tarball]\npath = "rootfs.tar"\n')
    cfg = config.load(tmp_path / "images.toml")
    assert nixcheck.flakes(cfg) == [NIX_DIR.resolve()], "no flake of the user's: the package's"
    (tmp_path / "flake.nix").write_text("{ outputs = { self }: { }; }\n")
    (tmp_path / "host.nix").write_text("{ pkgs, ... }: { broken = ; }\n")
    cfg = config.load(tmp_path / "images.toml")
    assert nixcheck.flakes(cfg) == [tmp_path]
    with pytest.raises(PipelineError) as e:
        nixcheck.check_all(cfg)
    assert f"{tmp_path / 'host.nix'}:" in str(e.value)
