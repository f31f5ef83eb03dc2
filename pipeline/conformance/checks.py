"""The checks a guest must pass on ChromeOS, and the report of one run.

The stand-in maitred (or, in a container, the harness) runs them inside the guest; each prints
`@@CHECK <name> PASS|FAIL <detail>`. A check that printed nothing failed too ("no verdict"):
the guest did not get that far.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..core.errors import GuestError

COMMON = (
    ("boot", "the image's own init reached its default target"),
    ("dbus", "the system D-Bus runs (logind needs it)"),
    ("logind", "systemd-logind runs (user sessions, linger)"),
    ("garcon-start", "garcon came up before the user setup, as `vmc start` waits for it"),
    ("user-session", "user@1000 is active"),
    ("garcon", "garcon runs as uid 1000 in that session"),
    ("garcon-env", "garcon's environment: XDG_RUNTIME_DIR, the session bus, WAYLAND_DISPLAY, "
                   "DISPLAY, BROWSER"),
    ("sommelier@0", "Wayland sommelier runs as uid 1000 in the session"),
    ("sommelier-x@0", "X sommelier runs as uid 1000 in the session"),
    ("sommelier-x-xauth", "sommelier-x has its X cookie"),
    ("notificationd", "notificationd is D-Bus activatable"),
    ("sftp-server", "/usr/lib/openssh/sftp-server exists (the Files app)"),
    ("shell", "the user's login shell starts in the home, with the dotfiles"),
    ("groups", "the user is in vmc's default groups"),
    ("sudo", "`sudo -n true` works for the user"),
    ("failed-units", "no failed unit, system or user"),
)
BAGUETTE = (
    ("udevd", "udevd runs (the /dev/wl* rule; in a container LXD makes the devices)"),
    ("tools-mount", "the tools disk is mounted read-only at /opt/google/cros-containers"),
    ("tools-mount-order", "the tools mount is ordered before the user's session (else the "
                          "user units' ConditionPathExists can skip them for good)"),
    ("maitred", "maitred runs as root"),
    ("vshd", "vshd runs as root"),
    ("port_listener", "port_listener runs as root"),
    ("resolv.conf", "/etc/resolv.conf leads to maitred's /run/resolv.conf"),
    ("arc-host", "/etc/hosts names arc (100.115.92.2)"),
    ("resize", "the filesystem grew to the disk"),
)
BAGUETTE_LATE = (("wl-udev-rule", "udevd gives /dev/wl* mode 0666 (sommelier)"),)
CROSTINI = (
    ("gshadow", "/etc/gshadow exists (tremplin reads it)"),
    ("network", "eth0 has an IPv4 address and /etc/resolv.conf a nameserver from LXD's DHCP "
                "(ChromeOS reaches garcon on that address)"),
    ("no-vm-units", "no VM-only unit (vshd, maitred, tools mount, resize) in the container"),
)
USER_SETUP = (("user-setup", "maitred's SetUpUser for the ChromeOS user name succeeds"),)

_LINE = re.compile(r"@@CHECK (\S+) (PASS|FAIL) ?(.*)$")


@dataclass(frozen=True)
class Verdict:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Report:
    kind: str
    verdicts: tuple[Verdict, ...]
    finished: bool  # the checks ran to their end

    @property
    def failed(self) -> list[Verdict]:
        return [v for v in self.verdicts if not v.passed]

    def lines(self) -> list[str]:
        width = max(len(v.name) for v in self.verdicts)
        return [f"{'PASS' if v.passed else 'FAIL'}  {v.name:<{width}}  {v.detail}".rstrip()
                for v in self.verdicts]

    def verdict(self, name: str) -> Verdict:
        return next(v for v in self.verdicts if v.name == name)


def expected(kind: str, setup_user: bool) -> tuple[tuple[str, str], ...]:
    """The checks of one guest kind, in the order the guest runs them."""
    vm = kind == "baguette"
    head, tail = COMMON[:3], COMMON[3:]
    late = tail[:-4] + (BAGUETTE_LATE if vm else ()) + tail[-4:]
    return head + (BAGUETTE if vm else CROSTINI) + (USER_SETUP if setup_user else ()) + late


def parse(output: str, kind: str, setup_user: bool) -> Report:
    """The report of one run from the guest's output (the verdict lines; anything else is
    ignored). Every expected check that printed nothing is a failure."""
    seen: dict[str, Verdict] = {}
    for line in output.splitlines():
        m = _LINE.search(line.strip("\r"))
        if m:
            seen[m[1]] = Verdict(m[1], m[2] == "PASS", m[3].strip())
    out = []
    for name, meaning in expected(kind, setup_user):
        v = seen.pop(name, None)
        out.append(v if v is not None else Verdict(name, False, f"no verdict ({meaning})"))
    out += seen.values()  # a check this list does not know yet still shows
    return Report(kind, tuple(out), "@@CONFORMANCE DONE" in output)


def require(report: Report, what: str, log: str) -> None:
    """Raise a GuestError naming each failed check, one line each."""
    if not report.failed:
        return
    names = ", ".join(v.name for v in report.failed)
    raise GuestError(
        f"{what}: {len(report.failed)} of {len(report.verdicts)} ChromeOS checks failed "
        f"({names}):\n  " + "\n  ".join(report.lines()) + f"\n(console log: {log})",
        hint="each FAIL line names what ChromeOS needs of the guest; the console log shows "
             "the boot", console_log=log)
