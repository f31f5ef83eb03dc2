"""The secret scan: a home as developers fill it (tests/support/secrets_corpus.py) has every
planted kind refused, by path and line, and every decoy beside them accepted; a NixOS-shaped
tree of real packages (test keys, examples, ELF files with key material) and a whole
customized rootfs scan clean; the allowlist takes globs and cannot switch the scan off; a
message never holds a value; the rootfs stage stores nothing when it refuses."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest

from pipeline import config
from pipeline.core.errors import ConfigError, PipelineError, ToolError
from pipeline.rootfs import customize, secrets
from tests.support import nixos_tree, secrets_corpus
from tests.support.tools import tool_missing

CORPUS = secrets_corpus.build()


@pytest.fixture(autouse=True)
def _gitleaks() -> None:
    if shutil.which("gitleaks") is None:
        tool_missing("gitleaks is not installed (python3 -m pipeline.hostsetup)")


def tar_of(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in sorted(files.items()):
            ti = tarfile.TarInfo("." + name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def corpus_findings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[secrets.Finding]]:
    work = tmp_path_factory.mktemp("corpus")
    found: dict[str, list[secrets.Finding]] = {}
    for f in secrets.scan(tar_of(work / "r.tar", CORPUS.files()), work=work):
        found.setdefault(f.path.split(":", 1)[0], []).append(f)  # archive:member -> archive
    return found


def test_corpus_holds_forty_kinds_in_their_real_places() -> None:
    kinds = {p.kind for p in CORPUS.planted}
    assert len(kinds) == len(CORPUS.planted) >= 40
    assert len(CORPUS.decoys) >= 40
    homes = [p for p in CORPUS.planted if p.path.startswith(secrets_corpus.H + "/")]
    assert len(homes) >= 40


@pytest.mark.parametrize("plant", CORPUS.planted, ids=lambda p: p.kind)
def test_every_planted_kind_is_refused(
        plant: secrets_corpus.Plant, corpus_findings: dict[str, list[secrets.Finding]]) -> None:
    found = corpus_findings.get(plant.path, [])
    assert found, f"{plant.kind} at {plant.path} was not found"
    if plant.line:
        assert plant.line in {f.line for f in found}, (plant.line, found)


@pytest.mark.parametrize("path", sorted(CORPUS.decoys))
def test_every_decoy_is_accepted(
        path: str, corpus_findings: dict[str, list[secrets.Finding]]) -> None:
    assert path not in corpus_findings


def test_recall_is_whole(corpus_findings: dict[str, list[secrets.Finding]]) -> None:
    """The figure docs/secrets.md gives: planted kinds found / planted kinds."""
    found = sum(p.path in corpus_findings for p in CORPUS.planted)
    assert found == len(CORPUS.planted)


def test_a_key_past_64_mib_is_found_on_its_line(
        corpus_findings: dict[str, list[secrets.Finding]]) -> None:
    plant = next(p for p in CORPUS.planted if p.kind == "private key after the first 64 MiB")
    assert len(plant.data) > 64 << 20
    line = plant.data[:plant.data.index(b"-----BEGIN")].count(b"\n") + 1
    assert {f.line for f in corpus_findings[plant.path]} == {line}


def test_a_key_appended_to_an_elf_is_found_on_its_line(
        corpus_findings: dict[str, list[secrets.Finding]]) -> None:
    plant = next(p for p in CORPUS.planted if p.kind == "private key appended to an ELF binary")
    line = plant.data[:plant.data.index(b"-----BEGIN OPENSSH")].count(b"\n") + 1
    assert {f.line for f in corpus_findings[plant.path]} == {line}


def test_message_names_path_kind_line_never_values(tmp_path: Path) -> None:
    plants = [p for p in CORPUS.planted if p.kind in (
        "GitHub personal access token", ".pgpass password", "AWS access key")]
    rootfs = tar_of(tmp_path / "r.tar", {p.path: p.data for p in plants})
    with pytest.raises(PipelineError) as err:
        secrets.refuse(secrets.scan(rootfs, work=tmp_path), "work")
    text = str(err.value)
    assert f"{secrets_corpus.H}/.zshenv:2: github-pat" in text
    assert f"{secrets_corpus.H}/.pgpass:2: .pgpass password" in text
    assert "secrets_allow" in err.value.hint and text.endswith(err.value.hint)
    for p in plants:
        for line in p.data.decode().splitlines():
            if line.startswith(("#", "[")):
                continue
            value = line.rpartition("=")[2].rpartition(":")[2].strip()
            if len(value) >= 8:
                assert value not in text


def test_nixos_shaped_tree_of_real_packages_is_clean(tmp_path: Path) -> None:
    """Real package files: Python's test keys, xmlsec's example key, gnutls and OpenSSH
    binaries and libgnutls.a with key material, OpenSSL's and git's documentation, as Nix
    lays them out, with /etc and home-manager's home as store paths."""
    if nixos_tree.missing():
        tool_missing(f"packages missing: {nixos_tree.missing()} (python3 -m pipeline.hostsetup "
                     "--tests)")
    tree = nixos_tree.write_nixos_tree(tmp_path / "nixos.tar")
    with tarfile.open(tree) as tf:
        names = tf.getnames()
    assert any("/lib/python3.11/test/keycert.pem" in n for n in names)
    assert any(n.endswith("/examples/rsakey.pem") for n in names)
    assert any(n.endswith("/lib/x86_64-linux-gnu/libgnutls.a") for n in names)
    assert secrets.scan(tree, work=tmp_path) == []


