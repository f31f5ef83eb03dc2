"""A rootfs tarball shaped like a NixOS system, made of real packages: the files of Debian
packages installed on this host, each package relocated to /nix/store/<hash>-<name>-<version>/
as Nix lays it out (bin/, lib/, share/), the generated /etc as a store path behind
/etc/static, home-manager's generated home behind symlinks, a `writeText` config as a
single-file store path and the Nix database. The packages are chosen for what a secret scan
trips on: Python's test suite (test keys), xmlsec's examples (a key), gnutls' tools and
static library (key material in ELF), OpenSSL, OpenSSH, git's documentation of credential
helpers. No pytest here."""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import subprocess
import tarfile
import tempfile
from pathlib import Path

PACKAGES = ["libpython3.11-testsuite", "libxmlsec1-dev", "gnutls-bin", "libgnutls30",
            "libgnutls28-dev", "openssl", "libssl3", "ca-certificates", "openssh-client",
            "git", "perl-base", "curl", "libcurl4", "bash", "coreutils"]
NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"


def store_hash(name: str) -> str:
    digest = hashlib.sha256(name.encode()).digest()
    return "".join(NIX32[b % 32] for b in digest[:32])


def missing(packages: list[str] = PACKAGES) -> list[str]:
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n",
                          *packages], capture_output=True, text=True, check=False).stdout
    installed = {line.split()[0] for line in out.splitlines() if line.endswith(" installed")}
    return [p for p in packages if p not in installed]


def _package_files(package: str) -> tuple[str, list[str]]:
    version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package],
                             capture_output=True, text=True, check=True).stdout
    listing = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True,
                             check=True).stdout
    files = [p for p in listing.splitlines()
             if p.startswith("/") and os.path.isfile(p) and not os.path.islink(p)]
    return version.split(":")[-1].split("-")[0], files


def _add(tf: tarfile.TarFile, name: str, data: bytes | None = None, link: str = "",
         mode: int = 0o644) -> None:
    ti = tarfile.TarInfo("." + name)
    ti.mtime = 1
    if link:
        ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, link, 0o777
        tf.addfile(ti)
        return
    ti.mode = mode
    ti.size = len(data or b"")
    tf.addfile(ti, io.BytesIO(data or b""))


def _nix_db(paths: list[str]) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "db.sqlite"
        con = sqlite3.connect(db)
        con.execute("create table ValidPaths (id integer primary key autoincrement, path text "
                    "unique not null, hash text not null, registrationTime integer not null, "
                    "deriver text, narSize integer, ultimate integer, sigs text, ca text)")
        for p in paths:
            h = hashlib.sha256(p.encode()).hexdigest()
            con.execute("insert into ValidPaths (path, hash, registrationTime, deriver, narSize,"
                        " ultimate, sigs) values (?, ?, 1, ?, 4096, 0, ?)",
                        (p, f"sha256:{h}", p + ".drv",
                         f"cache.nixos.org-1:{hashlib.sha512(p.encode()).hexdigest()[:86]}=="))
        con.commit()
        con.close()
        return db.read_bytes()


def write_nixos_tree(path: Path, packages: list[str] = PACKAGES) -> Path:
    """A plain tar; its members are sorted as the customize stage writes them."""
    entries: dict[str, tuple[bytes | None, str, int]] = {}
    store_paths = []
    for package in packages:
        version, files = _package_files(package)
        top = f"/nix/store/{store_hash(package)}-{package}-{version}"
        store_paths.append(top)
        for f in files:
            rel = f[len("/usr"):] if f.startswith("/usr/") else f
            st = os.stat(f)
            entries[top + rel] = (Path(f).read_bytes(), "", st.st_mode & 0o7777)
    etc = f"/nix/store/{store_hash('etc')}-etc"
    for f in ("/etc/ssl/openssl.cnf", "/etc/ssh/ssh_config", "/etc/gitconfig",
              "/etc/bash.bashrc", "/etc/profile"):
        if os.path.isfile(f):
            entries[f"{etc}/etc{f[4:]}"] = (Path(f).read_bytes(), "", 0o644)
    entries["/etc/static"] = (None, f"{etc}/etc", 0)
    entries["/etc/ssl"] = (None, "/etc/static/ssl", 0)
    entries["/etc/passwd"] = (b"root:x:0:0:System administrator:/root:/run/current-system/sw/"
                              b"bin/bash\nuser:x:1000:100::/home/user:/run/current-system/sw/"
                              b"bin/bash\n", "", 0o644)
    entries["/etc/shadow"] = (b"root:!:1::::::\nuser:!:1::::::\n", "", 0o640)
    hm = f"/nix/store/{store_hash('hm')}-home-manager-files"
    for rel, text in ((".bashrc", b"export EDITOR=vim\nalias ll='ls -l'\n"),
                      (".config/git/config", b"[user]\n\tname = U\n[credential]\n"
                       b"\thelper = libsecret\n"),
                      (".ssh/config", b"Host *\n  IdentityAgent ~/.gnupg/S.gpg-agent.ssh\n")):
        entries[f"{hm}/{rel}"] = (text, "", 0o444)
        entries[f"/home/user/{rel}"] = (None, f"{hm}/{rel}", 0)
    conf = f"/nix/store/{store_hash('rclone')}-rclone.conf"
    entries[conf] = (b"[drive]\ntype = drive\nscope = drive.readonly\n", "", 0o444)
    system = f"/nix/store/{store_hash('system')}-nixos-system-sample-25.05"
    entries[f"{system}/init"] = (b"#!/bin/sh\nexec /nix/store/x-systemd/lib/systemd/systemd\n",
                                 "", 0o755)
    entries["/run/current-system"] = (None, system, 0)
    entries["/nix/var/nix/db/db.sqlite"] = (_nix_db(store_paths + [etc, hm, conf, system]), "",
                                            0o644)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name in sorted(entries):
            data, link, mode = entries[name]
            _add(tf, name, data, link, mode)
    return path
