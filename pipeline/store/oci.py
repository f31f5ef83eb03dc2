"""An OCI registry, as the remote store talks to it: blobs, manifests, tags (distribution-spec).

The transport is the `oras` SDK's Registry (URLs, blob uploads in one PUT or in chunks,
manifest upload), with three things of its own:
  - requests are not retried with sleeps (oras' retry waits minutes on a registry that is
    down): a failure is reported at once, as one RemoteError naming its kind;
  - authentication answers both challenges a registry sends: `Basic` (htpasswd, as Debian's
    docker-registry does) with the credentials, `Bearer` (GHCR, Docker Hub, Harbor) with a
    token fetched from the challenge's realm for its scope;
  - credentials come from PIPELINE_REGISTRY_USER + PIPELINE_REGISTRY_PASSWORD, else the
    Docker config ($DOCKER_CONFIG/config.json or ~/.docker/config.json: `auths`, and a
    `credHelpers` / `credsStore` helper), never from images.toml.
TLS is verified against the system's CAs, or the bundle REQUESTS_CA_BUNDLE (else
SSL_CERT_FILE) names.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from ..core.errors import PipelineError

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
TIMEOUT = (10, 120)  # seconds: to connect, then between two reads
CHUNKED_ABOVE = 64 << 20  # larger blobs go up in chunks (oras reads a one-PUT blob whole)
CHUNK = 16 << 20
DAMAGED_HINT = ("the registry's copy is damaged (nothing of it entered the store): delete the "
                "tag and run the registry's garbage collection, and the next push sends it again")


class RemoteError(PipelineError):
    """The registry could not serve a request. `kind` says which way: unreachable, tls,
    auth (401), forbidden (403), no-repository, rate-limit (429), server, protocol,
    corrupt (a blob that is not what its digest says)."""

    def __init__(self, kind: str, message: str, hint: str = "") -> None:
        super().__init__(message, hint)
        self.kind = kind


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    origin: str  # where they came from, for messages (never the secret itself)


def ca_bundle(env: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """The CA bundle to verify the registry with ('' for the system's)."""
    return env.get("REQUESTS_CA_BUNDLE") or env.get("SSL_CERT_FILE") or ""


def docker_config_path(env: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    d = env.get("DOCKER_CONFIG")
    return Path(d) / "config.json" if d else Path.home() / ".docker" / "config.json"


def credentials(host: str, env: dict[str, str] | os._Environ[str] = os.environ
                ) -> Credentials | None:
    """The credentials for `host`: the environment first, then the Docker config."""
    user, password = env.get("PIPELINE_REGISTRY_USER"), env.get("PIPELINE_REGISTRY_PASSWORD")
    if user and password:
        return Credentials(user, password, "PIPELINE_REGISTRY_USER/PASSWORD")
    path = docker_config_path(env)
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RemoteError("auth", f"cannot read the Docker config {path}: {exc}",
                          hint="fix or remove it (`docker login HOST` rewrites it)") from None
    auths = cfg.get("auths") or {}
    for name in (host, f"https://{host}", f"https://{host}/v2/", f"http://{host}"):
        encoded = (auths.get(name) or {}).get("auth")
        if encoded:
            try:
                user, _, password = base64.b64decode(encoded).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise RemoteError("auth", f"{path}: the entry for {host} is not base64 "
                                  "user:password", hint=f"run `docker login {host}` again"
                                  ) from None
            return Credentials(user, password, str(path))
    helper = (cfg.get("credHelpers") or {}).get(host) or cfg.get("credsStore")
    if helper:
        return _from_helper(helper, host)
    return None


def _from_helper(helper: str, host: str) -> Credentials | None:
    binary = f"docker-credential-{helper}"
    try:
        proc = subprocess.run([binary, "get"], input=host, capture_output=True, text=True,
                              check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RemoteError("auth", f"the Docker credential helper {binary} failed: {exc}",
                          hint="install it, or remove credsStore/credHelpers from the Docker "
                          "config") from None
    if proc.returncode != 0:
        return None  # the helper has nothing for this host: anonymous
    try:
        payload = json.loads(proc.stdout)
        return Credentials(payload["Username"], payload["Secret"], binary)
    except (ValueError, KeyError, TypeError):
        raise RemoteError("auth", f"{binary} answered something that is not credentials",
                          hint="check the helper with `" + binary + " get`") from None


def _registry_class() -> type:
    import oras.provider

    class Registry(oras.provider.Registry):  # type: ignore[misc]
        """oras' Registry, with do_request replaced (see the module's docstring)."""

        client: Client

        def do_request(self, url: str, method: str = "GET", data: Any = None,
                       headers: dict[str, str] | None = None, json: Any = None,
                       stream: bool = False) -> requests.Response:
            return self.client.request(method, url, data=data, headers=headers, json=json,
                                       stream=stream)

    return Registry


class Client:
    """One repository of one registry (`host`, `repository`), over HTTPS."""

    def __init__(self, host: str, repository: str, creds: Credentials | None = None,
                 insecure: bool = False, ca_bundle: str = "") -> None:
        self.host, self.repository = host, repository
        self.creds = creds
        self.registry = _registry_class()(hostname=host, insecure=insecure)
        self.registry.client = self
        self.session = self.registry.session
        self.verify: str | bool = ca_bundle or True  # passed per request: requests lets
        # the process's REQUESTS_CA_BUNDLE override a session's own setting
        self.scheme = "http" if insecure else "https"
        self.container = self.registry.get_container(f"{host}/{repository}")
        self._auth: dict[str, str] = {}  # the Authorization header that last worked, by scope
        self.where = f"oci://{host}/{repository}"

    # --- requests ----------------------------------------------------------------------

    def request(self, method: str, url: str, data: Any = None,
                headers: dict[str, str] | None = None, json: Any = None,
                stream: bool = False) -> requests.Response:
        """One request, authenticated after a 401 challenge; connection failures raise."""
        headers = dict(headers or {})
        scope = "push" if method in ("POST", "PUT", "PATCH", "DELETE") else "pull"
        if self._auth.get(scope):
            headers["Authorization"] = self._auth[scope]
        response = self._send(method, url, data, headers, json, stream)
        if response.status_code == 401:
            answer = self._answer(response.headers.get("WWW-Authenticate", ""))
            if answer is not None:
                self._auth[scope] = headers["Authorization"] = answer
                response.close()
                response = self._send(method, url, data, headers, json, stream)
        return response

    def _send(self, method: str, url: str, data: Any, headers: dict[str, str], json: Any,
              stream: bool) -> requests.Response:
        try:
            return self.session.request(method, url, data=data, json=json, headers=headers,
                                        stream=stream, timeout=TIMEOUT, verify=self.verify)
        except requests.exceptions.SSLError as exc:
            raise RemoteError("tls", f"{self.where}: TLS failed ({_reason(exc)})",
                              hint="trust the registry's CA (the system's store, or "
                              "REQUESTS_CA_BUNDLE=/path/ca.pem)") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise RemoteError("unreachable", f"{self.where}: the registry cannot be reached "
                              f"({_reason(exc)})",
                              hint="check cache.remote and the network") from None
        except requests.exceptions.RequestException as exc:
            raise RemoteError("protocol", f"{self.where}: {method} failed ({_reason(exc)})",
                              hint="check cache.remote") from None

    def _answer(self, challenge: str) -> str | None:
        """The Authorization header answering a WWW-Authenticate challenge (None: none)."""
        kind, _, params = challenge.partition(" ")
        if kind.lower() == "basic":
            if self.creds is None:
                return None
            pair = f"{self.creds.username}:{self.creds.password}".encode()
            return "Basic " + base64.b64encode(pair).decode()
        if kind.lower() != "bearer":
            return None
        fields = dict(_challenge_fields(params))
        realm = fields.pop("realm", "")
        if not realm:
            return None
        auth = None
        if self.creds is not None:
            auth = (self.creds.username, self.creds.password)
        try:
            r = self.session.get(realm, params=fields, auth=auth, timeout=TIMEOUT,
                                 verify=self.verify)
        except requests.exceptions.RequestException as exc:
            raise RemoteError("unreachable", f"{self.where}: the token service {realm} cannot "
                              f"be reached ({_reason(exc)})", hint="check the network") from None
        if r.status_code != 200:
            return None  # the original 401 stands
        try:
            body = r.json()
            token = body.get("token") or body.get("access_token")
        except ValueError:
            token = None
        return f"Bearer {token}" if token else None

    def _url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}/v2/{self.repository}/{path}"

    def check(self, response: requests.Response, what: str, ok: tuple[int, ...]) -> None:
        """Raise the RemoteError a failed response means."""
        if response.status_code in ok:
            return
        raise error_for(response, self.where, what, self.creds)

    # --- what the remote store needs -------------------------------------------------

    def manifest(self, tag: str) -> dict[str, Any] | None:
        """The manifest tagged `tag` (None: no such tag, or no such repository yet)."""
        r = self.request("GET", self._url(f"manifests/{tag}"),
                         headers={"Accept": MANIFEST_TYPE})
        if r.status_code == 404:
            codes = _codes(r)
            if "NAME_UNKNOWN" in codes and "MANIFEST_UNKNOWN" not in codes:
                raise RemoteError("no-repository", f"{self.where}: the repository does not "
                                  "exist", hint="it is created by the first push "
                                  "(cache.push = true), or check cache.remote")
            return None
        self.check(r, f"reading the manifest {tag}", (200,))
        try:
            manifest = r.json()
        except ValueError:
            raise RemoteError("protocol", f"{self.where}: the manifest {tag} is not JSON",
                              hint="the registry or a proxy sent something else") from None
        if not isinstance(manifest, dict):
            raise RemoteError("protocol", f"{self.where}: the manifest {tag} is no object")
        return manifest

    def repository_exists(self) -> bool:
        """Does the repository exist? (A manifest lookup cannot tell: distribution answers
        MANIFEST_UNKNOWN for a tag of a repository that does not exist either.)"""
        r = self.request("GET", self._url("tags/list?n=1"))
        if r.status_code == 404 and "NAME_UNKNOWN" in _codes(r):
            return False
        self.check(r, "listing the tags", (200,))
        return True

    def has_manifest(self, tag: str) -> bool:
        r = self.request("HEAD", self._url(f"manifests/{tag}"),
                         headers={"Accept": MANIFEST_TYPE})
        if r.status_code == 404:
            return False
        self.check(r, f"looking up {tag}", (200,))
        return True

    def push_blob(self, path: Path, digest: str, size: int) -> None:
        """Upload a file as the blob `digest` (sha256:...), unless the repository has it."""
        layer = {"digest": digest, "size": size, "mediaType": "application/octet-stream"}
        head = self.request("HEAD", self._url(f"blobs/{digest}"))
        if head.status_code == 200:
            return
        if head.status_code not in (404,):
            self.check(head, f"looking up the blob {digest}", (200, 404))
        try:
            r = self.registry.upload_blob(str(path), self.container, layer,
                                          do_chunked=size > CHUNKED_ABOVE, chunk_size=CHUNK)
        except ValueError as exc:  # oras' own check of an upload step
            raise RemoteError("protocol", f"{self.where}: uploading {path.name} failed "
                              f"({str(exc)[:160]})", hint="try again; check the registry's "
                              "log") from None
        self.check(r, f"uploading {path.name} ({digest})", (200, 201, 202))

    def push_bytes(self, data: bytes) -> str:
        """Upload a small blob held in memory; returns its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        head = self.request("HEAD", self._url(f"blobs/{digest}"))
        if head.status_code == 200:
            return digest
        start = self.request("POST", self._url("blobs/uploads/"),
                             headers={"Content-Length": "0"})
        self.check(start, "starting an upload", (202,))
        location = self.registry._get_location(start, self.container)
        sep = "&" if "?" in location else "?"
        r = self.request("PUT", f"{location}{sep}digest={digest}", data=data,
                         headers={"Content-Type": "application/octet-stream",
                                  "Content-Length": str(len(data))})
        self.check(r, f"uploading a blob ({digest})", (201,))
        return digest

    def put_manifest(self, tag: str, manifest: dict[str, Any]) -> None:
        body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        r = self.request("PUT", self._url(f"manifests/{tag}"), data=body,
                         headers={"Content-Type": MANIFEST_TYPE})
        self.check(r, f"writing the manifest {tag}", (200, 201))

    def blob_chunks(self, digest: str) -> Iterator[bytes]:
        """The blob's bytes, streamed (not verified here: fetch_blob does)."""
        r = self.request("GET", self._url(f"blobs/{digest}"), stream=True)
        with r:
            self.check(r, f"reading the blob {digest}", (200,))
            try:
                yield from r.iter_content(chunk_size=1 << 20)
            except requests.exceptions.RequestException as exc:
                raise RemoteError("unreachable", f"{self.where}: the download of {digest} "
                                  f"broke off ({_reason(exc)})",
                                  hint="check the network") from None

    def fetch_blob(self, digest: str, size: int, out: Path, name: str = "") -> None:
        """Write the blob into `out`, checking its size and sha256 as it comes (`name`: the
        file it is, for the message)."""
        h = hashlib.sha256()
        n = 0
        with open(out, "wb") as f:
            for chunk in self.blob_chunks(digest):
                n += len(chunk)
                if n > size:
                    break
                h.update(chunk)
                f.write(chunk)
        got = "sha256:" + h.hexdigest()
        if n != size or got != digest:
            raise RemoteError("corrupt", f"{self.where}: the blob {digest} of {name or out.name} "
                              f"arrived as {got} ({n} bytes, {size} expected)",
                              hint=DAMAGED_HINT)

    def blob_bytes(self, digest: str, size: int, limit: int = 1 << 20) -> bytes:
        if size > limit:
            raise RemoteError("protocol", f"{self.where}: blob {digest} is {size} bytes, "
                              f"over {limit}")
        data = b"".join(self.blob_chunks(digest))
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest or len(data) != size:
            raise RemoteError("corrupt", f"{self.where}: the blob {digest} is not what its "
                              "digest says", hint=DAMAGED_HINT)
        return data


def _reason(exc: BaseException) -> str:
    """The innermost readable cause of a requests error (e.g. 'Connection refused')."""
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out",
                   "certificate verify failed", "No route to host",
                   "Temporary failure in name resolution", "Connection reset"):
        if marker in text:
            return marker
    return text.splitlines()[0][:160] if text else type(exc).__name__


def _challenge_fields(params: str) -> Iterator[tuple[str, str]]:
    """realm="...",service="...",scope="..." -> pairs (quoted values may hold commas)."""
    import re

    for m in re.finditer(r'(\w+)="([^"]*)"|(\w+)=([^,\s]+)', params):
        if m.group(1):
            yield m.group(1), m.group(2)
        else:
            yield m.group(3), m.group(4)


def _codes(response: requests.Response) -> set[str]:
    try:
        body = response.json()
        return {e.get("code", "") for e in body.get("errors", []) if isinstance(e, dict)}
    except (ValueError, AttributeError):
        return set()


def error_for(response: requests.Response, where: str, what: str,
              creds: Credentials | None) -> RemoteError:
    """The RemoteError a failed response stands for: 401, 403, missing repository, 429..."""
    status = response.status_code
    codes = _codes(response)
    if status == 401:
        if creds is None:
            return RemoteError("auth", f"{where}: the registry wants credentials (401 while "
                               f"{what}) and none are set",
                               hint="run `docker login HOST`, or set PIPELINE_REGISTRY_USER "
                               "and PIPELINE_REGISTRY_PASSWORD")
        return RemoteError("auth", f"{where}: the registry refused the credentials from "
                           f"{creds.origin} (401 while {what})",
                           hint="check the user name and password or token (`docker login "
                           "HOST` again)")
    if status == 403:
        return RemoteError("forbidden", f"{where}: access denied (403 while {what})",
                           hint="these credentials may not do this here: a token needs "
                           "read:packages to pull, write:packages to push (GHCR)")
    if status == 404 and "NAME_UNKNOWN" in codes:
        return RemoteError("no-repository", f"{where}: the repository does not exist (404 "
                           f"while {what})", hint="check cache.remote; a push creates it")
    if status == 429:
        after = response.headers.get("Retry-After", "")
        return RemoteError("rate-limit", f"{where}: rate limited by the registry (429 while "
                           f"{what}{f'; retry after {after} s' if after else ''})",
                           hint="log in (authenticated pulls have higher limits), or try later")
    if status >= 500:
        return RemoteError("server", f"{where}: the registry failed ({status} "
                           f"{response.reason} while {what})", hint="try again later")
    detail = ", ".join(sorted(codes)) or response.reason
    return RemoteError("protocol", f"{where}: unexpected {status} ({detail}) while {what}",
                       hint="check cache.remote (an OCI registry's repository)")