def test_without_gitleaks_the_scan_says_how_to_get_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    rootfs = tar_of(tmp_path / "r.tar", {f"{secrets_corpus.H}/.bashrc": b"alias ll='ls -l'\n"})
    with pytest.raises(ToolError, match="'gitleaks' is not installed") as err:
        secrets.scan(rootfs, work=tmp_path)
    assert "pipeline.hostsetup" in err.value.hint


def test_allowlist_takes_globs(tmp_path: Path) -> None:
    files = {p.path: p.data for p in CORPUS.planted[:6]}
    files["/root/.zsh_history"] = b": 1:0;ls\n"
    rootfs = tar_of(tmp_path / "r.tar", files)
    left = secrets.scan(rootfs, (f"{secrets_corpus.H}/*",), work=tmp_path)
    assert {f.path for f in left} == {"/root/.zsh_history"}


@pytest.mark.parametrize("pattern", ["*", "/*", "/**", "*/id_rsa", "home/*", "/h?me/*", "/"])
def test_allowlist_cannot_switch_the_scan_off(tmp_path: Path, pattern: str) -> None:
    (tmp_path / "x.tar").write_bytes(bytes(1024))
    with pytest.raises(ConfigError, match="would accept secrets anywhere") as err:
        config.parse(f'[images.work]\nsource = "tarball"\nsecrets_allow = ["{pattern}"]\n'
                     f'[images.work.tarball]\npath = "x.tar"\n', tmp_path / "images.toml")
    assert err.value.hint


def test_allowlist_names_places(tmp_path: Path) -> None:
    (tmp_path / "x.tar").write_bytes(bytes(1024))
    image = config.parse('[images.work]\nsource = "tarball"\nsecrets_allow = '
                         '["/usr/share/pkg/test-key.pem", "/home/*/.cache/tool/*"]\n'
                         '[images.work.tarball]\npath = "x.tar"\n', tmp_path / "images.toml")
    assert image.image("work").secrets_allow == ("/usr/share/pkg/test-key.pem",
                                                 "/home/*/.cache/tool/*")


def tarball_image(tmp_path: Path, base: Path, dots: Path) -> config.Image:
    """An image of the tarball `base` with the dotfiles `dots`."""
    return config.parse(f"""
[images.work]
source = "tarball"
dotfiles = "{dots}"
[images.work.tarball]
path = "{base}"
""", tmp_path / "images.toml").image("work")


def test_customize_refuses_and_writes_nothing(tmp_path: Path) -> None:
    base = tar_of(tmp_path / "base.tar", {"/etc/hostname": b"x\n"})
    dots = tmp_path / "dots"
    (dots / ".ssh").mkdir(parents=True)
    key = next(p for p in CORPUS.planted if p.kind == "OpenSSH private key")
    (dots / ".ssh" / "id_ed25519").write_bytes(key.data)
    image = tarball_image(tmp_path, base, dots)
    out = tmp_path / "out" / "rootfs.tar"
    out.parent.mkdir()
    with pytest.raises(PipelineError, match="/home/user/.ssh/id_ed25519:1: private-key"):
        customize.customize(base, image, out, work_dir=tmp_path, source_date_epoch=None)
    assert list(out.parent.iterdir()) == [], "a refused rootfs left a file behind"


def test_clean_rootfs_has_zero_findings(tmp_path: Path) -> None:
    """A whole customized rootfs (the test fixture with every kind of entry, the ChromeOS
    integration files, dotfiles) scans clean."""
    from tests.support.rootfs import write_rich_rootfs

    base = write_rich_rootfs(tmp_path / "base.tar")
    dots = tmp_path / "dots"
    (dots / ".config").mkdir(parents=True)
    (dots / ".bashrc").write_text("export AWS_PROFILE=work\n")
    (dots / ".config" / "git").write_text("[user]\n\tname = U\n")
    image = tarball_image(tmp_path, base, dots)
    out = tmp_path / "rootfs.tar"
    n = customize.customize(base, image, out, work_dir=tmp_path, source_date_epoch=None)
    assert n > 40
    assert secrets.scan(out, work=tmp_path) == []
