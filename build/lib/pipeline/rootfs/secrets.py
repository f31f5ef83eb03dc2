"""Secret scan: an image carries no secrets, so the rootfs stage refuses one that does.

Two sources of findings (docs/secrets.md has the why of each choice):

- token and key formats come from a maintained rule set: gitleaks' default rules (the
  Debian package's binary) plus the few rules of gitleaks.toml beside this file that the
  packaged version lacks. gitleaks runs once per scan, on the files picked below, copied
  under neutral names into a private directory (so its path allowlist cannot skip one).
- file formats no token rule can know are checked here, by path and structure: histories,
  .netrc/.authinfo, git credential stores, .pgpass, .my.cnf, NetworkManager and
  wpa_supplicant PSKs, GnuPG's private-keys-v1.d, binary OpenPGP secret keys, PuTTY keys,
  kubeconfig, Docker/Podman auths, .npmrc, .pypirc, gem/cargo credentials, gcloud and Azure
  CLI stores, rclone, s3cmd, the Vault and Hugging Face token files, debconf's passwords.dat.

Which files gitleaks reads: in user trees (homes, /root, /etc/skel, /srv, /opt, /usr/local,
/var outside the package databases, /tmp, Nix store paths that are single files or
home-manager output) every file; in package trees and /etc (where real packages ship test
keys and documentation) the files that hold one of the PREFIXES literals, found with one
Aho-Corasick pass. Test and example directories of package trees are not content-scanned.
Whole files are read (no size limit). ELF files are scanned outside the ranges their headers
describe (sections and segments: the program and its compiled-in test vectors); `ar`
archives member by member. Compressed files (gzip, xz, bzip2, zstd, zip, and tar inside them)
outside package trees are unpacked and their members scanned, up to UNPACK_LIMIT in all.
A finding names the path, the kind and the line (0: the whole file), never the value.
"""

from __future__ import annotations

import bz2
import fnmatch
import functools
import io
import json
import lzma
import os
import re
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import ahocorasick_rs
import zstandard

from ..core.errors import PipelineError
from ..core.run import run
from ..core.tarballs import copy_range, member_path, members, open_plain

VERSION = 2  # part of the rootfs stage's key: a rootfs stored under older rules is scanned again
RULES = Path(__file__).with_name("gitleaks.toml")
CHUNK = 64 << 20  # files are read in pieces of this size (with OVERLAP), never truncated
OVERLAP = 1 << 20
WINDOWED = 4 << 20  # a file larger than this is read by the rule set around prefix hits only
BEFORE = 1 << 10  # a window's reach before a prefix hit and (AFTER) past it
AFTER = {"PRIVATE KEY": 64 << 10, "eyJ": 8 << 10}
UNPACK_LIMIT = 256 << 20  # unpacked bytes per compressed file; past it the file is refused
MAX_DEPTH = 3  # archives inside archives

# Literal prefixes of the rule set's keyed rules (the ones that name a token by its own
# prefix), for package trees and /etc. A rule whose only anchor is a common word (gitleaks'
# generic-api-key: "key", "token", ...) runs there only on a file that also holds one of
# these; in user trees every rule runs on every file.
PREFIXES = [
    "PRIVATE KEY", "AGE-SECRET-KEY-1", "AKIA", "ASIA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_",
    "github_pat_", "glpat-", "xoxa-", "xoxb-", "xoxp-", "xoxr-", "xoxs-", "hooks.slack.com",
    "sk_live_", "rk_live_", "sk-ant-", "T3BlbkFJ", "npm_", "pypi-AgEI", "rubygems_", "AIza",
    "hvs.", ".atlasv1.", "dop_v1_", "SG.", "hf_", "AccountKey=", "eyJ", "shpat_", "glsa_",
    "PMAK-", "lin_api_", "pscale_", "dp.pt.",
]
_PREFILTER = ahocorasick_rs.BytesAhoCorasick([p.encode() for p in PREFIXES])

