"""Source `debian`: a Debian rootfs from mmdebstrap, using the host's configured apt mirror.

The key hashes what mmdebstrap is asked for (suite, variant, architecture, packages, mirror),
not the result: the archive moves on, so rebuild on purpose (`doit forget`, or change the
package list) to pick up updates.

Besides the configured packages the rootfs always gets systemd-sysv (minbase has no
/sbin/init) and, for ChromeOS integration, what ChromeOS's guest tools need of the guest
(GUEST_PACKAGES). The guest's own apt sources are written in Debian 12's deb822 form for the
suite, its -updates and its -security archives, pointing at the configured mirror (or
deb.debian.org), never at the mirror this machine happens to use.

Another architecture than the host's (`arch = "aarch64"` on x86_64) is mmdebstrap's
`--architectures=arm64`: its maintainer scripts run under qemu-user through binfmt_misc
(core/binfmt.py), which is checked first so that a host without it is told so in one line.
"""

from __future__ import annotations

import glob
import re
import shlex
from pathlib import Path

from ..config import Image
from ..core import binfmt
from ..core.arch import arch, host_arch
from ..core.errors import PipelineError
from ..core.log import showing_progress
from ..core.run import run
from ..store.hashing import FileHashMemo
from ..store.keys import StageInputs

VERSION = 2  # 2: ChromeOS guest packages; deb822 sources with -updates and -security
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
ALWAYS = ("systemd-sysv",)  # minbase has no /sbin/init
# What ChromeOS's guest tools need of the guest (the cros-garcon and cros-sommelier packages'
# dependencies, and the session garcon and sommelier run in as user services of uid 1000):
GUEST_PACKAGES = (
    "dbus",  # the system bus: without it systemd-logind is skipped, so no user session
    "dbus-user-session",  # the session bus garcon owns names on
    "libpam-systemd",  # logind sessions, user@UID, linger
    "udev",  # applies the /dev/wl* rule sommelier needs
    "openssh-sftp-server",  # garcon runs /usr/lib/openssh/sftp-server for the Files app
    "xdg-utils",  # xdg-open honours BROWSER (garcon's URL handler)
    "xauth", "xxd",  # sommelier-x's X cookie
    # the container's address and DNS from LXD's DHCP (eth0, as ChromeOS's own container image
    # does it); in the VM maitred configures eth0 and these stay idle
    "ifupdown", "isc-dhcp-client",
)
ROLLING = ("sid", "unstable", "experimental")  # suites without -updates and -security


def host_mirror(suite: str, apt_dir: Path = Path("/etc/apt")) -> str:
    """The first `deb` URI the host's apt sources use for `suite` (one-line or deb822)."""
    listed = sorted(map(Path, glob.glob(f"{apt_dir}/sources.list.d/*.list")))
    one_line = [apt_dir / "sources.list", *listed]
    for path in one_line:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                return words[1].rstrip("/")
    for path in sorted(map(Path, glob.glob(f"{apt_dir}/sources.list.d/*.sources"))):
        try:
            text = path.read_text()
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[0].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if ("deb" in fields.get("types", "").split()
                    and suite in fields.get("suites", "").split()
                    and fields.get("enabled", "yes").lower() != "no"
                    and fields.get("uris")):
                return fields["uris"].split()[0].rstrip("/")
    return DEFAULT_MIRROR


def packages(image: Image) -> list[str]:
    assert image.debian is not None
    guest = GUEST_PACKAGES if image.chromeos_integration else ()
    return sorted(set(ALWAYS) | set(guest) | set(image.debian.packages))


def guest_sources(image: Image) -> str:
    """/etc/apt/sources.list.d/debian.sources for the guest (deb822)."""
    d = image.debian
    assert d is not None
    uri = d.mirror.rstrip("/") or DEFAULT_MIRROR
    if d.suite in ROLLING:
        return f"Types: deb\nURIs: {uri}\nSuites: {d.suite}\nComponents: main\n"
    return (f"Types: deb\nURIs: {uri}\nSuites: {d.suite} {d.suite}-updates\n"
            "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
            f"Types: deb\nURIs: {SECURITY_MIRROR}\nSuites: {d.suite}-security\n"
            "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")


def mirror(image: Image) -> str:
    assert image.debian is not None
    return image.debian.mirror.rstrip("/") or host_mirror(image.debian.suite)


def inputs(image: Image, memo: FileHashMemo) -> StageInputs:
    d = image.debian
    assert d is not None
    return StageInputs("base", VERSION, {
        "source": "debian",
        "suite": d.suite,
        "variant": d.variant,
        "arch": image.arch,
        "packages": packages(image),
        "mirror": mirror(image),
        "guest_sources": guest_sources(image),
    })


def make_base(image: Image, out: Path, si: StageInputs | None = None) -> None:
    """mmdebstrap straight into a plain tar at `out` (written beside it, then renamed)."""
    d = image.debian
    assert d is not None
    require_foreign(image)
    tmp = out.with_name(f".{out.name}.partial.tar")
    try:
        run([
            # its phases (I: lines) are the status line on a terminal; quiet otherwise
            "mmdebstrap", *([] if showing_progress() else ["--quiet"]),
            f"--variant={d.variant}",
            f"--architectures={arch(image.arch).deb}",
            f"--include={','.join(packages(image))}",
            # the guest's own sources, not the build mirror's
            "--customize-hook=rm -f \"$1/etc/apt/sources.list\"",
            "--customize-hook=printf '%s' " + shlex.quote(guest_sources(image))
            + " > \"$1/etc/apt/sources.list.d/debian.sources\"",
            d.suite, tmp,
            f"deb {mirror(image)} {d.suite} main",
        ], hint=f"mmdebstrap could not build {d.suite}; check the mirror "
                f"({mirror(image)}) and the package names in images.{image.name}.debian",
            progress="mmdebstrap")
        tmp.rename(out)
    finally:
        tmp.unlink(missing_ok=True)


def require_foreign(image: Image) -> None:
    """An image for another architecture needs qemu-user through binfmt_misc on this host."""
    a = arch(image.arch)
    why = binfmt.problem(a)
    if why is None:
        return
    host = host_arch()
    raise PipelineError(
        f"images.{image.name}: arch = {a.name!r} on this {host.name if host else ''} host "
        f"runs the rootfs's maintainer scripts under qemu-user, but {why}",
        hint="run `sudo python3 -m pipeline.hostsetup` (it installs qemu-user-static and "
             "binfmt-support and registers the handler); an unprivileged container cannot: "
             f"register it on its host, or build on an {a.name} machine")
