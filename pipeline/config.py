"""images.toml: one settings table, validated into frozen dataclasses.

Each option is declared once in SETTINGS (key, type, default, help); validation, defaults and
the config reference (docs/configuration.md) all come from that table, so they cannot drift
apart. Errors name the key path (`images.work.baguette.slack`) and end with a hint.
"""

from __future__ import annotations

import enum
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .core.arch import ARCHES as _ARCHES
from .core.errors import ConfigError
from .store.layout import CACHE, LOGS, PUBLISH, RESERVED, STORE, TMP


class Accel(enum.Enum):
    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


class SourceKind(enum.Enum):
    DEBIAN = "debian"
    TARBALL = "tarball"
    NIX = "nix"


ARCHES = tuple(_ARCHES)  # core/arch.py: every name each one goes by
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(value: Any) -> int:
    """'200MiB', '4G', 4294967296 -> bytes (binary units)."""
    if isinstance(value, bool):
        raise ValueError("expected a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("expected a size such as '200MiB' or '4GiB'")
    m = _SIZE_RE.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a size such as '200MiB' or '4GiB'")
    unit = (m.group(2) or "").upper()[:1]  # "MiB" -> "M", "B" -> "B", "" -> ""
    return int(float(m.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class Setting:
    key: str
    kind: str  # str | int | bool | list | size | enum:<a,b> | path | size-or-auto
    default: Any
    help: str


# --- the settings table --------------------------------------------------------------------

BUILD_SETTINGS = (
    Setting("default_images", "list", None,
            "Images built by `doit build:baguette` without a name; default: all of them."),
    Setting("accel", "enum:auto,kvm,tcg", "auto",
            "VM helper accelerator: `auto` probes KVM with a short boot and falls back to TCG; "
            "`kvm` fails if KVM is unusable; `tcg` always emulates."),
    Setting("vm_timeout", "int", 900,
            "Seconds a VM helper run may take before the guest is killed."),
    Setting("vm_memory", "size", "1GiB", "Memory of the VM helper's guest when it boots an image "
            "(doit verify); its short jobs (pack, delta) take at most 384 MiB."),
    Setting("kernel", "path", "",
            "Kernel for the VM helper; default: the newest /boot/vmlinuz-*."),
    Setting("artifacts", "path", "artifacts", "Where the store and per-image outputs live."),
)

IMAGE_SETTINGS = (
    Setting("source", "enum:debian,tarball,nix", None,
            "Where the base rootfs comes from: `debian` (mmdebstrap), `tarball` (a file), "
            "`nix` (a NixOS configuration in a flake)."),
    Setting("description", "str", "", "Free text shown in listings and metadata."),
    Setting("arch", f"enum:{','.join(ARCHES)}", "x86_64",
            "Guest architecture (`aarch64` for ARM Chromebooks; built on any host, see "
            "docs/aarch64.md)."),
    Setting("hostname", "str", "", "The guest's /etc/hostname; default: the image name."),
    Setting("dotfiles", "path", "dotfiles",
            "A directory overlaid into the user's home, owned by the user; '' for none."),
    Setting("user", "str", "user",
            "The guest's uid-1000 user, owner of the dotfiles (created if absent): the name "
            "given to ChromeOS's Linux setup (`vmc start --user`), see \"The user name\"."),
    Setting("uid", "int", 1000, "That user's uid (and gid)."),
    Setting("secrets_allow", "list", [],
            "Absolute paths (globs) the secret scan accepts, e.g. a test key a package ships; "
            "the first component takes no wildcard (`*` alone is refused)."),
    Setting("chromeos_integration", "bool", True,
            "Write the ChromeOS guest units (tools mount, vshd, maitred, ...) into the rootfs."),
)

DEBIAN_SETTINGS = (
    Setting("suite", "str", "bookworm", "Debian suite for mmdebstrap."),
    Setting("variant", "enum:minbase,essential,apt,required,important,standard", "minbase",
            "mmdebstrap variant."),
    Setting("packages", "list", [],
            "Extra packages (systemd-sysv is always added: /sbin/init; with "
            "chromeos_integration, what ChromeOS's guest tools need: dbus, dbus-user-session, "
            "libpam-systemd, udev, openssh-sftp-server, xdg-utils, xauth, xxd)."),
    Setting("mirror", "str", "",
            "Debian mirror URI; default: the host's configured apt mirror for the suite."),
)

TARBALL_SETTINGS = (
    Setting("path", "path", None,
            "A rootfs tarball (tar, tar.gz, tar.xz or tar.zst; the format is sniffed)."),
)

NIX_SETTINGS = (
    Setting("flake", "str", "nix",
            "Flake reference: a directory (relative to images.toml; inside a git repository "
            "only tracked files are seen) or a URI such as `github:me/cfg`."),
    Setting("host", "str", "",
            "Its `nixosConfigurations.<host>`; default: the image name."),
)

# Set by the NixOS configuration itself for `nix` images, so refused there.
NIXOS_OWNED = ("hostname", "dotfiles", "user", "uid", "chromeos_integration")

BAGUETTE_SETTINGS = (
    Setting("label", "str", "",
            "btrfs label; default `nixos-root` for Nix images, else `baguette-root`."),
    Setting("size", "size-or-auto", "auto",
            "Image size: `auto` (content + slack) or a fixed size such as '4GiB'."),
    Setting("slack", "size", "256MiB", "Free space added to the content size when size=auto."),
    Setting("compression_level", "int", 3, "zstd level of baguette_rootfs.img.zst (1-19)."),
)

LXC_SETTINGS = (
    Setting("rootfs_format", "enum:tar.xz,squashfs", "tar.xz",
            "Crostini rootfs as `rootfs.tar.xz` (every LXD) or `rootfs.squashfs`."),
    Setting("unified", "bool", False,
            "One `image.tar.xz` (metadata.yaml + templates/ + rootfs/) instead of two files."),
    Setting("compression_level", "int", 1,
            "xz level of the LXC tarballs (0-9): 1 packs the default image in ~9 s, 6 in ~70 s."),
    Setting("variant", "str", "default", "The image's `variant` property."),
    Setting("release", "str", "",
            "The image's `release` property; default: VERSION_CODENAME from os-release."),
    Setting("expiry_days", "int", 0, "Days until LXD's `expiry_date`; 0 for none."),
)

PUBLISH_SETTINGS = (
    Setting("dir", "path", "",
            "Where `doit publish` lays out the tree to serve; default: `<artifacts>/publish`."),
    Setting("keep", "int", 3,
            "Versions of each image kept in the published tree (the newest; at least 2, so a "
            "remote always has a previous one)."),
    Setting("images", "list", None,
            "Images `doit publish` publishes; default: `build.default_images`."),
    Setting("base_url", "str", "",
            "The HTTPS address the tree is served at, used in the printed `lxc remote add` "
            "line; default: a placeholder."),
)

CACHE_SETTINGS = (
    Setting("remote", "str", "",
            "An OCI registry repository sharing the store, as `oci://HOST[:PORT]/REPO` "
            "(e.g. `oci://ghcr.io/me/guest-cache`); '' for none. Credentials come from the "
            "Docker config or the environment, never from here (docs/remote-cache.md)."),
    Setting("pull", "bool", True,
            "Before building a stage that is not in the store, fetch its entry from the remote."),
    Setting("push", "bool", False,
            "After building a stage, upload its entry to the remote (CI pushes; a laptop may "
            "only pull)."),
    Setting("required", "bool", False,
            "A remote that cannot be reached or refuses a pull or push fails the build; "
            "otherwise the build says why and goes on locally."),
)

SECTIONS: dict[str, tuple[Setting, ...]] = {
    "build": BUILD_SETTINGS,
    "publish": PUBLISH_SETTINGS,
    "cache": CACHE_SETTINGS,
    "images.<name>": IMAGE_SETTINGS,
    "images.<name>.debian": DEBIAN_SETTINGS,
    "images.<name>.tarball": TARBALL_SETTINGS,
    "images.<name>.nix": NIX_SETTINGS,
    "images.<name>.baguette": BAGUETTE_SETTINGS,
    "images.<name>.lxc": LXC_SETTINGS,
}


# --- the validated, frozen result ----------------------------------------------------------


@dataclass(frozen=True)
class DebianSource:
    suite: str
    variant: str
    packages: tuple[str, ...]
    mirror: str


@dataclass(frozen=True)
class TarballSource:
    path: Path


@dataclass(frozen=True)
class NixSource:
    flake: str  # a flake reference Nix understands (directories made absolute)
    host: str

    @property
    def attribute(self) -> str:
        """The host's NixOS configuration (`config`), as `nix eval` reads it."""
        return f"nixosConfigurations.{self.host}.config"


@dataclass(frozen=True)
class BaguetteOptions:
    label: str
    size: int | None  # None: content + slack
    slack: int
    compression_level: int


@dataclass(frozen=True)
class LxcOptions:
    rootfs_format: str
    unified: bool
    compression_level: int
    variant: str
    release: str
    expiry_days: int


@dataclass(frozen=True)
class Image:
    name: str
    source: SourceKind
    description: str
    arch: str
    hostname: str
    dotfiles: Path | None
    user: str
    uid: int
    chromeos_integration: bool
    secrets_allow: tuple[str, ...]
    debian: DebianSource | None
    tarball: TarballSource | None
    nix: NixSource | None
    baguette: BaguetteOptions
    lxc: LxcOptions


@dataclass(frozen=True)
class BuildOptions:
    default_images: tuple[str, ...]
    accel: Accel
    vm_timeout: int
    vm_memory: int
    kernel: Path | None
    artifacts: Path


@dataclass(frozen=True)
class PublishOptions:
    dir: Path
    keep: int
    images: tuple[str, ...]
    base_url: str


@dataclass(frozen=True)
class CacheOptions:
    remote: str  # oci://host[:port]/repo, or "" for none
    pull: bool
    push: bool
    required: bool


NO_CACHE = CacheOptions("", True, False, False)


@dataclass(frozen=True)
class Config:
    path: Path
    build: BuildOptions
    images: dict[str, Image]
    publish: PublishOptions
    cache: CacheOptions = NO_CACHE

    def image(self, name: str) -> Image:
        try:
            return self.images[name]
        except KeyError:
            raise ConfigError(
                f"no image named {name!r} in {self.path}",
                hint=f"known images: {', '.join(sorted(self.images)) or '(none)'}",
            ) from None


# --- validation ----------------------------------------------------------------------------

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")  # RFC 1123, ASCII only


def _check_type(where: str, s: Setting, value: Any, base: Path) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(
            f"{where}: expected {expected}, got {type(value).__name__} {value!r}",
            hint=f"{s.key}: {s.help}",
        )

    kind = s.kind
    if kind == "str":
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad("an integer")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
        return tuple(value)
    if kind == "path":
        if not isinstance(value, str):
            raise bad("a path string")
        if value == "":
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else (base / p)
    if kind.startswith("enum:"):
        choices = kind[5:].split(",")
        if value not in choices:
            raise ConfigError(
                f"{where}: {value!r} is not one of {', '.join(choices)}",
                hint=f"{s.key}: {s.help}",
            )
        return value
    if kind in ("size", "size-or-auto"):
        if kind == "size-or-auto" and value == "auto":
            return None
        try:
            return parse_size(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}", hint=f"{s.key}: {s.help}") from None
    raise AssertionError(kind)


def _close_match(key: str, known: list[str]) -> str:
    import difflib

    near = difflib.get_close_matches(key, known, n=1)
    return f"did you mean {near[0]!r}? " if near else ""


def _section(where: str, table: Any, settings: tuple[Setting, ...], base: Path,
             allowed_subtables: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table", hint=f"write it as [{where}]")
    known = {s.key: s for s in settings}
    for key in table:
        if key not in known and key not in allowed_subtables:
            names = sorted(known) + list(allowed_subtables)
            raise ConfigError(
                f"{where}.{key}: unknown key",
                hint=f"{_close_match(key, names)}known keys: {', '.join(names)}",
            )
    out: dict[str, Any] = {}
    for s in settings:
        if s.key in table:
            out[s.key] = _check_type(f"{where}.{s.key}", s, table[s.key], base)
        elif s.default is None:
            out[s.key] = None
        else:
            out[s.key] = _check_type(f"{where}.{s.key}", s, s.default, base)
    return out


def _required(where: str, values: dict[str, Any], key: str, settings: tuple[Setting, ...]) -> Any:
    if values.get(key) is None:
        s = next(s for s in settings if s.key == key)
        raise ConfigError(f"{where}.{key}: missing", hint=f"{s.key}: {s.help}")
    return values[key]


def _check_allow(where: str, patterns: tuple[str, ...]) -> None:
    """An allowlist entry names a place: an absolute path whose first component has no
    wildcard, so `*`, `/*`, `/**` or `*/id_rsa` cannot switch the secret scan off."""
    for pattern in patterns:
        first = pattern.lstrip("/").split("/", 1)[0]
        if not pattern.startswith("/") or not first or any(ch in first for ch in "*?["):
            raise ConfigError(
                f"{where}: {pattern!r} would accept secrets anywhere in the tree",
                hint="list the paths of the false positives, e.g. "
                     "'/usr/share/pkg/test-key.pem'; the scan cannot be switched off")


def _image(name: str, table: Any, base: Path) -> Image:
    where = f"images.{name}"
    if not _NAME_RE.match(name):
        raise ConfigError(f"{where}: bad image name",
                          hint="use lowercase letters, digits and '-' (it names files and tasks)")
    if name in RESERVED:
        raise ConfigError(f"{where}: the name {name!r} is reserved: <artifacts>/{name}/ is the "
                          "pipeline's own", hint=f"choose another name ({', '.join(RESERVED[:-2])}"
                          f" and {PUBLISH} are taken)")
    v = _section(where, table, IMAGE_SETTINGS, base,
                 ("debian", "tarball", "nix", "baguette", "lxc"))
    kind = SourceKind(_required(where, v, "source", IMAGE_SETTINGS))

    debian, tarball, nix = _source(name, kind, table, base)
    baguette = _baguette(where, kind, table, base)
    lxc = _lxc(where, table, base)
    dotfiles = v["dotfiles"]
    if dotfiles is not None and not dotfiles.is_dir():
        if "dotfiles" in table:
            raise ConfigError(f"{where}.dotfiles: {dotfiles} is not a directory",
                              hint="point it at a directory, or set dotfiles = \"\" for none")
        dotfiles = None
    if kind is SourceKind.NIX:
        dotfiles = None  # the flake reads the dotfiles itself (nix/modules/dotfiles.nix)
    if not re.match(r"^[a-z_][a-z0-9_-]{0,31}$", v["user"]):
        raise ConfigError(f"{where}.user: {v['user']!r} is not a valid user name",
                          hint="lowercase letters, digits, '_' and '-', starting with a letter")
    if not 1 <= v["uid"] < 65534:
        raise ConfigError(f"{where}.uid: {v['uid']} is out of range", hint="use e.g. 1000")
    _check_allow(f"{where}.secrets_allow", v["secrets_allow"])
    if kind is not SourceKind.NIX:  # a NixOS configuration sets its own hostname
        _check_hostname(where, v["hostname"] or name, bool(v["hostname"]))
    return Image(
        name=name, source=kind, description=v["description"], arch=v["arch"],
        hostname=v["hostname"] or name, dotfiles=dotfiles, user=v["user"], uid=v["uid"],
        chromeos_integration=v["chromeos_integration"] and kind is not SourceKind.NIX,
        secrets_allow=v["secrets_allow"], debian=debian, tarball=tarball, nix=nix,
        baguette=baguette, lxc=lxc,
    )


def _check_hostname(where: str, hostname: str, explicit: bool) -> None:
    """RFC 1123: dot-separated labels of ASCII letters, digits and '-' (it goes into
    /etc/hostname and /etc/hosts as it is)."""
    labels = hostname.split(".")
    if len(hostname) <= 253 and all(_LABEL_RE.fullmatch(label) for label in labels):
        return
    rule = ("letters, digits and '-' in labels of 1 to 63 characters separated by dots, "
            "none starting or ending with '-' (RFC 1123)")
    raise ConfigError(
        f"{where}.hostname: {hostname!r} is not a valid hostname",
        hint=rule if explicit else f"the image name is the default hostname: set hostname, {rule}")


def _file_kind(path: Path) -> str:
    mode = path.stat().st_mode
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def _source(name: str, kind: SourceKind, table: dict[str, Any], base: Path
            ) -> tuple[DebianSource | None, TarballSource | None, NixSource | None]:
    """The image's source table (only the one its `source` names may be there)."""
    where = f"images.{name}"
    for other in ("debian", "tarball", "nix"):
        if other in table and other != kind.value:
            raise ConfigError(f"{where}.{other}: this table is for source = {other!r}, "
                              f"but the image's source is {kind.value!r}",
                              hint=f"remove [{where}.{other}] or change `source`")
    if kind is SourceKind.DEBIAN:
        d = _section(f"{where}.debian", table.get("debian", {}), DEBIAN_SETTINGS, base)
        return DebianSource(d["suite"], d["variant"], d["packages"], d["mirror"]), None, None
    if kind is SourceKind.TARBALL:
        t = _section(f"{where}.tarball", table.get("tarball", {}), TARBALL_SETTINGS, base)
        path = _required(f"{where}.tarball", t, "path", TARBALL_SETTINGS)
        if not path.exists():
            raise ConfigError(f"{where}.tarball.path: {path} does not exist",
                              hint="give the path of a rootfs tarball, relative to images.toml")
        if not path.is_file():
            raise ConfigError(f"{where}.tarball.path: {path} is not a regular file "
                              f"({_file_kind(path)})",
                              hint="give the path of a rootfs tarball file, not a directory "
                              "or a device")
        return None, TarballSource(path), None
    return None, None, _nix_source(name, table, base)


def _baguette(where: str, kind: SourceKind, table: dict[str, Any], base: Path
              ) -> BaguetteOptions:
    b = _section(f"{where}.baguette", table.get("baguette", {}), BAGUETTE_SETTINGS, base)
    if not 1 <= b["compression_level"] <= 19:
        raise ConfigError(f"{where}.baguette.compression_level: {b['compression_level']} "
                          "is out of range", hint="zstd levels go from 1 to 19")
    label = b["label"] or ("nixos-root" if kind is SourceKind.NIX else "baguette-root")
    if len(label.encode()) > 255:
        raise ConfigError(f"{where}.baguette.label: too long", hint="btrfs labels hold 255 bytes")
    if b["size"] is not None and b["size"] < 256 * 1024**2:
        raise ConfigError(f"{where}.baguette.size: {b['size']} bytes is too small",
                          hint="btrfs images here are at least 256MiB; or use size = \"auto\"")
    return BaguetteOptions(label, b["size"], b["slack"], b["compression_level"])


def _lxc(where: str, table: dict[str, Any], base: Path) -> LxcOptions:
    x = _section(f"{where}.lxc", table.get("lxc", {}), LXC_SETTINGS, base)
    if not 0 <= x["compression_level"] <= 9:
        raise ConfigError(f"{where}.lxc.compression_level: {x['compression_level']} "
                          "is out of range", hint="xz levels go from 0 to 9")
    if x["unified"] and x["rootfs_format"] != "tar.xz":
        raise ConfigError(f"{where}.lxc.unified: a unified image holds a tar rootfs, not "
                          f"{x['rootfs_format']}", hint="set unified = false for squashfs")
    if x["expiry_days"] < 0:
        raise ConfigError(f"{where}.lxc.expiry_days: cannot be negative",
                          hint="0 means no expiry date")
    return LxcOptions(x["rootfs_format"], x["unified"], x["compression_level"], x["variant"],
                      x["release"], x["expiry_days"])


_HOST_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


def _nix_source(name: str, table: dict[str, Any], base: Path) -> NixSource:
    where = f"images.{name}"
    for key in NIXOS_OWNED:
        if key in table:
            raise ConfigError(f"{where}.{key}: a `nix` image takes this from its NixOS "
                              "configuration", hint=f"set it in the flake's host module and "
                              f"remove `{key}` here (see nix/README.md)")
    n = _section(f"{where}.nix", table.get("nix", {}), NIX_SETTINGS, base)
    host = n["host"] or name
    if not _HOST_RE.match(host):
        raise ConfigError(f"{where}.nix.host: {host!r} is not a plain attribute name",
                          hint="letters, digits, '_' and '-' (nixosConfigurations.<host>)")
    flake = n["flake"]
    if re.match(r"^[a-z][a-z0-9+.-]*:", flake) is None:  # a directory, not a URI
        p = Path(flake).expanduser()
        p = p if p.is_absolute() else (base / p)
        if not (p / "flake.nix").is_file():
            raise ConfigError(f"{where}.nix.flake: {p} holds no flake.nix",
                              hint="point it at the directory of your flake, or use a URI "
                              "such as github:owner/repo")
        flake = str(p.resolve())
    return NixSource(flake, host)


def parse(text: str, path: Path) -> Config:
    base = path.parent
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}",
                          hint="check quoting and brackets near that line") from None
    tables = ["build", "images", "publish", "cache"]
    for key in data:
        if key not in tables:
            raise ConfigError(f"{key}: unknown top-level table",
                              hint=f"{_close_match(key, tables)}images.toml holds [build], "
                              "[publish], [cache] and [images.<name>] tables")
    b = _section("build", data.get("build", {}), BUILD_SETTINGS, base)
    images_table = data.get("images", {})
    if not isinstance(images_table, dict) or not images_table:
        raise ConfigError("images: no image declared",
                          hint="declare one as [images.<name>] with source = \"debian\"")
    images = {name: _image(name, t, base) for name, t in images_table.items()}
    default = b["default_images"] or tuple(images)
    for name in default:
        if name not in images:
            raise ConfigError(f"build.default_images: no image named {name!r}",
                              hint=f"known images: {', '.join(images)}")
    if b["vm_timeout"] < 1:
        raise ConfigError(f"build.vm_timeout: {b['vm_timeout']} is not a positive number of "
                          "seconds", hint="the default is 900; a slow machine may need more")
    build = BuildOptions(
        default_images=tuple(default),
        accel=Accel(b["accel"]),
        vm_timeout=b["vm_timeout"],
        vm_memory=b["vm_memory"],
        kernel=b["kernel"],
        artifacts=b["artifacts"],
    )
    publish = _publish(data.get("publish", {}), base, build, list(images))
    _check_locations(build.artifacts, publish.dir, images)
    return Config(path=path, build=build, images=images, publish=publish,
                  cache=_cache(data.get("cache", {}), base))


# oci://host[:port]/repo: a registry host (a name or an IPv4 address, optional port) and an
# OCI repository name (lowercase path components, distribution-spec's grammar)
_REMOTE_RE = re.compile(
    r"oci://(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]{1,5})?)"
    r"/(?P<repo>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)")


def _cache(table: Any, base: Path) -> CacheOptions:
    c = _section("cache", table, CACHE_SETTINGS, base)
    remote = c["remote"]
    if "@" in remote:
        raise ConfigError("cache.remote: holds credentials (user@ or user:password@)",
                          hint="remove them: log in with `docker login HOST` or set "
                          "PIPELINE_REGISTRY_USER and PIPELINE_REGISTRY_PASSWORD")
    if remote and _REMOTE_RE.fullmatch(remote) is None:
        raise ConfigError(f"cache.remote: {remote!r} is not oci://HOST[:PORT]/REPO",
                          hint="e.g. oci://ghcr.io/me/guest-cache (the repository in lowercase; "
                          "no credentials, no tag: each entry's tag is its key)")
    if c["required"] and not remote:
        raise ConfigError("cache.required: true without a cache.remote",
                          hint="set cache.remote = \"oci://HOST/REPO\", or remove required")
    return CacheOptions(remote, c["pull"], c["push"], c["required"])


def remote_parts(remote: str) -> tuple[str, str]:
    """(host[:port], repository) of a validated cache.remote."""
    m = _REMOTE_RE.fullmatch(remote)
    assert m is not None, remote
    return m.group("host"), m.group("repo")


def _check_locations(artifacts: Path, publish_dir: Path, images: dict[str, Image]) -> None:
    """No directory inside another one that would sweep or swallow it: the pipeline removes
    what it made under the artifacts directory, copies the dotfiles into the image, and lists
    the whole publish tree in its SHA256SUMS."""
    a, p = artifacts.resolve(), publish_dir.resolve()
    if a in (Path("/"), Path.home().resolve()):
        raise ConfigError(f"build.artifacts: {artifacts} is {'/' if a == Path('/') else '$HOME'}",
                          hint="give the artifacts a directory of their own, such as "
                          "~/cros-artifacts (it is created, and only what the pipeline made "
                          "there is ever removed)")
    for image in images.values():
        d = image.dotfiles.resolve() if image.dotfiles is not None else None
        if d is not None and a.is_relative_to(d):
            raise ConfigError(f"build.artifacts: {artifacts} is inside the dotfiles of "
                              f"images.{image.name} ({image.dotfiles})",
                              hint="every build would copy the store into the image: put the "
                              "artifacts outside the dotfiles")
        if d is not None and p.is_relative_to(d):
            raise ConfigError(f"publish.dir: {publish_dir} is inside the dotfiles of "
                              f"images.{image.name} ({image.dotfiles})",
                              hint="every build would copy the published tree into the image: "
                              "publish outside the dotfiles")
    if a.is_relative_to(p):
        raise ConfigError(f"publish.dir: {publish_dir} holds the artifacts directory "
                          f"{artifacts}", hint="the published tree would list the store: "
                          "publish beside the artifacts, or leave publish.dir unset "
                          f"(<artifacts>/{PUBLISH})")
    if p.is_relative_to(a):
        top = p.relative_to(a).parts[0]
        if top in (STORE, TMP, LOGS, CACHE) or top in images:
            raise ConfigError(f"publish.dir: {publish_dir} is inside {artifacts / top}, which "
                              "the pipeline manages (a store, work files or an image's outputs)",
                              hint="point publish.dir at a directory of its own, or leave it "
                              f"unset (<artifacts>/{PUBLISH})")


def _publish(table: Any, base: Path, build: BuildOptions, known: list[str]) -> PublishOptions:
    p = _section("publish", table, PUBLISH_SETTINGS, base)
    if p["keep"] < 2:
        raise ConfigError(f"publish.keep: {p['keep']} is too few",
                          hint="keep at least 2 versions, so a remote always has a previous one")
    names = p["images"] if p["images"] is not None else build.default_images
    for name in names:
        if name not in known:
            raise ConfigError(f"publish.images: no image named {name!r}",
                              hint=f"known images: {', '.join(known)}")
    return PublishOptions(dir=p["dir"] or build.artifacts / PUBLISH, keep=p["keep"],
                          images=tuple(names), base_url=p["base_url"].rstrip("/"))


SOURCE_DATE_EPOCH_MAX = 8**11 - 1  # 11 octal digits: a tar header's mtime field


def source_date_epoch(env: Mapping[str, str] = os.environ) -> int | None:
    """SOURCE_DATE_EPOCH from the environment, if set: every mtime is clamped to it."""
    value = env.get("SOURCE_DATE_EPOCH", "")
    if not value:
        return None
    hint = "set it to a unix time such as $(git log -1 --format=%ct)"
    if re.fullmatch(r"[0-9]+", value) is None:
        raise ConfigError(f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds", hint=hint)
    if int(value) > SOURCE_DATE_EPOCH_MAX:
        raise ConfigError(f"SOURCE_DATE_EPOCH={value} is after {SOURCE_DATE_EPOCH_MAX} "
                          "(2242-03-16), the last time a tar header holds", hint=hint)
    return int(value)


def load(path: Path) -> Config:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found",
                          hint="run doit from the project root, or create images.toml") from None
    try:
        text = data.decode("utf-8")  # TOML is UTF-8, whatever the locale says
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 (byte {exc.start})",
                          hint="TOML files are UTF-8: save images.toml as UTF-8") from None
    return parse(text, path)


def reference() -> str:
    """The config reference as Markdown (kept in the README, checked by a test)."""
    lines: list[str] = []
    for section, settings in SECTIONS.items():
        lines.append(f"`[{section}]`\n")
        lines.append("| key | type | default | meaning |")
        lines.append("|---|---|---|---|")
        for s in settings:
            default = "required" if s.default is None and s.key in ("source", "path") else (
                "—" if s.default is None else repr(s.default).replace("'", '"'))
            kind = ("one of " + ", ".join(f"`{c}`" for c in s.kind[5:].split(","))
                    if s.kind.startswith("enum:") else s.kind.replace("-or-", " or "))
            lines.append(f"| `{s.key}` | {kind} | {default} | {s.help} |")
        lines.append("")
    return "\n".join(lines)