ELF = b"\x7fELF"
AR = b"!<arch>\n"
PACKAGE_TREES = ("/usr/", "/lib/", "/lib32/", "/lib64/", "/libx32/", "/bin/", "/sbin/",
                 "/boot/", "/var/lib/dpkg/", "/var/lib/apt/", "/var/cache/", "/nix/store/")
SYSTEM_TREES = PACKAGE_TREES + ("/etc/",)
USER_TREES = ("/usr/local/", "/etc/skel/")
TEST_DIRS = {"test", "tests", "testdata", "testing", "examples", "example", "demo", "doc"}


@dataclass(frozen=True, order=True)
class Finding:
    path: str
    line: int  # 1-based; 0 when the whole file is the secret (its name or format says so)
    kind: str


# --- where a file lives ----------------------------------------------------------------------

def _store_user_path(path: str) -> bool:
    """A Nix store path made from the user's own configuration rather than a package: a
    single file (pkgs.writeText and friends) or home-manager's generated home."""
    rest = path[len("/nix/store/"):]
    top, _, inner = rest.partition("/")
    return not inner or "home-manager" in top or "-hm_" in top


def system_tree(path: str) -> bool:
    if path.startswith(USER_TREES):
        return False
    if path.startswith("/nix/store/"):
        return not _store_user_path(path)
    return path.startswith(SYSTEM_TREES)


def package_test_data(path: str) -> bool:
    """Test vectors and examples a package ships (Python's test keys, xmlsec's examples)."""
    if not system_tree(path) or path.startswith("/etc/"):
        return False
    return bool(TEST_DIRS.intersection(path.split("/")[:-1]))


# --- file formats ------------------------------------------------------------------------------

def _placeholder(value: bytes) -> bool:
    v = value.strip().strip(b"\"'")
    return (not v or v.startswith((b"$", b"<", b"{{", b"%(")) or set(v) <= set(b"*xX.-_")
            or v.lower() in (b"none", b"null", b"changeme", b"password", b"secret"))


def _lines(data: bytes, pattern: re.Pattern[bytes]) -> list[int]:
    """Lines of the matches of `pattern` whose group 'v' is a real value."""
    return [data.count(b"\n", 0, m.start()) + 1 for m in pattern.finditer(data)
            if not _placeholder(m.group("v"))]


def _kv(*keys: str, sep: str = r"[=:]") -> re.Pattern[bytes]:
    names = "|".join(keys)
    return re.compile(rf"(?mi)^[ \t]*(?:{names})[ \t]*{sep}[ \t]*(?P<v>[^\s#;]\S*)".encode())


NETRC = re.compile(rb"(?:^|\s)password\s+(?P<v>\S+)")
URL_CREDENTIALS = re.compile(rb"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:(?P<v>[^/\s@]+)@")
MYCNF = _kv("password", "pass", sep="=")
NM = _kv(r"psk", r"password", r"wep-key\d", "leap-password", r"private-key-password", "pin",
         sep="=")
WPA = _kv("psk", "password", r"wep_key\d", "sae_password", sep="=")
KUBE = _kv(r"-?[ \t]*(?:client-key-data|token|password|access-token|refresh-token|id-token"
           r"|client-secret)", sep=":")
NPMRC = re.compile(rb"(?m)^[^#;\n]*?(?:_authToken|_auth|_password)[ \t]*=[ \t]*(?P<v>\S+)")
PYPIRC = _kv("password")
GEM = re.compile(rb"(?m)^:?[a-z_]+:[ \t]+(?P<v>\S+)")
CARGO = _kv("token", sep="=")
RCLONE = _kv("pass", "password", "password2", "key", "secret_access_key", "client_secret",
             "token", "account_key", "sas_url", "service_account_credentials", "api_key",
             "app_key", "bearer_token", "session_token", sep="=")
