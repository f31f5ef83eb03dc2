"""The store shared through an OCI registry (`[cache] remote = "oci://HOST/REPO"`).

An entry `store/<stage>/<key>/` is one OCI artifact in that repository, tagged with its key:

    manifest   application/vnd.oci.image.manifest.v1+json, annotated with the entry's stage,
               key, stage version and the image that pushed it
    config     the entry's inputs.json, as its own media type (ENTRY_TYPE): what made the key
    layers     one per file of the entry, titled with its path and annotated with the digest
               and size its files.sha256 records; a file over 1 MiB that is not compressed
               already travels as a zstd stream (ZSTD_TYPE), and one with holes (a raw disk
               image) as a zstd stream unpacked with its holes (SPARSE_TYPE)

`pull` runs on a miss, before a stage builds, under the key's lock: every blob is checked
against its digest as it arrives, into the entry's temporary directory; the config must hash
to the key, and the files must be exactly those recorded (Store.new_entry with `expect`)
before the directory is renamed into place. So a truncated or corrupt download never
becomes an entry, and a wrong digest is named. `push` runs after a build: blobs first, the
manifest last, so a tag names only a complete artifact (a pull during a push sees no tag,
or all of it); a key already tagged there is not pushed again, and two machines pushing
one key both succeed (the tag ends on one of their manifests, each complete).

A registry that cannot be reached, refuses the credentials (401), denies access (403), has
no such repository or rate-limits (429) is said in one line, and the build goes on locally;
the remote is then left alone for the rest of the run. With `required = true` the same
failure stops the build instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..config import CacheOptions, remote_parts
from ..core.errors import PipelineError
from ..core.log import info, step, warn
from .entries import Store, recorded
from .hashing import SPARSE, sha256_file
from .keys import StageInputs, stage_key
from .layout import FILES_FILE, INPUTS_FILE
from .oci import DAMAGED_HINT, Client, RemoteError, ca_bundle, credentials

ENTRY_TYPE = "application/vnd.cros-guest-pipeline.entry.v1+json"
FILE_TYPE = "application/octet-stream"
SPARSE_TYPE = "application/vnd.cros-guest-pipeline.sparse+zstd"
ZSTD_TYPE = "application/vnd.cros-guest-pipeline.file+zstd"
COMPRESS_ABOVE = 1 << 20
COMPRESSED = (".zst", ".xz", ".gz", ".bz2", ".squashfs", ".zip", ".lz4")  # sent as they are
A = "dev.cros-guest-pipeline."  # annotation prefix
TITLE = "org.opencontainers.image.title"
FETCHERS = 3  # blobs of one entry downloaded at once
LEVEL = 3  # zstd level of a file on the way (tarballs, the default image's disk.img)
# failures after which the remote is left alone for the rest of the run (both ways)
WHOLE_REMOTE = ("unreachable", "tls", "auth", "forbidden", "rate-limit")


@dataclass
class Remote:
    """One run's remote store. Thread-safe: doit -n N runs stages in threads."""

    options: CacheOptions
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    off: dict[str, str] = field(default_factory=dict)  # "pull"/"push" -> why it is off
    checked_repository: bool = False
    _client: Client | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def where(self) -> str:
        return self.options.remote

    def client(self) -> Client:
        with self._lock:
            if self._client is None:
                host, repo = remote_parts(self.options.remote)
                self._client = Client(host, repo, credentials(host, self.env),
                                      ca_bundle=ca_bundle(self.env))
            return self._client

    # --- the two directions ---------------------------------------------------------

    def pull(self, store: Store, si: StageInputs, work: Path) -> bool:
        """Fetch the key's entry into the store if the remote has it: True when it did.
        Call under store.lock(si), the entry absent."""
        if not self.options.pull or "pull" in self.off:
            return False
        try:
            manifest = self.client().manifest(si.key)
            if manifest is None:
                self._check_repository()
                info(f"{si.stage}: not in {self.where} ({si.key})")
                return False
            with step(f"Pulling {si.stage} {si.key} from {self.where}"):
                _fetch_entry(self.client(), store, si, manifest, work)
            return True
        except RemoteError as exc:
            self._failed(exc, "pull")
            return False

    def _check_repository(self) -> None:
        """After the run's first miss: a repository that does not exist is a fault when
        this machine only pulls (a wrong cache.remote), and nothing to say when it pushes
        (the first push creates it)."""
        if self.checked_repository:
            return
        self.checked_repository = True
        if self.client().repository_exists():
            return
        if self.options.push:
            info(f"{self.where} does not exist yet: nothing to pull (the first push creates it)")
            self.off["pull"] = "no-repository"
            return
        raise RemoteError("no-repository", f"{self.where}: the repository does not exist",
                          hint="check cache.remote (a machine with cache.push = true creates "
                          "it with its first push)")

    def push(self, store: Store, si: StageInputs, image: str, work: Path) -> None:
        """Upload the key's entry (just built here) unless the remote has the key."""
        if not self.options.push or "push" in self.off:
            return
        try:
            client = self.client()
            if client.has_manifest(si.key):
                info(f"{si.stage}: already in {self.where} ({si.key})")
                return
            with store.using(si), step(f"Pushing {si.stage} {si.key} to {self.where}"):
                _push_entry(client, store.path(si), si, image, work)
        except RemoteError as exc:
            self._failed(exc, "push")
        except OSError as exc:  # reading the entry, or the scratch space for a sparse file
            self._failed(RemoteError("local", f"{self.where}: cannot send {si.stage} {si.key}"
                                     f": {exc.strerror or exc} ({exc.filename or ''})",
                                     hint="free space under artifacts/tmp"), "push")

    def _failed(self, exc: RemoteError, direction: str) -> None:
        """Say it in one line and go on locally; or stop, when the remote is required."""
        if self.options.required:
            raise PipelineError(f"remote cache ({direction}): {exc.message}",
                                hint=f"{exc.hint}; cache.required = true stops the build "
                                "when the remote fails" if exc.hint else
                                "cache.required = true stops the build when the remote fails")
        if exc.kind in WHOLE_REMOTE:
            self.off.update(pull=exc.kind, push=exc.kind)
        elif exc.kind == "no-repository":
            self.off["pull"] = exc.kind  # nothing to pull; a push creates it
        then = ("the build goes on locally" if direction == "pull"
                else "the entry stays local")
        warn(f"remote cache: {exc.message}; {then} (hint: {exc.hint})" if exc.hint
             else f"remote cache: {exc.message}; {then}")


