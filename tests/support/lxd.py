"""A real, private LXD daemon for tests: the `lxd` session fixture.

Test files use it with ``from tests.lxd import lxd  # noqa: F401``.

The daemon runs with its own state directory (LXD_DIR) and client config (LXD_CONF) under a
fresh temporary directory, so it never touches a system LXD. It gets a `dir` storage pool and a
default profile with a root disk and *no* network device: tests need no network, no bridge is
made, and a container without a NIC sends nothing. The daemon's own outgoing HTTP(S) (it fetches
an "instance types" list at start) is pointed at a proxy on 127.0.0.1 that refuses the connection,
so it never resolves or contacts an outside host.

It skips only where LXD cannot run: the binary is missing, we are not root, or the daemon does
not become ready (the skip reason then carries the daemon log's tail). Set
PIPELINE_REQUIRE_LXD=1 to turn those skips into failures (for CI, where LXD must run).

At session end it deletes every container and image, stops the daemon (`lxd shutdown`, then
SIGKILL if it lingers), unmounts whatever is still mounted under its state directory (deepest
first, lazily if needed) and removes the temporary directory.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

__all__ = ["LXD", "LXDError", "lxd"]

# The daemon's default-profile and storage: a dir pool and a root disk, no NIC, and no image
# auto-update (it would reach for remotes).
PRESEED = """\
config:
  images.auto_update_interval: "0"
storage_pools:
- name: default
  driver: dir
profiles:
- name: default
  description: tests/support/lxd.py fixture profile (no network)
  devices:
    root:
      path: /
      pool: default
      type: disk
"""

# A loopback port nothing listens on: LXD's HTTP(S) requests are refused locally.
DEAD_PROXY = "http://127.0.0.1:9"

READY_TIMEOUT = 60  # `lxd waitready --timeout`
LAUNCH_READY_TIMEOUT = 60.0  # how long launch() retries `lxc exec NAME -- true`
SHUTDOWN_TIMEOUT = 30  # `lxd shutdown --timeout`
MAX_SOCKET_PATH = 100  # sun_path is 108 bytes incl. the NUL; keep a margin

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

FINGERPRINT_RE = re.compile(r"fingerprint:\s*([0-9a-f]{64})", re.IGNORECASE)


class LXDError(AssertionError):
    """An `lxc`/`lxd` command failed; the message carries its output."""


def _must_skip(reason: str) -> None:
    if os.environ.get("PIPELINE_REQUIRE_LXD", "") not in ("", "0"):
        pytest.fail(f"LXD required (PIPELINE_REQUIRE_LXD) but unusable: {reason}", pytrace=False)
    pytest.skip(reason)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"(no log: {e})"
    return "\n".join(text.splitlines()[-lines:]) or "(log empty)"


def _describe(cmd: list[str], r: subprocess.CompletedProcess[str]) -> str:
    return (f"`{' '.join(cmd)}` exited {r.returncode}\n"
            f"--- stdout ---\n{r.stdout.rstrip()}\n--- stderr ---\n{r.stderr.rstrip()}")


def _unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root` (per /proc/self/mountinfo), deepest first."""
    prefix = str(root).rstrip("/")
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split(" ")
        if len(fields) < 5:
            continue
        mnt = _unescape_mountinfo(fields[4])
        if mnt == prefix or mnt.startswith(prefix + "/"):
            found.append(mnt)
    # deepest first; a path mounted twice appears twice and is unmounted twice
    return sorted(found, key=lambda p: (p.count("/"), p), reverse=True)


def _pids_referring_to(root: Path) -> list[int]:
    """Processes whose command line names our state dir (lxd forkstart, lxc monitor...)."""
    needle = str(root).encode()
    me = os.getpid()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            pids.append(int(entry.name))
    return pids


def _children(ppid: int) -> list[int]:
    """Live (non-zombie) children of `ppid`."""
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and fields[1] == str(ppid) and fields[0] != "Z":
            kids.append(int(entry.name))
    return kids