S3CFG = _kv("secret_key", "access_token", "gpg_passphrase", sep="=")
DEBCONF_VALUE = re.compile(rb"(?m)^Value:[ \t]*(?P<v>\S+)")
GPG_PRIVATE = re.compile(rb"\((?:protected-|)private-key\b")
REFRESH = re.compile(rb'"(?:refresh_token|private_key|client_secret)"\s*:\s*"(?P<v>[^"]+)"')
HISTORY = {".histfile", ".zhistory", ".lesshst", ".viminfo", ".Rhistory"}
GCLOUD_STORES = {"credentials.db", "access_tokens.db", "adc.json"}
AZURE_STORES = {"msal_token_cache.json", "msal_token_cache.bin", "accessTokens.json",
                "service_principal_entries.json", "service_principal_entries.bin"}


def _whole(data: bytes) -> list[int]:
    return [0] if data.strip() else []


def _pgpass(data: bytes) -> list[int]:
    found = []
    for n, line in enumerate(data.split(b"\n"), 1):
        if line.lstrip().startswith(b"#"):
            continue
        fields = re.split(rb"(?<!\\):", line, maxsplit=4)
        if len(fields) == 5 and not _placeholder(fields[4]):
            found.append(n)
    return found


def _docker_auths(data: bytes) -> list[int]:
    try:
        doc = json.loads(data)
    except ValueError:
        return []
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        return []
    for entry in auths.values():
        if isinstance(entry, dict) and any(
                isinstance(entry.get(k), str) and entry[k] for k in
                ("auth", "identitytoken", "registrytoken", "password")):
            where = re.search(rb'"(?:auth|identitytoken|registrytoken|password)"\s*:\s*"[^"]', data)
            return [data.count(b"\n", 0, where.start()) + 1 if where else 0]
    return []


def _openpgp_secret(data: bytes) -> bool:
    """The file starts with an OpenPGP secret key or subkey packet (RFC 4880 4.2, 5.5.3):
    what `gpg --export-secret-keys` writes."""
    if len(data) < 8 or not data[0] & 0x80:
        return False
    if data[0] & 0x40:  # new format
        tag, first = data[0] & 0x3F, data[1]
        if first < 192:
            length, body = first, 2
        elif first < 224:
            length, body = ((first - 192) << 8) + data[2] + 192, 3
        elif first == 255:
            length, body = int.from_bytes(data[2:6], "big"), 6
        else:
            return False
    else:
        tag, ltype = (data[0] >> 2) & 0x0F, data[0] & 3
        if ltype == 3:
            return False
        size = 1 << ltype
        length, body = int.from_bytes(data[1:1 + size], "big"), 1 + size
    if tag not in (5, 7) or body + length > len(data) or length < 12:
        return False
    version, algo = data[body], data[body + 5]
    return version in (3, 4, 5, 6) and algo in (1, 2, 3, 16, 17, 18, 19, 20, 22, 25, 26, 27, 28)


