"""A real OCI registry for tests: Debian's docker-registry (distribution 2.8) on 127.0.0.1,
with TLS from a CA the test makes (openssl) and htpasswd users (bcrypt, apache2-utils).

    with running_registry(work) as reg:
        reg.url             "127.0.0.1:PORT"
        reg.ca              the CA certificate to trust (REQUESTS_CA_BUNDLE)
        reg.env()           the environment a client needs (CA, user, password)
        reg.blob_file(d)    the file holding blob `sha256:...` in the registry's storage
        reg.manifest_file(repo, tag)  the file holding the manifest a tag points at
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

USER, PASSWORD = "builder", "s3cret-for-tests"
READY_TRIES = 200  # 0.05 s apart: the registry starts in well under a second here


@dataclass(frozen=True)
class Registry:
    host: str
    ca: Path
    storage: Path
    log: Path

    def env(self, password: str = PASSWORD) -> dict[str, str]:
        return {"REQUESTS_CA_BUNDLE": str(self.ca), "PIPELINE_REGISTRY_USER": USER,
                "PIPELINE_REGISTRY_PASSWORD": password}

    def manifest_file(self, repository: str, tag: str) -> Path:
        """The blob file of the manifest `tag` points at in `repository`."""
        link = (self.storage / "docker/registry/v2/repositories" / repository / "_manifests"
                / "tags" / tag / "current" / "link")
        return self.blob_file(link.read_text().strip())

    def blob_file(self, digest: str) -> Path:
        hexa = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hexa[:2] / hexa / "data"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca_and_cert(work: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) for 127.0.0.1, valid for a day."""
    ca_key, ca, key, csr, cert = (work / n for n in
                                  ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-days", "1", "-subj", "/CN=pipeline test CA", "-keyout", str(ca_key),
             "-out", str(ca), "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(csr))
    ext = work / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                   "extendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-days", "1", "-extfile", str(ext), "-out", str(cert))
    return ca, cert, key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_registry(work: Path) -> Iterator[Registry]:
    for tool in ("docker-registry", "htpasswd", "openssl"):
        if shutil.which(tool) is None:
            reason = f"{tool} is not installed (run `python3 -m pipeline.hostsetup --tests`)"
            if "pytest" not in sys.modules:  # the bench (tests/bench/remote.py) runs without
                raise RuntimeError(reason)
            from tests.support.tools import tool_missing

            tool_missing(reason)
    work.mkdir(parents=True, exist_ok=True)
    ca, cert, key = make_ca_and_cert(work)
    users = work / "htpasswd"
    users.write_text(subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], check=True,
                                    capture_output=True, text=True).stdout)
    storage = work / "storage"
    port = free_port()
    conf = work / "config.yml"
    conf.write_text(f"""version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
  tls:
    certificate: {cert}
    key: {key}
auth:
  htpasswd:
    realm: pipeline-tests
    path: {users}
""")
    log = work / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["docker-registry", "serve", str(conf)], stdout=out,
                                stderr=subprocess.STDOUT)
    reg = Registry(f"127.0.0.1:{port}", ca, storage, log)
    try:
        _wait_ready(reg, proc)
        yield reg
    finally:
        proc.terminate()
        proc.wait()


def _wait_ready(reg: Registry, proc: subprocess.Popen[bytes]) -> None:
    ctx = ssl.create_default_context(cafile=str(reg.ca))
    for _ in range(READY_TRIES):
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {reg.log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"https://{reg.host}/v2/", context=ctx)  # noqa: S310
        except urllib.error.HTTPError as exc:
            if exc.code == 401:  # up, and asking for the credentials
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"docker-registry did not answer on {reg.host}: "
                       f"{reg.log.read_text()[-2000:]}")


def docker_config(directory: Path, host: str, password: str = PASSWORD) -> Path:
    """A Docker config (as `docker login` writes it) holding the test user for `host`."""
    import base64
    import json

    directory.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{USER}:{password}".encode()).decode()
    (directory / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    os.chmod(directory / "config.json", 0o600)
    return directory
