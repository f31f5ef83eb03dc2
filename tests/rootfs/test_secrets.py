"""The secret scan: every listed kind is found (path and kind, never the value), a clean tree
has no finding, the allowlist works, and the rootfs stage stores nothing when it refuses.
The planted secrets are made up at run time."""

from __future__ import annotations

import base64
import io
import os
import tarfile
from pathlib import Path

import pytest

from pipeline import config
from pipeline.core.errors import PipelineError
from pipeline.rootfs import customize, secrets


def _b64_lines() -> str:
    body = base64.b64encode(os.urandom(300)).decode()
    return "\n".join(body[i:i + 64] for i in range(0, len(body), 64))


def _armored(kind: str, headers: str = "") -> bytes:
    return (f"-----BEGIN {kind}-----\n{headers}{_b64_lines()}\n-----END {kind}-----\n").encode()


PLANTED = {
    "/home/u/.ssh/id_ed25519": ("OpenSSH private key", _armored("OPENSSH PRIVATE KEY")),
    "/etc/ssl/private/server.key": ("PEM private key", _armored("RSA PRIVATE KEY")),
    "/home/u/key.pem": ("PEM private key", _armored("PRIVATE KEY")),
    "/home/u/ec.pem": ("PEM private key", _armored("EC PRIVATE KEY")),
    "/home/u/pkcs8-encrypted.pem": ("PEM private key", _armored("ENCRYPTED PRIVATE KEY")),
    "/home/u/dsa.key": ("PEM private key", _armored("DSA PRIVATE KEY")),
    "/home/u/legacy-encrypted.key": ("PEM private key", _armored(
        "RSA PRIVATE KEY", "Proc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00FF00FF00FF00FF\n\n")),
    "/home/u/secring.asc": ("PGP secret key",
                            _armored("PGP PRIVATE KEY BLOCK", "Comment: test\n\n")),
    "/home/u/.aws/credentials": ("AWS access key",
                                 b"[default]\naws_access_key_id = AKIA" + b"Q" * 16 + b"\n"),
    "/home/u/.aws/config": ("AWS secret key",
                            b"aws_secret_access_key = " + b"a1B2" * 10 + b"\n"),
    "/home/u/.aws/session": ("AWS access key", b"key=ASIA" + b"Z7" * 8 + b"\n"),
    "/home/u/.config/gh/hosts.yml": ("GitHub token", b"oauth_token: ghp_" + b"x9" * 18),
    "/home/u/oauth.json": ("GitHub token", b'{"token": "gho_' + b"a" * 36 + b'"}'),
    "/srv/app/.env": ("GitHub token", b"GH_TOKEN=ghs_" + b"b" * 36 + b"\n"),
    "/home/u/notes.txt": ("GitHub token", b"token github_pat_" + b"Z" * 30),
    "/home/u/.gitlab": ("GitLab token", b"glpat-" + b"k" * 20),
    "/home/u/.netrc": (".netrc password", b"machine example.invalid login u password hunter2\n"),
    "/home/u/.git-credentials": ("git credentials", b"https://u:s3cr3t@example.invalid\n"),
    "/home/u/.bash_history": ("shell history", b"ls\n"),
    "/root/.zsh_history": ("shell history", b": 1:0;ls\n"),
    "/home/u/.local/share/fish/fish_history": ("shell history", b"- cmd: ls\n"),
    "/home/u/.python_history": ("shell history", b"import os\n"),
    "/home/u/_netrc": (".netrc password", b"machine m\n  login u\n  password pw\n"),
}
CLEAN = {
    "/usr/bin/ssh": b"\x7fELF....-----BEGIN OPENSSH PRIVATE KEY-----\x00\x00",  # a binary
    "/usr/share/doc/ssh/README": b"Keys start with -----BEGIN OPENSSH PRIVATE KEY----- lines.",
    "/home/u/.bashrc": b"export AWS_PROFILE=default\nalias gh_status='gh status'\n",
    "/home/u/.bash_history": b"",  # empty history is no secret
    "/home/u/.netrc.example": b"machine x login y password z\n",
}


def tar_of(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in sorted(files.items()):
            ti = tarfile.TarInfo("." + name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


def test_every_kind_is_found_by_path_and_kind(tmp_path: Path) -> None:
    rootfs = tar_of(tmp_path / "r.tar", {k: v for k, (_, v) in PLANTED.items()})
    found = {f.path: f.kind for f in secrets.scan(rootfs)}
    assert found == {path: kind for path, (kind, _) in PLANTED.items()}


def test_clean_tree_has_no_finding(tmp_path: Path) -> None:
    assert secrets.scan(tar_of(tmp_path / "r.tar", CLEAN)) == []


def test_allowlist_takes_globs(tmp_path: Path) -> None:
    rootfs = tar_of(tmp_path / "r.tar", {k: v for k, (_, v) in PLANTED.items()})
    left = secrets.scan(rootfs, ("/home/u/*", "/etc/ssl/private/server.key", "/srv/*"))
    assert {f.path for f in left} == {"/root/.zsh_history"}


def test_message_names_paths_and_kinds_never_values(tmp_path: Path) -> None:
    rootfs = tar_of(tmp_path / "r.tar", {k: v for k, (_, v) in PLANTED.items()})
    with pytest.raises(PipelineError) as err:
        secrets.refuse(secrets.scan(rootfs), "work")
    text = str(err.value)
    assert "/home/u/.netrc: .netrc password" in text and "secrets_allow" in err.value.hint
    assert "hunter2" not in text and "s3cr3t" not in text and "AKIA" not in text


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
    (dots / ".ssh" / "id_ed25519").write_bytes(PLANTED["/home/u/.ssh/id_ed25519"][1])
    image = tarball_image(tmp_path, base, dots)
    out = tmp_path / "out" / "rootfs.tar"
    out.parent.mkdir()
    with pytest.raises(PipelineError, match="/home/user/.ssh/id_ed25519: OpenSSH private key"):
        customize.customize(base, image, out, work_dir=tmp_path, source_date_epoch=None)
    assert list(out.parent.iterdir()) == [], "a refused rootfs left a file behind"


def test_every_listed_kind_is_planted() -> None:
    """The README's list of kinds, each planted above at least once."""
    assert {kind for kind, _ in PLANTED.values()} == {
        "OpenSSH private key", "PEM private key", "PGP secret key", "AWS access key",
        "AWS secret key", "GitHub token", "GitLab token", ".netrc password",
        "git credentials", "shell history"} == {kind for kind, _ in secrets.CONTENT} | {
        ".netrc password", "git credentials", "shell history"}


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
    assert secrets.scan(out) == []