def format_findings(path: str, data: bytes) -> list[tuple[int, str]]:
    """Findings of the file formats no token rule can know, as (line, kind). `data` is the
    file's first CHUNK bytes: these files are small, and the rule set reads the rest."""
    base = path.rsplit("/", 1)[-1]
    low = path.lower()
    checks: list[tuple[str, Callable[[], list[int]]]] = []
    if base.endswith("history") or base in HISTORY:
        checks.append(("history", lambda: _whole(data)))
    if base in (".netrc", "_netrc", ".authinfo", "authinfo"):
        checks.append((f"{base.lstrip('._')} password", lambda: _lines(data, NETRC)))
    if base == ".git-credentials" or path.endswith("/git/credentials"):
        checks.append(("git credentials", lambda: _lines(data, URL_CREDENTIALS)))
    if base == ".pgpass":
        checks.append((".pgpass password", lambda: _pgpass(data)))
    if base in (".my.cnf", "my.cnf") or (base.endswith(".cnf") and "mysql" in low):
        checks.append(("MySQL password", lambda: _lines(data, MYCNF)))
    if base == ".mylogin.cnf":
        checks.append(("MySQL login path", lambda: _whole(data)))
    if base.endswith(".nmconnection") or "/system-connections/" in path:
        checks.append(("NetworkManager secret", lambda: _lines(data, NM)))
    if base.startswith("wpa_supplicant") and base.endswith(".conf"):
        checks.append(("wpa_supplicant PSK", lambda: _lines(data, WPA)))
    if "/private-keys-v1.d/" in path:
        checks.append(("GnuPG private key", lambda: _lines_of(data, GPG_PRIVATE)))
    if base in ("secring.gpg", "secring.kbx"):
        checks.append(("GnuPG secret keyring", lambda: _whole(data)))
    if data.startswith(b"PuTTY-User-Key-File-") and b"Private-Lines:" in data:
        checks.append(("PuTTY private key", lambda: [1]))
    if b"kind: Config" in data and b"apiVersion" in data:
        checks.append(("kubeconfig credential", lambda: _lines(data, KUBE)))
    if base.endswith(".json") and b'"auths"' in data:
        checks.append(("registry auth", lambda: _docker_auths(data)))
    if base in (".npmrc", "npmrc"):
        checks.append((".npmrc credential", lambda: _lines(data, NPMRC)))
    if base == ".pypirc":
        checks.append((".pypirc password", lambda: _lines(data, PYPIRC)))
    if path.endswith("/.gem/credentials") or path.endswith("/gem/credentials"):
        checks.append(("RubyGems credentials", lambda: _lines(data, GEM)))
    if path.endswith(("/.cargo/credentials", "/.cargo/credentials.toml")):
        checks.append(("cargo registry token", lambda: _lines(data, CARGO)))
    if "/gcloud/" in path and (base in GCLOUD_STORES or base.endswith("credentials.json")):
        checks.append(("gcloud credentials", lambda: _lines(data, REFRESH) if
                       base.endswith(".json") else _whole(data)))
    if "/.azure/" in path and base in AZURE_STORES:
        checks.append(("Azure CLI token cache", lambda: _whole(data)))
    if base == "rclone.conf":
        checks.append(("rclone credential", lambda: _lines(data, RCLONE)))
    if base == ".s3cfg":
        checks.append(("s3cmd credential", lambda: _lines(data, S3CFG)))
    if base == ".vault-token":
        checks.append(("Vault token file", lambda: _whole(data)))
    if path.endswith("/huggingface/token"):
        checks.append(("Hugging Face token file", lambda: _whole(data)))
    if base == "passwords.dat" and "/debconf/" in path:
        checks.append(("debconf password", lambda: _lines(data, DEBCONF_VALUE)))
    if not system_tree(path) and _openpgp_secret(data):  # a user's export, not package data
        checks.append(("OpenPGP secret key", lambda: [0]))
    return [(line, kind) for kind, lines in checks for line in lines()]


def _lines_of(data: bytes, pattern: re.Pattern[bytes]) -> list[int]:
    return [data.count(b"\n", 0, m.start()) + 1 for m in pattern.finditer(data)][:1]


# --- containers: ELF, ar, compressed files -----------------------------------------------------

