"""The Nix source with the real Nix (Debian's nix-bin) on a self-contained flake shaped like a
NixOS configuration (tests/support/nixflake.py says why it is not a real NixOS one): the key is the
derivation path, builds are parsed from Nix's JSON, and each failure (Nix missing, an
evaluation error, a failing build) is one readable message naming its cause."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from pipeline import config, stages
from pipeline.core.errors import ConfigError, PipelineError, ToolError
from pipeline.sources import nix as nix_source
from pipeline.sources import nixcli
from pipeline.stages import Run
from tests.support.nixflake import NIX_TEST_CONFIG, nix_env, write_flake  # noqa: F401 (fixture)


def images_toml(tmp_path: Path, extra: str = "") -> Path:
    p = tmp_path / "images.toml"
    p.write_text(f"""
[build]
artifacts = "{tmp_path / 'artifacts'}"
[images.nixtest]
source = "nix"
{extra}
[images.nixtest.nix]
flake = "flake"
host = "testhost"
""")
    return p


def context(tmp_path: Path, extra: str = "") -> Run:
    return stages.open_run(config.load(images_toml(tmp_path, extra)), 1_700_000_000)


# --- config -------------------------------------------------------------------------------


def test_config_resolves_the_flake_directory(tmp_path: Path) -> None:
    write_flake(tmp_path / "flake")
    image = config.load(images_toml(tmp_path)).image("nixtest")
    assert image.nix is not None
    assert image.nix.flake == str((tmp_path / "flake").resolve())
    assert image.nix.attribute == "nixosConfigurations.testhost.config"
    assert image.baguette.label == "nixos-root"
    assert image.dotfiles is None and not image.chromeos_integration


def test_config_keeps_a_flake_uri_and_defaults_host_to_the_image_name(tmp_path: Path) -> None:
    p = tmp_path / "images.toml"
    p.write_text('[images.work]\nsource = "nix"\n[images.work.nix]\nflake = "github:me/cfg"\n')
    image = config.load(p).image("work")
    assert image.nix == config.NixSource("github:me/cfg", "work")


@pytest.mark.parametrize("table, message", [
    ('[images.n.nix]\nflake = "nowhere"', "images.n.nix.flake: "),
    ('[images.n.nix]\nhost = "a.b"', "images.n.nix.host: 'a.b' is not a plain attribute"),
    ('[images.n.nix]\nhots = "x"', "images.n.nix.hots: unknown key"),
    ('user = "me"', "images.n.user: a `nix` image takes this from its NixOS configuration"),
    ('[images.n.debian]\nsuite = "sid"', "images.n.debian: this table is for source = 'debian'"),
])
def test_config_errors(tmp_path: Path, table: str, message: str) -> None:
    write_flake(tmp_path / "nix")
    p = tmp_path / "images.toml"
    p.write_text(f'[images.n]\nsource = "nix"\n{table}\n')
    with pytest.raises(ConfigError) as e:
        config.load(p)
    assert message in str(e.value)


# --- Nix's output, parsed (no Nix needed) -------------------------------------------------


def test_trim_error_keeps_the_cause_and_drops_advice() -> None:
    stderr = ("warning: Git tree '/x' is dirty\n"
              "\x1b[31;1merror:\x1b[0m attribute 'nope' missing\n\n"
              "       at /nix/store/abc-source/flake.nix:5:3:\n"
              "(use '--show-trace' to show detailed location information)\n")
    assert nixcli.trim_error(stderr) == ("error: attribute 'nope' missing\n"
                                         "       at /nix/store/abc-source/flake.nix:5:3:")


def test_build_command_by_nix_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nixcli, "nix", lambda: "nix")
    old = nixcli.build_command(["/nix/store/a.drv"], (2, 8, 0))
    new = nixcli.build_command(["/nix/store/a.drv"], (2, 24, 1))
    assert old[-1] == "/nix/store/a.drv" and new[-1] == "/nix/store/a.drv^*"
    assert "--no-link" in old and "--json" in old
    assert old[old.index("--log-format") + 1] == "internal-json"


def test_build_log_names_the_failing_derivation_and_its_last_lines() -> None:
    class Bar:
        total: int | None = None
        n = 0

        def refresh(self) -> None:
            pass

    log = nixcli._BuildLog(Bar())
    events = [
        {"action": "start", "id": 1, "type": 104},
        {"action": "start", "id": 2, "type": 105, "fields": ["/nix/store/x-a.drv", "", 1, 1]},
        {"action": "result", "id": 1, "type": 105, "fields": [0, 3, 1, 0]},
        *({"action": "result", "id": 2, "type": 101, "fields": [f"line {i}"]}
          for i in range(40)),
        {"action": "msg", "level": 0,
         "msg": "\x1b[31;1merror:\x1b[0m builder for '\x1b[35;1m/nix/store/x-a.drv\x1b[0m' "
                "failed with exit code 2"},
    ]
    for ev in events:
        log.feed("@nix " + json.dumps(ev) + "\n")
    assert log.bar.total == 3
    err = nixcli._build_error(log, ["/nix/store/x-a.drv"])
    assert "building /nix/store/x-a.drv failed; its last log lines:" in str(err)
    assert "| line 39" in str(err) and "| line 14" not in str(err)  # the last 25 lines
    assert "nix log /nix/store/x-a.drv" in str(err)


# --- with the real Nix --------------------------------------------------------------------


def test_key_is_the_derivation_path_and_follows_what_the_flake_reads(
        tmp_path: Path, nix_env: None) -> None:  # noqa: F811
    write_flake(tmp_path / "flake")
    ctx = context(tmp_path)
    image = ctx.config.image("nixtest")
    si = nix_source.inputs(image, ctx.memo)
    assert si.inputs["tarball"].endswith("-nixos-system-x86_64-linux.tar.xz.drv")
    assert si.inputs["metadata"].endswith("-nixos-lxc-metadata.tar.xz.drv")
    assert nix_source.inputs(image, ctx.memo).key == si.key, "same flake, same key"

    (tmp_path / "flake" / "motd").write_text("changed\n")
    changed = nix_source.inputs(image, ctx.memo)
    assert changed.inputs["tarball"] != si.inputs["tarball"]
    assert changed.inputs["metadata"] == si.inputs["metadata"], "it does not read motd"


def test_base_and_rootfs_from_the_flake(tmp_path: Path, nix_env: None) -> None:  # noqa: F811
    write_flake(tmp_path / "flake", motd="built by nix\n")
    ctx = context(tmp_path)
    image = ctx.config.image("nixtest")
    base_tar = (stages.build(ctx, stages.BASE, image) / "base.tar")
    meta = base_tar.parent / nix_source.METADATA_TAR
    with tarfile.open(meta) as tf:
        assert {"./metadata.yaml", "./templates/container-name.tpl"} <= set(tf.getnames())
    out = (stages.build(ctx, stages.ROOTFS, image) / "rootfs.tar")
    with tarfile.open(out) as tf:
        names = set(tf.getnames())
        motd = tf.extractfile(  # NixOS's /etc/motd is a link made at boot, into this
            "./nix/store/00000000000000000000000000000007-etc-motd").read()  # type: ignore[union-attr]
    assert motd == b"built by nix\n"
    assert "./nix/store/00000000000000000000000000000000-hello/bin/hello" in names
    # a NixOS rootfs gets no overlay: no home, no integration units, no resolv.conf link
    assert not any(n.startswith(("./home", "./etc/systemd", "./etc/resolv.conf"))
                   for n in names)


def test_nix_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_flake(tmp_path / "flake")
    ctx = context(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr("pipeline.core.run.SBIN_DIRS", ())
    with pytest.raises(ToolError) as e:
        stages.key(ctx, stages.BASE, ctx.config.image("nixtest"))
    text = str(e.value)
    assert "source = \"nix\", but Nix is not installed" in text
    assert "nix-bin" in text and "build without Nix" in text
    assert not (tmp_path / "artifacts" / "store").exists()


@pytest.mark.parametrize("flake_nix, expected", [
    ("{ outputs = { self }: { nixosConfigurations.testhost.config.system.build = "
     "{ tarball = builtins.readFile ./no-such-file; }; }; }",
     ["no-such-file", "nixosConfigurations.testhost.config"]),
    ("{ outputs = { self }: { nixosConfigurations.other = {}; }; }",
     ["does not provide attribute", "check `host` in images.toml"]),
    ("{ outputs = { self }: { nixosConfigurations.testhost.config.system.build = ",
     ["syntax error"]),
])
def test_evaluation_errors(tmp_path: Path, nix_env: None, flake_nix: str,  # noqa: F811
                           expected: list[str]) -> None:
    write_flake(tmp_path / "flake", flake_nix=flake_nix)
    ctx = context(tmp_path)
    with pytest.raises(PipelineError) as e:
        stages.build(ctx, stages.BASE, ctx.config.image("nixtest"))
    text = str(e.value)
    assert text.startswith("Nix could not evaluate ")
    for part in expected:
        assert part in text
    assert "--show-trace to show" not in text and "@nix" not in text
    assert len(text.splitlines()) < 20
    assert not list((tmp_path / "artifacts").glob("store/base/*"))


def test_build_failure_names_the_derivation_and_its_log(
        tmp_path: Path, nix_env: None) -> None:  # noqa: F811
    write_flake(tmp_path / "flake", fail_with=3)
    ctx = context(tmp_path)
    with pytest.raises(PipelineError) as e:
        stages.build(ctx, stages.BASE, ctx.config.image("nixtest"))
    text = str(e.value)
    assert "-nixos-system-x86_64-linux.tar.xz.drv failed; its last log lines:" in text
    assert "| compiling the world" in text
    assert "| error: the test asked this build to fail" in text
    assert "hint: `nix log /nix/store/" in text
    assert not list((tmp_path / "artifacts").glob("store/base/*"))


def test_missing_build_users_are_explained(tmp_path: Path, nix_env: None,  # noqa: F811
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian's nix-bin alone, run as root, expects a `nixbld` group nobody created."""
    monkeypatch.setenv("NIX_CONFIG", NIX_TEST_CONFIG.replace(
        "build-users-group =", "build-users-group = no-such-group-here"))
    write_flake(tmp_path / "flake", motd=f"{tmp_path}\n")  # not built before
    ctx = context(tmp_path)
    with pytest.raises(PipelineError) as e:
        stages.build(ctx, stages.BASE, ctx.config.image("nixtest"))
    text = str(e.value)
    assert "no-such-group-here" in text and "nix-setup-systemd" in text