def remote_for(options: CacheOptions) -> Remote | None:
    return Remote(options) if options.remote else None


# --- push ---------------------------------------------------------------------------------


def _push_entry(client: Client, entry: Path, si: StageInputs, image: str, work: Path) -> None:
    files = recorded(entry)
    if not files:
        info(f"{si.stage} entry {si.key} records no digests (built before files.sha256): "
             "not pushed")
        return
    config = (entry / INPUTS_FILE).read_bytes()
    config_digest = client.push_bytes(config)
    layers: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="push.", dir=work) as scratch:
        for rel, (digest, size) in sorted(files.items()):
            path = entry / rel
            annotations = {TITLE: rel, f"{A}file.digest": digest, f"{A}file.size": str(size)}
            blob = Path(scratch) / "blob.zst"
            if digest.startswith(SPARSE):
                from ..baguette.compress import compress

                compress(path, blob, level=LEVEL)
                blob_digest, media = "sha256:" + sha256_file(blob), SPARSE_TYPE
            elif size > COMPRESS_ABOVE and not rel.endswith(COMPRESSED):
                _compress(path, blob)
                blob_digest, media = "sha256:" + sha256_file(blob), ZSTD_TYPE
            else:
                blob, blob_digest, media = path, f"sha256:{digest}", FILE_TYPE
            blob_size = blob.stat().st_size
            client.push_blob(blob, blob_digest, blob_size)
            layers.append({"mediaType": media, "digest": blob_digest, "size": blob_size,
                           "annotations": annotations})
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": ENTRY_TYPE, "digest": config_digest, "size": len(config)},
        "layers": layers,
        "annotations": {f"{A}stage": si.stage, f"{A}key": si.key,
                        f"{A}version": str(si.version), f"{A}image": image},
    }
    client.put_manifest(si.key, manifest)
    total = sum(int(x["size"]) for x in layers)
    info(f"{len(layers)} files, {total / 2**20:.1f} MiB sent or already there")


# --- pull ---------------------------------------------------------------------------------


def _corrupt(client: Client, si: StageInputs, what: str) -> RemoteError:
    return RemoteError("corrupt", f"{client.where}: the {si.stage} entry {si.key} {what}",
                       hint=DAMAGED_HINT)