def elf_gaps(head: bytes, size: int, read: Callable[[int, int], bytes]) -> list[tuple[int, int]]:
    """(offset, length) of the bytes of an ELF file that no section or segment covers, or
    [(0, size)] when its headers do not parse (a file may start with the magic and be none)."""
    try:
        cls, order = head[4], {1: "<", 2: ">"}[head[5]]
        if cls == 2:
            phoff, shoff = struct.unpack_from(order + "QQ", head, 0x20)
            phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", head, 0x36)
            ph_fmt, sh_fmt = order + "IIQQQQ", order + "IIQQQQ"
        elif cls == 1:
            phoff, shoff = struct.unpack_from(order + "II", head, 0x1C)
            phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", head, 0x2A)
            ph_fmt, sh_fmt = order + "IIIII", order + "IIIIII"
        else:
            return [(0, size)]
        covered = [(0, 0x40 if cls == 2 else 0x34)]
        if phnum and phoff + phnum * phentsize <= size:
            table = read(phoff, phnum * phentsize)
            covered.append((phoff, phnum * phentsize))
            for i in range(phnum):
                f = struct.unpack_from(ph_fmt, table, i * phentsize)
                off, filesz = (f[2], f[5]) if cls == 2 else (f[1], f[4])
                covered.append((off, filesz))
        if shnum and shoff + shnum * shentsize <= size:
            table = read(shoff, shnum * shentsize)
            covered.append((shoff, shnum * shentsize))
            for i in range(shnum):
                f = struct.unpack_from(sh_fmt, table, i * shentsize)
                kind, off, sz = (f[1], f[4], f[5]) if cls == 2 else (f[1], f[4], f[5])
                if kind != 8:  # SHT_NOBITS takes no room in the file
                    covered.append((off, sz))
        if len(covered) == 1:
            return [(0, size)]
    except (KeyError, IndexError, struct.error):
        return [(0, size)]
    gaps, pos = [], 0
    for off, length in sorted(covered):
        if off > pos:
            gaps.append((pos, off - pos))
        pos = max(pos, off + length)
    if pos < size:
        gaps.append((pos, size - pos))
    return [(o, n) for o, n in gaps if n >= 32 and o < size]


def ar_members(data: bytes) -> Iterator[tuple[str, bytes]]:
    pos = len(AR)
    while pos + 60 <= len(data):
        name = data[pos:pos + 16].decode("latin-1").strip().rstrip("/")
        try:
            size = int(data[pos + 48:pos + 58])
        except ValueError:
            return
        yield name, data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)


def _unpack(data: bytes) -> bytes | None:
    """The decompressed bytes of a gzip/xz/bzip2/zstd stream, None for other data; raises
    _TooLarge past UNPACK_LIMIT."""
    if data.startswith(b"\x1f\x8b"):
        d: zlib._Decompress | lzma.LZMADecompressor | bz2.BZ2Decompressor = \
            zlib.decompressobj(wbits=47)
    elif data.startswith(b"\xfd7zXZ\x00"):
        d = lzma.LZMADecompressor()
    elif data.startswith(b"BZh"):
        d = bz2.BZ2Decompressor()
    elif data.startswith(b"\x28\xb5\x2f\xfd"):
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as r:
            out = r.read(UNPACK_LIMIT + 1)
        if len(out) > UNPACK_LIMIT:
            raise _TooLarge
        return out
    else:
        return None
    try:
        out = d.decompress(data, UNPACK_LIMIT + 1)
    except (zlib.error, lzma.LZMAError, OSError, EOFError):
        return None
    if len(out) > UNPACK_LIMIT:
        raise _TooLarge
    return out


class _TooLarge(Exception):
    pass


COMPRESSED = (b"\x1f\x8b", b"\xfd7zXZ\x00", b"BZh", b"\x28\xb5\x2f\xfd", b"PK\x03\x04")
TOO_LARGE = f"compressed file over {UNPACK_LIMIT >> 20} MiB (not scanned)"


# --- the scan ---------------------------------------------------------------------------------

@dataclass
class _Candidate:
    path: str
    data: bytes | None = None
    offset: int = 0  # or a range of the rootfs tar
    size: int = 0
    lines_before: Callable[[], int] = lambda: 0  # lines of the file before these bytes


