"""A static HTTPS server on 127.0.0.1 for tests: a directory served with a self-signed
certificate the test makes (openssl), in a thread, stopped on exit.

    with serve_https(tree, tmp_path) as (url, cert):
        ...  # url = "https://127.0.0.1:PORT", cert = the PEM certificate to trust
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

from tests.support.tools import tool_missing


def self_signed(work: Path) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1, valid for a day."""
    if shutil.which("openssl") is None:
        tool_missing("openssl is not installed (run `python3 -m pipeline.hostsetup --tests`)")
    cert, key = work / "server.crt", work / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return cert, key


class _Quiet(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, format: str, *args: object) -> None:
        type(self).requests.append(f"{self.command} {self.path}")


@contextlib.contextmanager
def serve_https(root: Path, work: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """Serve `root` on https://127.0.0.1:PORT; yields (url, certificate, request log)."""
    cert, key = self_signed(work)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    log: list[str] = []
    handler = type("Handler", (_Quiet,), {"requests": log})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert, log
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