def _layer_files(client: Client, si: StageInputs, manifest: dict[str, Any]
                 ) -> list[tuple[str, dict[str, Any], str, int]]:
    """(path, layer, recorded digest, recorded size) of every file the manifest lists."""
    ann = manifest.get("annotations") or {}
    if ann.get(f"{A}stage") != si.stage or ann.get(f"{A}key") != si.key:
        raise _corrupt(client, si, f"is tagged on a manifest for {ann.get(f'{A}stage')!r} "
                       f"{ann.get(f'{A}key')!r}")
    out = []
    for layer in manifest.get("layers") or []:
        if not isinstance(layer, dict):
            raise _corrupt(client, si, "lists a layer that is no object")
        a = layer.get("annotations") or {}
        rel, digest, size = a.get(TITLE, ""), a.get(f"{A}file.digest", ""), a.get(f"{A}file.size")
        p = PurePosixPath(rel)
        if (not rel or p.is_absolute() or ".." in p.parts or rel in (FILES_FILE, INPUTS_FILE)
                or not str(size).isdigit() or not digest
                or layer.get("mediaType") not in (FILE_TYPE, SPARSE_TYPE, ZSTD_TYPE)):
            raise _corrupt(client, si, f"lists a file it may not hold ({rel!r})")
        out.append((rel, layer, digest, int(str(size))))
    if len({rel for rel, *_ in out}) != len(out):
        raise _corrupt(client, si, "lists a file twice")
    return out


def _fetch_entry(client: Client, store: Store, si: StageInputs, manifest: dict[str, Any],
                 work: Path) -> None:
    files = _layer_files(client, si, manifest)
    config = manifest.get("config") or {}
    try:
        payload = json.loads(client.blob_bytes(str(config.get("digest", "")),
                                               int(config.get("size", -1))))
        made = stage_key(payload["stage"], payload["version"], payload["inputs"])
    except (ValueError, KeyError, TypeError):
        raise _corrupt(client, si, "has no readable inputs") from None
    if payload["stage"] != si.stage or made != si.key:
        raise _corrupt(client, si, f"holds the inputs of another key ({made})")
    expect = {rel: (digest, size) for rel, _layer, digest, size in files}
    # a plain file's blob digest is its sha256, checked as it arrived, and a zstd one's
    # output is hashed as it is written: neither is read again
    known = {rel: layer["digest"].removeprefix("sha256:") for rel, layer, _d, _s in files
             if layer["mediaType"] == FILE_TYPE}

    def fetch(tmp: Path, rel: str, layer: dict[str, Any]) -> None:
        dest = tmp / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if layer["mediaType"] == FILE_TYPE:
            client.fetch_blob(layer["digest"], int(layer["size"]), dest)
        else:
            digest = _fetch_zstd(client, layer, dest, work,
                                 sparse=layer["mediaType"] == SPARSE_TYPE)
            if digest:
                known[rel] = digest

    try:
        with store.new_entry(si, expect=expect, known=known) as tmp, \
                ThreadPoolExecutor(max_workers=FETCHERS) as pool:
            for done in [pool.submit(fetch, tmp, rel, layer) for rel, layer, _d, _s in files]:
                done.result()  # the first failure raises; the pool waits for the others
    except RemoteError:
        raise
    except PipelineError as exc:  # new_entry: the files are not what the key recorded
        raise RemoteError("corrupt", f"{client.where}: {exc.message}", exc.hint) from None
    total = sum(int(layer["size"]) for _r, layer, _d, _s in files)
    info(f"{len(files)} files, {total / 2**20:.1f} MiB received, every digest checked")


def _compress(path: Path, out: Path) -> None:
    import zstandard

    with open(path, "rb") as src, open(out, "wb") as dst:
        zstandard.ZstdCompressor(level=LEVEL, threads=-1).copy_stream(src, dst)


def _fetch_zstd(client: Client, layer: dict[str, Any], dest: Path, work: Path,
                sparse: bool) -> str:
    """Fetch a zstd blob (checked against its digest) and unpack it into `dest`: with its
    holes when `sparse` (returns ''), else densely, returning the sha256 of what it wrote."""
    import zstandard

    from ..baguette.compress import decompress_sparse

    scratch = Path(tempfile.mkdtemp(prefix="pull.", dir=work))
    try:
        blob = scratch / "blob.zst"
        client.fetch_blob(layer["digest"], int(layer["size"]), blob, name=dest.name)
        try:
            if sparse:
                decompress_sparse(blob, dest)
                return ""
            h = hashlib.sha256()
            with open(blob, "rb") as src, open(dest, "wb") as dst:
                reader = zstandard.ZstdDecompressor().stream_reader(src, read_size=1 << 20)
                while chunk := reader.read(1 << 20):
                    h.update(chunk)
                    dst.write(chunk)
            return h.hexdigest()
        except zstandard.ZstdError as exc:  # checked bytes that are no zstd stream
            raise RemoteError("corrupt", f"{client.where}: {dest.name} is not a zstd stream "
                              f"({exc})", hint=DAMAGED_HINT) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