def test_a_hung_evaluation_is_stopped_and_named(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A Nix that never answers (a stand-in script on PATH) is killed at the timeout."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "nix"
    fake.write_text("#!/bin/sh\nexec /bin/sleep 60\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    with pytest.raises(nixcli.NixError) as e:
        nixcli.eval_json("/some/flake", "nixosConfigurations.h.config.system.build",
                         timeout=1)
    assert ("evaluating /some/flake#nixosConfigurations.h.config.system.build did not "
            "finish within 1 s") in str(e.value)
    assert "slow network" in str(e.value)


def test_tarball_found_in_a_make_system_tarball_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "tarball").mkdir(parents=True)
    a, b = out / "tarball" / "a.tar.xz", out / "tarball" / "b.tar.xz"
    a.write_bytes(b"")
    assert nix_source.tarball_file(out, "system-tarball") == a  # the only one
    b.write_bytes(b"")
    with pytest.raises(PipelineError, match="holds no single tarball"):
        nix_source.tarball_file(out, "system-tarball")
    (out / "nix-support").mkdir()
    (out / "nix-support" / "hydra-build-products").write_text(
        f"file system-tarball {b}\n")
    assert nix_source.tarball_file(out, "system-tarball") == b  # named wins
    assert nix_source.tarball_file(a, "system-tarball") == a  # an output that is a file


def test_a_tarball_attribute_that_is_no_derivation(tmp_path: Path,
                                                   nix_env: None) -> None:  # noqa: F811
    write_flake(tmp_path / "flake", flake_nix=(
        "{ outputs = { self }: { nixosConfigurations.testhost.config.system.build = "
        "{ tarball = { drvPath = \"not-a-derivation\"; }; }; }; }"))
    ctx = context(tmp_path)
    with pytest.raises(PipelineError) as e:
        stages.key(ctx, stages.BASE, ctx.config.image("nixtest"))
    assert "system.build.tarball is not a derivation" in str(e.value)
    assert "lxc-container module or nix/modules/baguette.nix" in str(e.value)


# What nixpkgs' default.nix aborts with under a Nix older than it supports, as Nix prints it.
# From 25.11 on, lib/minfeatures.nix lists the features, one of them
#     description = "`builtins.nixVersion` reports at least 2.18";
# and a real run of such a nixpkgs under Nix 2.11 printed (the upgrade advice shortened):
MINFEATURES_ABORT = """\
error: evaluation aborted with the following error message: '
       This version of Nixpkgs requires an implementation of Nix with the following features:
       - `builtins.nixVersion` reports at least 2.18

       You are evaluating with Nix 2.8.0, please upgrade:

       - If you are running NixOS, `nixos-rebuild' can be used to upgrade your system.

       - Alternatively, with Nix > 2.0 `nix upgrade-nix' can be used to imperatively
         upgrade Nix. You may use `nix-env --version' to check which version you have.
       '
(use '--show-trace' to show detailed location information)
"""
# Before it (lib/minver.nix, "2.18" from 2025-08-12), default.nix had
#     This version of Nixpkgs requires Nix >= ${requiredVersion}, please upgrade:
MINVER_ABORT = """\
error: evaluation aborted with the following error message: '
       This version of Nixpkgs requires Nix >= 2.18, please upgrade:

       - If you are running NixOS, `nixos-rebuild' can be used to upgrade your system.
       '
"""


def nix_printing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stderr: str) -> None:
    """A stand-in `nix` on PATH: Debian 12's version, and `stderr` for anything else."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (tmp_path / "stderr").write_text(stderr)
    fake = bindir / "nix"
    fake.write_text("#!/bin/sh\n"
                    'case "$1" in --version) echo "nix (Nix) 2.8.0"; exit 0;; esac\n'
                    f'cat "{tmp_path / "stderr"}" >&2\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")


@pytest.mark.parametrize("stderr, requirement", [
    (MINFEATURES_ABORT, ["This version of Nixpkgs requires an implementation of Nix with the "
                         "following features:",
                         "- `builtins.nixVersion` reports at least 2.18",
                         "You are evaluating with Nix 2.8.0, please upgrade:"]),
    (MINVER_ABORT, ["This version of Nixpkgs requires Nix >= 2.18, please upgrade:"]),
])
def test_nixpkgs_refusing_this_nix_is_said_in_its_words(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stderr: str,
        requirement: list[str]) -> None:
    """The requirement as nixpkgs words it, the Nix found, and where a
    newer Nix comes from on Debian 12; not the NixOS upgrade advice."""
    nix_printing(tmp_path, monkeypatch, stderr)
    with pytest.raises(nixcli.NixError) as e:
        nixcli.eval_json("/f", "nixosConfigurations.h.config")
    text = str(e.value)
    assert text.splitlines()[0] == ("nixpkgs refuses this Nix (2.8.0) while evaluating "
                                    "/f#nixosConfigurations.h.config:")
    assert text.splitlines()[1:1 + len(requirement)] == [f"  {ln}" for ln in requirement]
    assert "nixos-rebuild" not in text and "2.8 or newer" not in text
    hint = e.value.hint or ""
    assert "need Nix 2.18 or newer" in hint and "https://nixos.org/download" in hint
    assert "nix-bin 2.8" in hint and "Debian 13" in hint


def test_check_nix_says_so_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`doit check:nix` gets the same message from `nix flake check`."""
    from pipeline.sources import nixcheck

    nix_printing(tmp_path, monkeypatch, MINFEATURES_ABORT)
    with pytest.raises(nixcli.NixError) as e:
        nixcheck.flake_check(tmp_path)
    assert str(e.value).startswith("nixpkgs refuses this Nix (2.8.0) while running "
                                   "`nix flake check`:\n  This version of Nixpkgs requires")
    assert "2.18" in (e.value.hint or "")