def _remove_empty_cgroups(names: set[str]) -> None:
    """rmdir liblxc's cgroups (lxc.payload.NAME, lxc.monitor.NAME, NAME-1...) for `names`,
    deepest first. rmdir only succeeds on a cgroup with no process and no child, so one that
    another LXD still uses is left alone."""
    for name in names:
        for prefix in ("lxc.payload.", "lxc.monitor."):
            for top in Path("/sys/fs/cgroup").glob(f"*/{prefix}{name}"):
                _rmdir_tree(top)
            for top in Path("/sys/fs/cgroup").glob(f"*/{prefix}{name}-*"):
                if top.name[len(prefix + name) + 1:].isdigit():
                    _rmdir_tree(top)


def _rmdir_tree(top: Path) -> None:
    for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)


def unmount_and_remove(root: Path) -> list[str]:
    """Unmount everything at or under `root` (deepest first, lazily if need be), then remove
    `root` unless something stays mounted. Returns the problems met."""
    problems: list[str] = []
    for _ in range(5):
        left = mounts_under(root)
        if not left:
            break
        for mnt in left:
            r = subprocess.run(["umount", mnt], capture_output=True, timeout=30, check=False)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=30,
                               check=False)
    left = mounts_under(root)
    if left:
        # never rmtree through a mount: it could reach outside our tree
        problems.append(f"still mounted, {root} kept: {left}")
    else:
        shutil.rmtree(root, ignore_errors=True)
        if root.exists():
            problems.append(f"could not remove {root}")
    return problems


