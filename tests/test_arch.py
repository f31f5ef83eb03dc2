"""aarch64 guests without booting one: `arch` for every source, the tree's architecture read
from its ELF files (and a mismatch refused), the binfmt_misc check before a foreign mmdebstrap,
a foreign tree's libraries found without `ldd`, QEMU's argv for an aarch64 appliance, the LXC
metadata and the simplestreams index of an aarch64 image beside an x86_64 one."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from pipeline import config, stages
from pipeline.config import Accel
from pipeline.core import binfmt
from pipeline.core.arch import AARCH64, X86_64, elf_machine
from pipeline.core.errors import ConfigError, PipelineError
from pipeline.publish import simplestreams as ss
from pipeline.publish import tree as publish
from pipeline.rootfs import treearch
from pipeline.sources import debian
from pipeline.vmhelper import elfdeps
from pipeline.vmhelper.appliance import Appliance
from pipeline.vmhelper.qemu import qemu_argv, second_serial_device
from tests.support.nixflake import nix_env  # noqa: F401 (fixture)
from tests.support.projects import enrich, lxc_outputs
from tests.support.rootfs import busybox_rootfs, elf_header

AARCH64_ELF = elf_header(183)


def tree(path: Path, entries: list[tuple[str, bytes, str | bytes]]) -> Path:
    """A tar of (name, type, data-or-link) entries."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, value in entries:
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode = kind, 0o755
            if kind == tarfile.REGTYPE:
                assert isinstance(value, bytes)
                ti.size = len(value)
                tf.addfile(ti, io.BytesIO(value))
            else:
                ti.linkname = value if isinstance(value, str) else ""
                tf.addfile(ti)
    return path


def debian_like(path: Path, elf: bytes) -> Path:
    """usrmerge and /sbin/init -> /lib/systemd/systemd, as Debian lays them out."""
    d, f, s, h = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
    return tree(path, [("./", d, ""), ("./usr/", d, ""), ("./usr/lib/", d, ""),
                       ("./usr/lib/systemd/", d, ""), ("./usr/lib/systemd/systemd", f, elf),
                       ("./usr/lib/systemd/systemd-copy", h, "./usr/lib/systemd/systemd"),
                       ("./usr/sbin/", d, ""),
                       ("./usr/sbin/init", s, "/lib/systemd/systemd-copy"),
                       ("./lib", s, "usr/lib"), ("./sbin", s, "usr/sbin")])


# --- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["debian", "tarball", "nix"])
def test_every_source_takes_aarch64(tmp_path: Path, source: str) -> None:
    (tmp_path / "rootfs.tar").write_bytes(b"")
    (tmp_path / "flake").mkdir()
    (tmp_path / "flake" / "flake.nix").write_text("{}")
    table = {"debian": "", "tarball": '[images.x.tarball]\npath = "rootfs.tar"',
             "nix": '[images.x.nix]\nflake = "flake"'}[source]
    dotfiles = 'dotfiles = ""' if source != "nix" else ""
    cfg = config.parse(f'[images.x]\nsource = "{source}"\narch = "aarch64"\n{dotfiles}\n'
                       f'{table}\n', tmp_path / "images.toml")
    assert cfg.image("x").arch == "aarch64"


def test_an_architecture_by_its_debian_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        config.parse('[images.x]\nsource = "debian"\ndotfiles = ""\narch = "arm64"\n',
                     tmp_path / "images.toml")
    assert "'arm64' is not one of x86_64, aarch64" in exc.value.message


# --- the tree's architecture ------------------------------------------------------------------


def test_the_architecture_is_read_through_symlinks_and_hard_links(tmp_path: Path) -> None:
    found = treearch.read_arch(debian_like(tmp_path / "t.tar", AARCH64_ELF))
    assert found is not None and found.machine == 183
    assert (found.path, found.resolved) == ("/sbin/init", "/usr/lib/systemd/systemd-copy")
    assert treearch.check_arch(tmp_path / "t.tar", AARCH64, "images.x") == found