# --- the guest kind -------------------------------------------------------------------------


def kinds_toml(tmp_path: Path) -> Path:
    p = tmp_path / "images.toml"
    p.write_text(f"""
[build]
artifacts = "{tmp_path / 'artifacts'}"
[images.nixlxc]
source = "nix"
[images.nixlxc.nix]
flake = "flake"
host = "testhost"
[images.nixvm]
source = "nix"
[images.nixvm.nix]
flake = "flake"
host = "testhost-baguette"
""")
    return p


def test_the_key_evaluation_says_which_guest_the_configuration_is(
        tmp_path: Path, nix_env: None) -> None:  # noqa: F811
    """Read in the `nix eval` that gives the derivation paths: chromeos.guest.kind, else
    boot.isContainer (a configuration without nix/modules), else nothing."""
    write_flake(tmp_path / "flake")
    run = stages.open_run(config.load(kinds_toml(tmp_path)), 1)
    assert stages.key(run, stages.BASE, run.config.image("nixlxc")).inputs["kind"] == "crostini"
    assert stages.key(run, stages.BASE, run.config.image("nixvm")).inputs["kind"] == "baguette"
    for shape, kind in [("{ boot.isContainer = true; }", "crostini"),
                        ("{ boot.isContainer = false; }", "baguette"), ("{ }", None)]:
        write_flake(tmp_path / "flake", flake_nix=(
            "{ outputs = { self }: { nixosConfigurations.testhost.config = " + shape +
            " // { system.build.tarball = derivation { name = \"t\"; system = \"x\"; "
            "builder = \"/bin/sh\"; }; }; }; }"))
        run = stages.open_run(config.load(kinds_toml(tmp_path)), 1)
        assert stages.key(run, stages.BASE, run.config.image("nixlxc")).inputs["kind"] == kind


