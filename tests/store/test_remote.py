"""The remote store (pipeline/store/remote.py, oci.py) against a real registry
(tests/support/registry.py): round trips, what a pulled entry must match before it enters
the store, the registry's failures as one line each, and pushers and pullers at once."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import config
from pipeline.config import CacheOptions
from pipeline.core.errors import ConfigError, PipelineError
from pipeline.store import oci
from pipeline.store.entries import Store, problems
from pipeline.store.keys import StageInputs
from pipeline.store.layout import FILES_FILE, Layout
from pipeline.store.remote import FILE_TYPE, SPARSE_TYPE, ZSTD_TYPE, Remote
from tests.support.https import self_signed
from tests.support.registry import USER, Registry, docker_config, free_port


def _remote(registry: Registry, repo: str, password: str | None = None,
            **options: bool) -> Remote:
    env = registry.env() if password is None else registry.env(password)
    opts = {"pull": True, "push": True, "required": False, **options}
    return Remote(CacheOptions(f"oci://{registry.host}/{repo}", **opts), env=env)


def _entry(store: Store, si: StageInputs, payload: bytes) -> Path:
    """An entry with a small file, one in a subdirectory, a 2 MiB tarball (sent as zstd)
    and a sparse 64 MiB image."""
    with store.new_entry(si) as tmp:
        (tmp / "small.txt").write_bytes(payload)
        (tmp / "big.tar").write_bytes(payload * ((2 << 20) // len(payload) + 1))
        (tmp / "sub").mkdir()
        (tmp / "sub" / "data.bin").write_bytes(os.urandom(200_000))
        with open(tmp / "disk.img", "wb") as f:
            f.truncate(64 << 20)
            f.seek(8 << 20)
            f.write(payload * 100)
    return store.path(si)


@pytest.fixture
def stores(tmp_path: Path) -> tuple[Store, Store, Path]:
    (tmp_path / "work").mkdir()
    return Store(Layout(tmp_path / "a")), Store(Layout(tmp_path / "b")), tmp_path / "work"


def _pull(remote: Remote, store: Store, si: StageInputs, work: Path) -> bool:
    with store.lock(si):
        return remote.pull(store, si, work)


def _files(entry: Path) -> dict[str, bytes]:
    return {p.relative_to(entry).as_posix(): p.read_bytes()
            for p in sorted(entry.rglob("*")) if p.is_file()}


def test_round_trip_is_byte_equal_and_keeps_holes(
        registry: Registry, stores: tuple[Store, Store, Path]) -> None:
    a, b, work = stores
    si = StageInputs("rootfs", 1, {"test": "round trip"})
    entry = _entry(a, si, b"hello\n")
    remote = _remote(registry, "unit/round-trip")
    remote.push(a, si, "tiny", work)
    assert _pull(remote, b, si, work)
    pulled = b.path(si)
    assert _files(pulled) == _files(entry)  # inputs.json and files.sha256 included
    assert problems(pulled, full=True) == []
    assert (pulled / "disk.img").stat().st_blocks * 512 <= 1 << 20, "holes came back as holes"
    assert not list(b.path(si).parent.glob(".*.tmp"))
    other = StageInputs("rootfs", 1, {"test": "never pushed"})
    assert not _pull(remote, b, other, work) and not b.has(other)


def test_the_manifest_is_annotated_and_tagged_with_the_key(
        registry: Registry, stores: tuple[Store, Store, Path]) -> None:
    a, _b, work = stores
    si = StageInputs("pack", 3, {"test": "annotations"})
    _entry(a, si, b"annotated\n")
    _remote(registry, "unit/annotations").push(a, si, "tiny", work)
    manifest = json.loads(registry.manifest_file("unit/annotations", si.key).read_text())
    ann = manifest["annotations"]
    assert (ann["dev.cros-guest-pipeline.stage"], ann["dev.cros-guest-pipeline.key"],
            ann["dev.cros-guest-pipeline.version"], ann["dev.cros-guest-pipeline.image"]) \
        == ("pack", si.key, "3", "tiny")
    recorded = (a.path(si) / FILES_FILE).read_text().splitlines()
    titles = {x["annotations"]["org.opencontainers.image.title"]:
              x["annotations"]["dev.cros-guest-pipeline.file.digest"] for x in manifest["layers"]}
    assert titles == {line.split("  ")[2]: line.split("  ")[0] for line in recorded}
    assert titles["disk.img"].startswith("sparse-sha256:")
    media = {x["annotations"]["org.opencontainers.image.title"]: x["mediaType"]
             for x in manifest["layers"]}
    assert media == {"small.txt": FILE_TYPE, "sub/data.bin": FILE_TYPE, "big.tar": ZSTD_TYPE,
                     "disk.img": SPARSE_TYPE}
    config_blob = registry.blob_file(manifest["config"]["digest"]).read_bytes()
    assert json.loads(config_blob)["inputs"] == si.inputs


@pytest.mark.parametrize(("damage", "name"), [("flip", "small.txt"), ("truncate", "small.txt"),
                                            ("flip", "big.tar"), ("flip", "disk.img")])
def test_a_damaged_blob_never_becomes_an_entry(
        registry: Registry, stores: tuple[Store, Store, Path], damage: str, name: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    a, b, work = stores
    si = StageInputs("rootfs", 1, {"test": f"damaged {damage} {name}"})
    payload = os.urandom(4000)  # its own blob: nothing else in the registry shares it
    _entry(a, si, payload)
    _remote(registry, f"unit/damaged-{damage}").push(a, si, "tiny", work)
    manifest = json.loads(registry.manifest_file(f"unit/damaged-{damage}", si.key).read_text())
    (layer,) = [x for x in manifest["layers"]
                if x["annotations"]["org.opencontainers.image.title"] == name]
    blob = registry.blob_file(layer["digest"])
    data = blob.read_bytes()
    blob.write_bytes(data[:-1] + bytes([data[-1] ^ 1]) if damage == "flip" else data[:1000])

    assert not _pull(_remote(registry, f"unit/damaged-{damage}"), b, si, work)
    err = capsys.readouterr().err
    (warning,) = [line for line in err.splitlines() if "warning:" in line]
    assert layer["digest"] in warning and name in warning
    assert "the build goes on locally" in warning
    assert not b.has(si) and not list(b.path(si).parent.glob(".*"))
    with pytest.raises(PipelineError, match=layer["digest"]):
        _pull(_remote(registry, f"unit/damaged-{damage}", required=True), b, si, work)
    assert not b.has(si)


@pytest.mark.parametrize(("name", "wrong"), [("disk.img", "sparse-sha256:" + "0" * 64),
                                             ("small.txt", "0" * 64)])
def test_files_other_than_recorded_are_refused(
        registry: Registry, stores: tuple[Store, Store, Path], name: str, wrong: str) -> None:
    """A manifest whose blobs are intact but whose recorded digest differs (a registry that
    mixed up two entries): the decompressed / written files are checked against it."""
    a, b, work = stores
    si = StageInputs("rootfs", 1, {"test": f"wrong record {name}"})
    _entry(a, si, b"recorded\n")
    remote = _remote(registry, "unit/wrong-record")
    remote.push(a, si, "tiny", work)
    client = remote.client()
    manifest = client.manifest(si.key)
    assert manifest is not None
    for layer in manifest["layers"]:
        if layer["annotations"]["org.opencontainers.image.title"] == name:
            layer["annotations"]["dev.cros-guest-pipeline.file.digest"] = wrong
    client.put_manifest(si.key, manifest)
    with pytest.raises(PipelineError, match=f"{name} has sha256 \\S+, "
                       f"{wrong} recorded"):
        _pull(_remote(registry, "unit/wrong-record", required=True), b, si, work)
    assert not b.has(si) and not list(b.path(si).parent.glob(".*"))


@pytest.mark.parametrize("title", ["../../escaped.txt", "/etc/escaped.txt", "inputs.json",
                                   "files.sha256", ""])
def test_a_manifest_naming_a_file_outside_the_entry_is_refused(
        registry: Registry, stores: tuple[Store, Store, Path], title: str) -> None:
    a, b, work = stores
    si = StageInputs("rootfs", 1, {"test": f"title {title}"})
    _entry(a, si, b"titled\n")
    remote = _remote(registry, "unit/titles")
    remote.push(a, si, "tiny", work)
    manifest = remote.client().manifest(si.key)
    assert manifest is not None
    manifest["layers"][0]["annotations"]["org.opencontainers.image.title"] = title
    remote.client().put_manifest(si.key, manifest)
    with pytest.raises(PipelineError, match="lists a file it may not hold"):
        _pull(_remote(registry, "unit/titles", required=True), b, si, work)
    assert not b.has(si) and not (b.layout.root / "escaped.txt").exists()
    assert not list(b.layout.root.rglob("escaped.txt"))


def test_inputs_of_another_key_are_refused(
        registry: Registry, stores: tuple[Store, Store, Path]) -> None:
    a, b, work = stores
    si, other = (StageInputs("rootfs", 1, {"test": f"key {n}"}) for n in (1, 2))
    _entry(a, si, b"one\n")
    remote = _remote(registry, "unit/other-key")
    remote.push(a, si, "tiny", work)
    manifest = remote.client().manifest(si.key)
    assert manifest is not None
    manifest["annotations"]["dev.cros-guest-pipeline.key"] = other.key
    remote.client().put_manifest(other.key, manifest)  # other's tag, si's inputs
    with pytest.raises(PipelineError, match=f"holds the inputs of another key \\({si.key}\\)"):
        _pull(_remote(registry, "unit/other-key", required=True), b, other, work)


def test_registry_failures_are_one_line_each(
        registry: Registry, stores: tuple[Store, Store, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    _a, b, work = stores
    si = StageInputs("rootfs", 1, {"test": "failures"})
    cases = {
        "bad password": (_remote(registry, "unit/x", password="wrong"),
                         "refused the credentials from PIPELINE_REGISTRY_USER/PASSWORD (401"),
        "no credentials": (Remote(CacheOptions(f"oci://{registry.host}/unit/x", True, True,
                                               False),
                                  env={"REQUESTS_CA_BUNDLE": str(registry.ca),
                                       "DOCKER_CONFIG": str(work / "none")}),
                           "wants credentials (401"),
        "down": (Remote(CacheOptions(f"oci://127.0.0.1:{free_port()}/unit/x", True, True, False),
                        env=registry.env()), "cannot be reached (Connection refused)"),
        "untrusted": (Remote(CacheOptions(f"oci://{registry.host}/unit/x", True, True, False),
                             env={"PIPELINE_REGISTRY_USER": USER}), "TLS failed"),
        "no repository": (_remote(registry, "unit/never-pushed-here", push=False),
                          "the repository does not exist"),
    }
    for name, (remote, expected) in cases.items():
        assert not _pull(remote, b, si, work), name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (name, err)
        assert "the build goes on locally (hint: " in err[0], name
        assert not _pull(remote, b, si, work), name  # the remote is left alone now
        assert capsys.readouterr().err == "", name
    required = _remote(registry, "unit/x", password="wrong", required=True)
    with pytest.raises(PipelineError, match="remote cache \\(pull\\): .*401"):
        _pull(required, b, si, work)


class _Refusing(http.server.BaseHTTPRequestHandler):
    status = 429

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(self.status)
        self.send_header("Retry-After", "30")
        body = json.dumps({"errors": [{"code": "TOOMANYREQUESTS" if self.status == 429
                                       else "DENIED", "message": "no"}]}).encode()
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET  # noqa: N815

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def _refusing(work: Path, status: int) -> Iterator[tuple[str, Path]]:
    """An HTTPS server on 127.0.0.1 answering every request with `status` (what GHCR or
    Docker Hub answer past a rate limit, or to a token without the scope)."""
    cert, key = self_signed(work)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    handler = type("H", (_Refusing,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", cert
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize(("status", "expected"), [
    (429, "rate limited by the registry (429 while reading the manifest"),
    (403, "access denied (403 while reading the manifest")])
def test_rate_limit_and_forbidden(stores: tuple[Store, Store, Path], status: int,
                                  expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    _a, b, work = stores
    si = StageInputs("rootfs", 1, {"test": "refused"})
    with _refusing(work, status) as (host, cert):
        remote = Remote(CacheOptions(f"oci://{host}/unit/x", True, True, False),
                        env={"REQUESTS_CA_BUNDLE": str(cert)})
        assert not _pull(remote, b, si, work)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert expected in line and "the build goes on locally" in line
    if status == 429:
        assert "retry after 30 s" in line


def test_a_push_failure_keeps_the_entry_local(
        registry: Registry, stores: tuple[Store, Store, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    a, _b, work = stores
    si = StageInputs("rootfs", 1, {"test": "push refused"})
    entry = _entry(a, si, b"kept\n")
    _remote(registry, "unit/push-refused", password="wrong").push(a, si, "tiny", work)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "401" in line and "the entry stays local" in line
    assert problems(entry) == []
    with pytest.raises(PipelineError, match="remote cache \\(push\\)"):
        _remote(registry, "unit/push-refused", password="wrong", required=True).push(
            a, si, "tiny", work)


def test_two_pushers_of_one_key_and_a_puller_meanwhile(
        registry: Registry, tmp_path: Path) -> None:
    """Two machines push the same key at once while a third pulls it in a loop: both
    pushes succeed, and every pull sees either no tag or the complete entry."""
    work = tmp_path / "work"
    work.mkdir()
    si = StageInputs("rootfs", 1, {"test": "concurrent"})
    payload = os.urandom(8 << 20)
    sources = []
    for n in (1, 2):
        store = Store(Layout(tmp_path / f"a{n}"))
        with store.new_entry(si) as tmp:
            (tmp / "small.txt").write_bytes(payload)
        sources.append(store)
    errors: list[BaseException] = []
    pushing = threading.Event()
    done = threading.Event()
    outcomes: list[bool] = []

    def push(store: Store) -> None:
        try:
            pushing.set()
            _remote(registry, "unit/concurrent", required=True).push(store, si, "tiny", work)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def pull(n: int, remote: Remote) -> bool:
        b = Store(Layout(tmp_path / f"b{n}"))
        got = _pull(remote, b, si, work)
        if got:
            assert problems(b.path(si), full=True) == []
            assert (b.path(si) / "small.txt").read_bytes() == payload
        else:
            assert not b.has(si) and not list(b.path(si).parent.glob(".*"))
        return got

    def pull_loop() -> None:
        remote = _remote(registry, "unit/concurrent", required=True)
        pushing.wait()
        for n in range(200):  # bounded: it stops on its own
            try:
                outcomes.append(pull(n, remote))
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                return
            if done.is_set():
                return

    threads = [threading.Thread(target=pull_loop)] + [
        threading.Thread(target=push, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    done.set()
    threads[0].join()
    assert errors == []
    assert outcomes, "the puller ran while the pushes did"
    assert pull(999, _remote(registry, "unit/concurrent", required=True)), "pushed: found"


def test_blobs_without_a_manifest_are_a_miss(
        registry: Registry, stores: tuple[Store, Store, Path]) -> None:
    """A push killed before its manifest leaves blobs but no tag: nothing to pull."""
    a, b, work = stores
    si = StageInputs("rootfs", 1, {"test": "half pushed"})
    entry = _entry(a, si, b"half\n")
    client = _remote(registry, "unit/half-pushed").client()
    client.push_blob(entry / "small.txt", "sha256:" + hashlib.sha256(b"half\n").hexdigest(), 5)
    assert not _pull(_remote(registry, "unit/half-pushed", required=True), b, si, work)


def test_credentials_come_from_the_environment_then_the_docker_config(tmp_path: Path) -> None:
    host = "127.0.0.1:5000"
    cfg = docker_config(tmp_path / "docker", host, password="from-config")
    creds = oci.credentials(host, {"DOCKER_CONFIG": str(cfg)})
    assert creds is not None and (creds.username, creds.password) == (USER, "from-config")
    env = {"DOCKER_CONFIG": str(cfg), "PIPELINE_REGISTRY_USER": "u",
           "PIPELINE_REGISTRY_PASSWORD": "p"}
    assert oci.credentials(host, env) == oci.Credentials("u", "p",
                                                         "PIPELINE_REGISTRY_USER/PASSWORD")
    assert oci.credentials("other:5000", {"DOCKER_CONFIG": str(cfg)}) is None
    (cfg / "config.json").write_text("{not json")
    with pytest.raises(PipelineError, match="cannot read the Docker config"):
        oci.credentials(host, {"DOCKER_CONFIG": str(cfg)})


CACHE_ERRORS = [
    ('remot = "oci://h/r"', "cache.remot: unknown key", "did you mean 'remote'"),
    ('remote = "https://ghcr.io/me/cache"', "is not oci://HOST[:PORT]/REPO", "oci://ghcr.io"),
    ('remote = "oci://ghcr.io/Me/Cache"', "is not oci://HOST[:PORT]/REPO", "lowercase"),
    ('remote = "oci://me:tok@ghcr.io/me/c"', "holds credentials", "docker login"),
    ("required = true", "cache.required: true without a cache.remote", "cache.remote"),
    ('push = "yes"', "cache.push: expected true or false", "upload its entry"),
]


@pytest.mark.parametrize(("line", "message", "hint"), CACHE_ERRORS)
def test_cache_section_errors(line: str, message: str, hint: str, tmp_path: Path) -> None:
    text = f'[cache]\n{line}\n[images.a]\nsource = "debian"\n'
    with pytest.raises(ConfigError) as err:
        config.parse(text, tmp_path / "images.toml")
    assert message in err.value.message and hint in err.value.hint


def test_cache_section_is_read() -> None:
    c = config.parse('[cache]\nremote = "oci://ghcr.io/me/guest-cache"\npush = true\n'
                     '[images.a]\nsource = "debian"\n', Path("/x/images.toml"))
    assert c.cache == CacheOptions("oci://ghcr.io/me/guest-cache", True, True, False)
    assert config.remote_parts(c.cache.remote) == ("ghcr.io", "me/guest-cache")
    assert config.parse('[images.a]\nsource = "debian"\n', Path("/x/i.toml")).cache.remote == ""