def test_a_mismatch_is_refused_naming_both(tmp_path: Path) -> None:
    debian_like(tmp_path / "t.tar", AARCH64_ELF)
    with pytest.raises(PipelineError) as exc:
        treearch.check_arch(tmp_path / "t.tar", X86_64, "images.x.tarball")
    assert exc.value.message == (
        "images.x.tarball: the rootfs is for aarch64 (/sbin/init "
        "(/usr/lib/systemd/systemd-copy) is an aarch64 ELF), but arch = 'x86_64'")
    assert "set arch = 'aarch64'" in exc.value.hint
    tree(tmp_path / "riscv.tar", [("./bin/", tarfile.DIRTYPE, ""),
                                  ("./bin/sh", tarfile.REGTYPE, elf_header(243))])
    with pytest.raises(PipelineError) as exc:
        treearch.check_arch(tmp_path / "riscv.tar", AARCH64, "images.x")
    assert "is for riscv64" in exc.value.message and "x86_64 or aarch64" in exc.value.hint


def test_a_script_init_falls_back_to_bin_sh_and_a_tree_of_scripts_says_nothing(
        tmp_path: Path) -> None:
    f = tarfile.REGTYPE
    tree(tmp_path / "t.tar", [("./sbin/init", f, b"#!/bin/sh\n"), ("./bin/sh", f, AARCH64_ELF)])
    assert treearch.read_arch(tmp_path / "t.tar") == treearch.Found("/bin/sh", "/bin/sh", 183)
    tree(tmp_path / "s.tar", [("./sbin/init", f, b"#!/bin/sh\n"),
                              ("./bin/sh", tarfile.SYMTYPE, "../../../../outside")])
    assert treearch.read_arch(tmp_path / "s.tar") is None


def test_the_tarball_source_refuses_a_tree_of_the_other_architecture(tmp_path: Path) -> None:
    """Through the stage: the base entry is not made, the error names both architectures."""
    busybox_rootfs(tmp_path / "rootfs.tar", busybox=AARCH64_ELF)
    (tmp_path / "images.toml").write_text(f"""
[build]
artifacts = "{tmp_path / 'artifacts'}"
[images.x]
source = "tarball"
dotfiles = ""
[images.x.tarball]
path = "rootfs.tar"
""")
    run = stages.open_run(config.load(tmp_path / "images.toml"), 1)
    with pytest.raises(PipelineError) as exc:
        stages.build(run, stages.BASE, run.config.image("x"))
    assert "the rootfs is for aarch64" in exc.value.message
    assert "(/bin/sh (/bin/busybox) is an aarch64 ELF), but arch = 'x86_64'" in exc.value.message
    assert not list((tmp_path / "artifacts" / "store" / "base").glob("[!.]*"))


def test_the_elf_header_in_either_byte_order() -> None:
    assert elf_machine(elf_header(62)) == 62
    big = bytearray(elf_header(0))
    big[5], big[18:20] = 2, (22).to_bytes(2, "big")
    assert elf_machine(bytes(big)) == 22
    assert elf_machine(b"#!/bin/sh\n" + bytes(20)) is None


# --- binfmt_misc ------------------------------------------------------------------------------


def test_binfmt_states(tmp_path: Path) -> None:
    assert "not mounted" in (binfmt.problem(AARCH64, tmp_path) or "")
    (tmp_path / "status").write_text("disabled\n")
    assert "disabled" in (binfmt.problem(AARCH64, tmp_path) or "")
    (tmp_path / "status").write_text("enabled\n")
    assert "no binfmt_misc handler qemu-aarch64" in (binfmt.problem(AARCH64, tmp_path) or "")
    (tmp_path / "qemu-aarch64").write_text("disabled\ninterpreter /x\n")
    assert "qemu-aarch64 is disabled" in (binfmt.problem(AARCH64, tmp_path) or "")
    (tmp_path / "qemu-aarch64").write_text("enabled\ninterpreter /x\nflags: PF\n")
    assert binfmt.problem(AARCH64, tmp_path) is None
    assert binfmt.problem(X86_64, tmp_path) is None  # the host's own


def test_a_foreign_debian_image_without_binfmt_is_one_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(binfmt, "BINFMT_MISC", tmp_path)
    monkeypatch.setattr(binfmt.problem, "__defaults__", (tmp_path,))
    cfg = config.parse('[images.x]\nsource = "debian"\ndotfiles = ""\narch = "aarch64"\n',
                       tmp_path / "images.toml")
    ran: list[object] = []
    monkeypatch.setattr(debian, "run", lambda *a, **k: ran.append(a))
    with pytest.raises(PipelineError) as exc:
        debian.make_base(cfg.image("x"), tmp_path / "base.tar")
    assert exc.value.message == (
        "images.x: arch = 'aarch64' on this x86_64 host runs the rootfs's maintainer scripts "
        f"under qemu-user, but binfmt_misc is not mounted at {tmp_path}")
    assert "pipeline.hostsetup" in exc.value.hint and "unprivileged container" in exc.value.hint
    assert ran == [] and not (tmp_path / "base.tar").exists()