class _Scan:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.found: list[Finding] = []
        self.candidates: list[_Candidate] = []

    def read(self, offset: int, n: int) -> bytes:
        return os.pread(self.fd, n, offset)

    def member(self, path: str, offset: int, size: int) -> None:
        head = self.read(offset, min(size, CHUNK))
        if package_test_data(path):
            return
        for line, kind in format_findings(path, head):
            self.found.append(Finding(path, line, kind))
        if head.startswith(ELF):
            for off, n in elf_gaps(head, size, lambda o, k: self.read(offset + o, k)):
                self.content(path, self.read(offset + off, n), self._counter(offset, off))
        elif head.startswith(AR):
            for name, data in ar_members(self.read(offset, size)):
                self.nested(f"{path}:{name}", data, 1)
        elif not system_tree(path) and head.startswith(COMPRESSED):
            if size > UNPACK_LIMIT:
                self.found.append(Finding(path, 0, TOO_LARGE))
            elif not self.container(path, self.read(offset, size), 0):
                self.candidates.append(_Candidate(path, offset=offset, size=size))
        elif system_tree(path) or size > WINDOWED:
            self.windows(path, offset, size, head)
        else:
            self.candidates.append(_Candidate(path, offset=offset, size=size))

    def windows(self, path: str, offset: int, size: int, head: bytes) -> None:
        """The rule set reads the bytes around each prefix hit only: every file of a system
        tree, and large files (gitleaks reads about 2.5 MB/s: a 100 MiB dump would take a
        minute). A window reaches BEFORE bytes back and AFTER forward (a key's whole block)."""
        spans: list[tuple[int, int]] = []
        pos, chunk = 0, head
        while True:
            for i, start, _ in _PREFILTER.find_matches_as_indexes(chunk):
                lo = max(0, pos + start - BEFORE)
                hi = min(size, pos + start + AFTER.get(PREFIXES[i], BEFORE))
                if spans and lo <= spans[-1][1]:
                    spans[-1] = (spans[-1][0], max(hi, spans[-1][1]))
                else:
                    spans.append((lo, hi))
            if pos + len(chunk) >= size:
                break
            pos += len(chunk) - OVERLAP
            chunk = self.read(offset + pos, min(CHUNK, size - pos))
        for lo, hi in spans:
            data = head[lo:hi] if hi <= len(head) else self.read(offset + lo, hi - lo)
            cut = data.find(b"\n") + 1 if lo else 0  # start on a line of its own
            self.candidates.append(_Candidate(path, data=data[cut:],
                                              lines_before=self._counter(offset, lo + cut)))

    def _counter(self, offset: int, n: int) -> Callable[[], int]:
        """Counts the lines of the n bytes at offset when asked (only for a finding)."""
        def count() -> int:
            total, pos = 0, 0
            while pos < n:
                piece = self.read(offset + pos, min(n - pos, CHUNK))
                total, pos = total + piece.count(b"\n"), pos + len(piece)
            return total
        return count

    def container(self, path: str, data: bytes, depth: int) -> bool:
        """Unpack a compressed file or a zip and scan its members; False if it is none."""
        if depth >= MAX_DEPTH:
            return False
        try:
            if data.startswith(b"PK\x03\x04"):
                with zipfile.ZipFile(io.BytesIO(data)) as zf:
                    total = 0
                    for info in zf.infolist():
                        total += info.file_size
                        if total > UNPACK_LIMIT:
                            raise _TooLarge
                        if not info.is_dir():
                            self.nested(f"{path}:{info.filename}", zf.read(info), depth + 1)
                return True
            out = _unpack(data)
        except _TooLarge:
            self.found.append(Finding(path, 0, TOO_LARGE))
            return True
        except (zipfile.BadZipFile, OSError, EOFError):
            return False
        if out is None:
            return False
        if len(out) >= 512 and out[257:262] == b"ustar":
            try:
                with tarfile.open(fileobj=io.BytesIO(out), mode="r:") as tf:
                    for m in tf:
                        f = tf.extractfile(m) if m.isreg() else None
                        if f is not None:
                            self.nested(f"{path}:{member_path(m.name)}", f.read(), depth + 1)
                return True
            except tarfile.TarError:
                pass
        self.nested(f"{path}:", out, depth + 1)
        return True

    def nested(self, path: str, data: bytes, depth: int) -> None:
        if package_test_data(path):
            return
        for line, kind in format_findings(path, data):
            self.found.append(Finding(path, line, kind))
        if data.startswith(ELF):
            for off, n in elf_gaps(data, len(data), lambda o, k: data[o:o + k]):
                self.content(path, data[off:off + n], functools.partial(data.count, b"\n", 0, off))
        elif data.startswith(AR):
            for name, inner in ar_members(data):
                self.nested(f"{path}:{name}", inner, depth + 1)
        elif system_tree(path) or not self.container(path, data, depth):
            self.content(path, data, lambda: 0)

    def content(self, path: str, data: bytes, lines_before: Callable[[], int]) -> None:
        if package_test_data(path):
            return
        if not system_tree(path) or _PREFILTER.find_matches_as_indexes(data):
            self.candidates.append(_Candidate(path, data=data, lines_before=lines_before))

    def run_rules(self, work: Path) -> None:
        """gitleaks over the candidates, each copied to a file named by its index."""
        if not self.candidates:
            return
        with tempfile.TemporaryDirectory(prefix="secret-scan.", dir=work) as tmp:
            src = Path(tmp) / "files"
            src.mkdir()
            for i, c in enumerate(self.candidates):
                out = os.open(src / str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.write(out, b"\n")  # no magic at offset 0: gitleaks skips "binary" files
                    if c.data is not None:
                        os.write(out, c.data)
                    else:
                        copy_range(self.fd, out, c.offset, c.size)
                finally:
                    os.close(out)
            report = Path(tmp) / "report.json"
            run(["gitleaks", "detect", "--no-git", "--source", src, "--config", RULES,
                 "--report-format", "json", "--report-path", report, "--exit-code", "0",
                 "--no-banner", "--log-level", "error", "--redact"],
                hint="the secret scan runs gitleaks; run `python3 -m pipeline.hostsetup`")
            for hit in json.loads(report.read_bytes() or b"[]"):
                c = self.candidates[int(Path(hit["File"]).name)]
                self.found.append(Finding(c.path, c.lines_before() + int(hit["StartLine"]) - 1,
                                          str(hit["RuleID"])))


def scan(rootfs: Path, allow: tuple[str, ...] = (), work: Path | None = None) -> list[Finding]:
    """Findings in the plain rootfs tar, minus the allowed paths, sorted by path and line."""
    fd = os.open(rootfs, os.O_RDONLY)
    try:
        s = _Scan(fd)
        with open_plain(rootfs) as tf:
            for m in members(tf, rootfs):
                if not m.isreg() or not m.size:
                    continue
                path = "/" + member_path(m.name)
                if not any(fnmatch.fnmatchcase(path, pattern) for pattern in allow):
                    s.member(path, m.offset_data, m.size)
        s.run_rules(work or rootfs.parent)
    finally:
        os.close(fd)
    inner = [f for f in s.found if not any(
        fnmatch.fnmatchcase(f.path, pattern) for pattern in allow)]
    return sorted(set(inner))


def refuse(findings: list[Finding], image: str) -> None:
    if not findings:
        return
    shown = "\n".join(f"  {f.path}:{f.line}: {f.kind}" if f.line else f"  {f.path}: {f.kind}"
                      for f in findings[:20])
    more = f"\n  ... and {len(findings) - 20} more" if len(findings) > 20 else ""
    raise PipelineError(
        f"images.{image}: the rootfs holds {len(findings)} secret(s); nothing was stored:\n"
        f"{shown}{more}",
        hint=f"remove them (keys belong on hardware tokens), or list false positives in "
        f"images.{image}.secrets_allow")