def test_verify_sets_up_the_user_the_configuration_declares(
        tmp_path: Path, nix_env: None) -> None:  # noqa: F811
    """`doit verify` of a NixOS image has maitred set up the configuration's
    chromeos.guest.user (so the user-setup check runs, as for a Debian image); a
    configuration that declares none leaves it to ChromeOS and the check out."""
    write_flake(tmp_path / "flake")
    run = stages.open_run(config.load(kinds_toml(tmp_path)), 1)
    assert stages._chromeos_user(run, run.config.image("nixvm")) == "user"
    write_flake(tmp_path / "flake", flake_nix=(
        "{ outputs = { self }: { nixosConfigurations.testhost.config = "
        "{ chromeos.guest.kind = \"crostini\"; system.build.tarball = derivation "
        "{ name = \"t\"; system = \"x\"; builder = \"/bin/sh\"; }; }; }; }"))
    run = stages.open_run(config.load(kinds_toml(tmp_path)), 1)
    assert stages._chromeos_user(run, run.config.image("nixlxc")) == ""


def test_the_other_image_kind_is_refused_before_anything_is_built(
        tmp_path: Path, nix_env: None) -> None:  # noqa: F811
    """`baguette:` of a Crostini configuration and `lxc:` of a Baguette one stop at the
    kind guard, which doit runs before the base stage: no `nix build`, no store entry."""
    from tests.support.doit import doit, ran

    write_flake(tmp_path / "flake", motd=f"{tmp_path}\n")
    kinds_toml(tmp_path)
    vm = doit(tmp_path, "baguette:nixlxc", check=False)
    out = vm.stdout + vm.stderr
    assert vm.returncode != 0
    assert ("nixlxc: nixosConfigurations.testhost is a Crostini container configuration; a "
            "Baguette disk made from it (baguette:nixlxc) would not work") in out
    assert ("hint: build `doit lxc:nixlxc` instead, or set images.nixlxc.nix.host to a "
            "configuration that imports nixosModules.baguette (nix/ has sample-baguette)") in out
    container = doit(tmp_path, "lxc:nixvm", check=False)
    out = container.stdout + container.stderr
    assert container.returncode != 0
    assert ("nixvm: nixosConfigurations.testhost-baguette is a Baguette VM configuration; a "
            "Crostini container made from it (lxc:nixvm) would not work") in out
    assert "imports nixosModules.crostini (nix/ has sample-crostini)" in out
    for proc in (vm, container):
        assert not {t for t in ran(proc) if t.startswith("base:")}
        assert "building /nix/store/" not in proc.stderr and "Traceback" not in out
    assert not list((tmp_path / "artifacts").glob("store/base/*"))

    # the matching kinds pass the guard (up to date: it ran nothing)
    run = stages.open_run(config.load(kinds_toml(tmp_path)), 1)
    stages.check_kind(run, stages.LXC, run.config.image("nixlxc"))
    stages.check_kind(run, stages.PACK, run.config.image("nixvm"))
    with pytest.raises(PipelineError, match="would not work"):
        stages.key(run, stages.PACK, run.config.image("nixlxc"))