# --- the appliance from another architecture's tree --------------------------------------------


@pytest.mark.parametrize("program", ["/usr/bin/tar", "/usr/bin/xargs", "/usr/bin/btrfs"])
def test_elf_libraries_match_ldd_on_the_host(program: str) -> None:
    """The ELF reading that serves a foreign tree finds what `ldd` finds on the host's own."""
    out = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout
    want = {Path(w).resolve() for line in out.splitlines() for w in line.split()
            if w.startswith("/")}
    got = elfdeps.libraries(Path("/"), Path(program), "x86_64-linux-gnu")
    assert {p.resolve() for p in got.values()} == want


def test_elf_libraries_a_missing_one_is_named(tmp_path: Path) -> None:
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "usr" / "bin" / "tar").write_bytes(Path("/usr/bin/tar").read_bytes())
    with pytest.raises(PipelineError) as exc:
        elfdeps.libraries(tmp_path, tmp_path / "usr" / "bin" / "tar", "x86_64-linux-gnu")
    assert "needs lib" in exc.value.message and f"which {tmp_path} does not hold" in \
        exc.value.message


def test_qemu_argv_for_an_aarch64_appliance(tmp_path: Path) -> None:
    app = Appliance(tmp_path / "kernel", tmp_path / "initrd", "k", AARCH64)
    argv = qemu_argv(app, Accel.TCG, [], "appliance.mode=boot", 1024, tmp_path / "log",
                     second_serial=tmp_path / "results")
    assert argv[0].endswith("qemu-system-aarch64")
    assert argv[argv.index("-machine") + 1] == "virt"
    assert argv[argv.index("-cpu") + 1] == "max,pauth-impdef=on"
    append = argv[argv.index("-append") + 1]
    assert "console=ttyAMA0" in append and "tsc=" not in append
    assert f"file,id=serial1,path={tmp_path / 'results'}" in argv
    assert second_serial_device(AARCH64) == "/dev/ttyS0"
    assert second_serial_device(X86_64) == "/dev/ttyS1"
    x86 = qemu_argv(Appliance(tmp_path / "kernel", tmp_path / "initrd", "k"), Accel.TCG, [],
                    "", 1024, tmp_path / "log", job=True)
    assert x86[x86.index("-machine") + 1] == "q35" and "qemu64" in x86


# --- LXC metadata and the simplestreams index ----------------------------------------------------


def two_arch_project(tmp_path: Path) -> stages.Run:
    for name, elf in (("x86.tar", None), ("arm.tar", AARCH64_ELF)):
        busybox_rootfs(tmp_path / name, busybox=elf)
        enrich(tmp_path / name)
    (tmp_path / "images.toml").write_text(f"""
[build]
artifacts = "{tmp_path / 'artifacts'}"
[images.tiny]
source = "tarball"
dotfiles = ""
[images.tiny.tarball]
path = "x86.tar"
[images.tiny-arm]
source = "tarball"
arch = "aarch64"
dotfiles = ""
[images.tiny-arm.tarball]
path = "arm.tar"
""")
    return stages.open_run(config.load(tmp_path / "images.toml"), 1_700_000_000)


def test_lxc_metadata_and_the_index_serve_arm64_beside_amd64(tmp_path: Path) -> None:
    import datetime

    run = two_arch_project(tmp_path)
    for name in ("tiny", "tiny-arm"):
        image = run.config.image(name)
        stages.build(run, stages.BASE, image)
        stages.build(run, stages.ROOTFS, image)
        files, _ = lxc_outputs(run, image)
        with tarfile.open(files[0]) as tf:
            yaml = tf.extractfile("metadata.yaml").read().decode()  # type: ignore[union-attr]
        assert f'"architecture": "{image.arch}"\n' in yaml
    publish.publish(run, datetime.datetime(2026, 11, 24, 8, 0, tzinfo=datetime.UTC))
    root = tmp_path / "artifacts" / "publish"
    products = ss.read_products(json.loads((root / "streams/v1/index.json").read_text()),
                                json.loads((root / "streams/v1/images.json").read_text()))
    by_arch = {p.arch: p for p in products}
    assert set(by_arch) == {"amd64", "arm64"}
    assert by_arch["arm64"].name == "tiny-arm:tiny:arm64:default"
    item = by_arch["arm64"].versions["20261124_0800"].items["lxd.tar.xz"]
    assert item.path == "images/tiny-arm/aarch64/20261124_0800/metadata.tar.xz"
    index = json.loads((root / "streams/v1/index.json").read_text())
    assert sorted(index["index"]["images"]["products"]) == sorted(p.name for p in products)