def _reaper(argv: list[str]) -> int:
    """`python tests/support/lxd.py --reap PPID ROOT CMD...`: run CMD (the daemon) as a child
    subreaper.

    liblxc's container monitors double-fork away from lxd. Without a subreaper they are
    orphaned to PID 1, which on this kind of machine reaps lazily, so `[lxd] <defunct>` zombies
    outlive the session by seconds. Under this reaper the orphans come here, are reaped, and
    the reaper exits only once lxd and every orphan are gone. If the test process dies (it
    gets SIGTERM through PDEATHSIG) it has lxd stop every instance and exit (SIGPWR), kills
    what is left after a while, and unmounts and removes ROOT itself.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    ppid, root, cmd = int(argv[0]), Path(argv[1]), argv[2:]
    if os.getppid() != ppid:
        return 3  # the test process is already gone
    child = subprocess.Popen(cmd)
    abandoned = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal abandoned
        if abandoned:
            return
        abandoned = True
        if child.returncode is None:
            child.send_signal(signal.SIGPWR)  # lxd: stop every instance, then exit
        signal.alarm(60)

    def on_alarm(signum: int, frame: object) -> None:
        for pid in _children(os.getpid()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        signal.alarm(2)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGALRM, on_alarm)
    rc = None
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid == child.pid:
            rc = child.returncode = os.waitstatus_to_exitcode(status)
    signal.alarm(0)
    if abandoned:
        unmount_and_remove(root)
    return rc if rc is not None and rc >= 0 else 1


class LXD:
    """Handle on the private daemon: `env`, `lxc(...)` and image/container helpers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_dir = root / "d"
        self.conf_dir = root / "c"
        self.log_path = root / "lxd.log"
        self.stderr_path = root / "lxd.stderr"
        self.env: dict[str, str] = {"LXD_DIR": str(self.state_dir),
                                    "LXD_CONF": str(self.conf_dir)}
        self.daemon: subprocess.Popen[bytes] | None = None
        self.containers: set[str] = set()
        self._seen_containers: set[str] = set()
        self.images: set[str] = set()
        self.networks: set[str] = set()
        self.timings: dict[str, float] = {}
        self._closed = False

    # -- commands ---------------------------------------------------------------------------

    def _full_env(self, daemon: bool = False) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        if daemon:
            for k in ("NO_PROXY", "no_proxy"):
                env.pop(k, None)
            for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
                env[k] = DEAD_PROXY
        return env

    def run(self, cmd: list[str], *, timeout: float = 120, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `cmd` with our LXD_DIR/LXD_CONF, capturing output, bounded by `timeout`."""
        try:
            r = subprocess.run(cmd, env=self._full_env(), capture_output=True, text=True,
                               input=input, stdin=None if input is not None else
                               subprocess.DEVNULL, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout
            err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
            raise LXDError(f"`{' '.join(cmd)}` timed out after {timeout}s\n"
                           f"--- stdout ---\n{out or ''}\n--- stderr ---\n{err or ''}\n"
                           f"--- daemon log tail ---\n{_tail(self.log_path)}") from None
        if check and r.returncode != 0:
            raise LXDError(_describe(cmd, r))
        return r

    def lxc(self, *args: str, timeout: float = 120, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """`lxc ARGS...` against this daemon; AssertionError (LXDError) on failure if check."""
        return self.run(["lxc", *args], timeout=timeout, check=check, input=input)

    # -- images -----------------------------------------------------------------------------

    def _fingerprint(self, r: subprocess.CompletedProcess[str], alias: str) -> str:
        m = FINGERPRINT_RE.search(r.stdout + "\n" + r.stderr)
        if m:
            return m.group(1).lower()
        for img in json.loads(self.lxc("image", "list", "--format", "json").stdout):
            if any(a.get("name") == alias for a in img.get("aliases") or []):
                return str(img["fingerprint"])
        raise LXDError(f"imported {alias!r} but found no fingerprint\n{r.stdout}\n{r.stderr}")

    def _import(self, files: list[str], alias: str, timeout: float) -> str:
        t0 = time.monotonic()
        r = self.lxc("image", "import", *files, "--alias", alias, timeout=timeout)
        self.timings[f"import {alias}"] = time.monotonic() - t0
        fp = self._fingerprint(r, alias)
        self.images.add(fp)
        return fp

    def import_split(self, metadata: os.PathLike[str] | str, rootfs: os.PathLike[str] | str,
                     alias: str, *, timeout: float = 300) -> str:
        """`lxc image import METADATA ROOTFS --alias ALIAS`; returns the fingerprint."""
        return self._import([os.fspath(metadata), os.fspath(rootfs)], alias, timeout)

    def import_unified(self, tarball: os.PathLike[str] | str, alias: str, *,
                       timeout: float = 300) -> str:
        """`lxc image import TARBALL --alias ALIAS`; returns the fingerprint."""
        return self._import([os.fspath(tarball)], alias, timeout)

    def delete_image(self, fingerprint_or_alias: str) -> None:
        self.lxc("image", "delete", fingerprint_or_alias, timeout=60)
        self.images.discard(fingerprint_or_alias)

    # -- containers -------------------------------------------------------------------------

    def launch(self, alias: str, name: str, *, timeout: float = 180,
               ready_timeout: float = LAUNCH_READY_TIMEOUT) -> None:
        """Launch NAME from image ALIAS and wait until `lxc exec NAME -- true` works."""
        self.containers.add(name)
        t0 = time.monotonic()
        try:
            self.lxc("launch", alias, name, timeout=timeout)
        except LXDError as e:
            info = self.lxc("info", name, "--show-log", timeout=30, check=False)
            raise LXDError(f"{e}\n--- lxc info {name} --show-log ---\n{info.stdout}"
                           f"{info.stderr}") from None
        self.timings[f"launch {name}"] = time.monotonic() - t0
        deadline = time.monotonic() + ready_timeout
        last: subprocess.CompletedProcess[str] | None = None
        while True:
            with contextlib.suppress(LXDError):  # a hung exec counts as "not yet"
                last = self.lxc("exec", name, "--", "true", timeout=30, check=False)
                if last.returncode == 0:
                    break
            if time.monotonic() > deadline:
                info = self.lxc("info", name, "--show-log", timeout=30, check=False)
                detail = _describe(["lxc", "exec", name, "--", "true"], last) if last else ""
                raise LXDError(f"{name}: `lxc exec -- true` never worked in {ready_timeout}s\n"
                               f"{detail}\n--- lxc info --show-log ---\n{info.stdout}"
                               f"{info.stderr}")
            time.sleep(0.25)
        self.timings[f"launch+exec-ready {name}"] = time.monotonic() - t0

    def exec(self, name: str, *cmd: str, timeout: float = 60) -> str:
        """Run CMD in container NAME (`lxc exec NAME -- CMD`); returns its stdout."""
        return self.lxc("exec", name, "--", *cmd, timeout=timeout).stdout

    def delete(self, name: str, *, timeout: float = 120) -> None:
        """Force-delete container NAME (stops it if running).

        Retried while LXD says the instance is busy: after a failed start LXD runs a "stop"
        operation of its own, and a delete in that window is refused."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.lxc("delete", "--force", name, timeout=timeout, check=False)
            if r.returncode == 0 or "not found" in r.stderr.lower():
                break
            if "busy" not in r.stderr.lower() or time.monotonic() > deadline:
                raise LXDError(_describe(["lxc", "delete", "--force", name], r))
            time.sleep(0.5)
        self.containers.discard(name)

    def dhcp_network(self) -> str:
        """A managed bridge with LXD's own DHCP (dnsmasq), as termina's lxdbr0 gives Crostini
        containers; made once per daemon, named and numbered by this process so that two test
        runs on one host do not collide; no NAT, no IPv6, no firewall rules (nothing leaves
        the host, and the host's tables are left alone; LXD still wants iptables to check
        them)."""
        name = f"cgp{os.getpid() % 100000}"
        if name not in self.networks:
            subnet = f"10.234.{os.getpid() % 250}.1/24"
            self.lxc("network", "create", name, f"ipv4.address={subnet}", "ipv4.nat=false",
                     "ipv6.address=none", "ipv4.dhcp=true", "ipv4.firewall=false")
            self.networks.add(name)
        return name

    def delete_network(self, name: str) -> None:
        self.lxc("network", "delete", name)
        self.networks.discard(name)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self.state_dir.mkdir()
        self.conf_dir.mkdir(mode=0o700)
        # containers run as mapped uids: let them traverse to their rootfs
        os.chmod(self.root, 0o711)
        os.chmod(self.state_dir, 0o711)
        # The daemon logs to --logfile *and* stderr: keep its stderr apart (it alone holds
        # errors from before the log is opened) so the log is not doubled.
        with open(self.stderr_path, "ab") as err:
            t0 = time.monotonic()
            self.daemon = subprocess.Popen(
                [sys.executable, __file__, "--reap", str(os.getpid()), str(self.root),
                 "lxd", "--group", "root", "--logfile", str(self.log_path)],
                env=self._full_env(daemon=True), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        # `lxd waitready` would sit out its whole timeout if the daemon died: watch both.
        waiter = subprocess.Popen(["lxd", "waitready", f"--timeout={READY_TIMEOUT}"],
                                  env=self._full_env(), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT + 15
        while waiter.poll() is None:
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                waiter.kill()
                break
            time.sleep(0.05)
        out = waiter.communicate(timeout=10)[0].decode(errors="replace")
        self.timings["daemon start-to-ready"] = time.monotonic() - t0
        if waiter.returncode != 0:
            died = self.daemon.poll()
            state = f"daemon exited {died}" if died is not None else "daemon still not ready"
            _must_skip(f"LXD daemon did not become ready ({state}; waitready: {out.strip()})\n"
                       f"--- {self.log_path.name} tail ---\n{_tail(self.log_path)}\n"
                       f"--- daemon stderr tail ---\n{_tail(self.stderr_path, 10)}")
        t1 = time.monotonic()
        r = self.run(["lxd", "init", "--preseed"], input=PRESEED, timeout=120, check=False)
        if r.returncode != 0:
            raise LXDError(_describe(["lxd", "init", "--preseed"], r)
                           + f"\n--- daemon log tail ---\n{_tail(self.log_path)}")
        self.timings["preseed"] = time.monotonic() - t1

    def _kill_reaped(self) -> list[int]:
        """SIGKILL whatever runs under the reaper, round after round (a killed monitor's
        container init is orphaned to the reaper in turn), until the reaper exits."""
        assert self.daemon is not None
        killed: list[int] = []
        deadline = time.monotonic() + 20
        while self.daemon.poll() is None and time.monotonic() < deadline:
            for pid in _children(self.daemon.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.daemon.wait(timeout=0.5)
        if self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait(timeout=10)
        return killed

    def close(self) -> list[str]:
        """Tear everything down; returns a list of problems (empty when clean). Idempotent."""
        if self._closed:
            return []
        self._closed = True
        problems: list[str] = []

        def attempt(what: str, fn: Callable[[str], None], arg: str) -> None:
            try:
                fn(arg)
            except Exception as e:  # teardown must go on
                problems.append(f"{what}: {e}")

        alive = self.daemon is not None and self.daemon.poll() is None
        if alive:
            # everything in this private daemon is ours: list it rather than trust the sets
            names = set(self.containers)
            with contextlib.suppress(Exception):
                r = self.lxc("list", "--format", "json", timeout=60)
                names |= {c["name"] for c in json.loads(r.stdout)}
            self._seen_containers |= names
            for name in sorted(names):
                attempt(f"delete container {name}", self.delete, name)
            fps = set(self.images)
            with contextlib.suppress(Exception):
                r = self.lxc("image", "list", "--format", "json", timeout=60)
                fps |= {i["fingerprint"] for i in json.loads(r.stdout)}
            for fp in sorted(fps):
                attempt(f"delete image {fp[:12]}", self.delete_image, fp)
            for net in sorted(self.networks):
                attempt(f"delete network {net}", self.delete_network, net)

        if self.daemon is not None:
            if alive:
                with contextlib.suppress(Exception):
                    self.run(["lxd", "shutdown", f"--timeout={SHUTDOWN_TIMEOUT}"],
                             timeout=SHUTDOWN_TIMEOUT + 15, check=False)
            # the reaper exits once lxd and every process it orphaned are gone
            try:
                self.daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                problems.append("lxd or processes it left still running after `lxd shutdown`"
                                f": killed {self._kill_reaped()}")
                # killed monitors leave their (now empty) cgroups behind
                _remove_empty_cgroups(self.containers | self._seen_containers)
        # anything that still names our state dir escaped the reaper
        for pid in _pids_referring_to(self.state_dir):
            problems.append(f"leftover process {pid}: killed")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

        problems += unmount_and_remove(self.root)
        return problems


def _make_root() -> Path:
    """A fresh temp dir whose socket path fits sun_path (TMPDIR may be long)."""
    for base in (None, "/tmp"):
        root = Path(tempfile.mkdtemp(prefix="lxd.", dir=base))
        if len(str(root / "d" / "devlxd" / "sock")) <= MAX_SOCKET_PATH:
            return root
        root.rmdir()
    raise RuntimeError("no temp dir short enough for LXD's unix sockets")


@pytest.fixture(scope="session")
def lxd() -> Iterator[LXD]:
    """A private, ready LXD daemon (dir pool, no network); torn down at session end."""
    if shutil.which("lxd") is None or shutil.which("lxc") is None:
        _must_skip("LXD not installed (`lxd`/`lxc` not on PATH; Debian: apt-get install lxd)")
    if os.geteuid() != 0:
        _must_skip("LXD needs root to run a daemon (not root)")
    handle = LXD(_make_root())
    atexit.register(handle.close)  # if the session dies before teardown
    try:
        handle.start()
        yield handle
    finally:
        problems = handle.close()
        atexit.unregister(handle.close)
    assert not problems, "LXD teardown was not clean:\n" + "\n".join(problems)


if __name__ == "__main__" and sys.argv[1:2] == ["--reap"]:
    sys.exit(_reaper(sys.argv[2:]))