# --- nix: the configuration's system ---------------------------------------------------------

ARM_FLAKE = r"""{ outputs = { self }: {
  nixosConfigurations.armhost.config = {
    nixpkgs.hostPlatform.system = "aarch64-linux";
    chromeos.guest.kind = "baguette";
    system.build.tarball = derivation {
      name = "arm-rootfs"; system = "aarch64-linux"; builder = "/bin/sh";
      args = [ "-c" ("/bin/mkdir -p r/sbin $out/tarball && /bin/echo '#!/bin/sh' > r/sbin/init"
        + " && /bin/chmod 755 r/sbin/init && /bin/tar -C r -cf $out/tarball/rootfs.tar .") ];
    };
  };
}; }
"""


def nix_project(tmp_path: Path, arch: str) -> stages.Run:
    from tests.support.nixflake import write_flake

    write_flake(tmp_path / "flake", flake_nix=ARM_FLAKE)
    (tmp_path / "images.toml").write_text(f"""
[build]
artifacts = "{tmp_path / 'artifacts'}"
[images.arm]
source = "nix"
arch = "{arch}"
[images.arm.nix]
flake = "flake"
host = "armhost"
""")
    return stages.open_run(config.load(tmp_path / "images.toml"), 1)


def test_nix_configuration_of_the_other_architecture_is_refused(
        tmp_path: Path, nix_env: None) -> None:  # noqa: F811
    run = nix_project(tmp_path, "x86_64")
    with pytest.raises(PipelineError) as exc:
        stages.key(run, stages.BASE, run.config.image("arm"))
    assert exc.value.message == ("images.arm: nixosConfigurations.armhost is for "
                                 "aarch64-linux, but arch = 'x86_64' (x86_64-linux)")
    assert "sample-<kind>-aarch64" in exc.value.hint


def test_nix_says_what_it_needs_to_build_aarch64_then_builds_with_it(
        tmp_path: Path, nix_env: None, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from tests.support.nixflake import NIX_TEST_CONFIG

    run = nix_project(tmp_path, "aarch64")
    image = run.config.image("arm")
    assert stages.key(run, stages.BASE, image).inputs["system"] == "aarch64-linux"
    with pytest.raises(PipelineError) as exc:
        stages.build(run, stages.BASE, image)
    assert exc.value.message.startswith(
        "images.arm: its configuration is built for aarch64-linux, which this Nix (system "
        "x86_64-linux, extra-platforms: ")
    assert "\n" not in exc.value.message and "\n" not in exc.value.hint
    assert "`extra-platforms = aarch64-linux`" in exc.value.hint
    assert "binfmt_misc" in exc.value.hint and "builders = ssh://" in exc.value.hint
    assert not list((tmp_path / "artifacts" / "store" / "base").glob("[!.]*"))

    monkeypatch.setenv("NIX_CONFIG", NIX_TEST_CONFIG + "\nextra-platforms = aarch64-linux")
    entry = stages.build(run, stages.BASE, image)
    with tarfile.open(entry / "base.tar") as tf:
        assert "./sbin/init" in tf.getnames()


def test_kvm_for_a_guest_of_another_architecture_is_refused(tmp_path: Path) -> None:
    cfg = config.parse(f'[build]\naccel = "kvm"\nartifacts = "{tmp_path / "a"}"\n'
                       '[images.x]\nsource = "debian"\ndotfiles = ""\narch = "aarch64"\n',
                       tmp_path / "images.toml")
    run = stages.open_run(cfg, 1)
    with pytest.raises(PipelineError) as exc:
        stages.guest_for(run, cfg.image("x"))
    assert exc.value.message == ('build.accel = "kvm" but images.x is aarch64 on this x86_64 '
                                 "host, which only QEMU's emulation (TCG) runs")
    assert run.foreign == {}
