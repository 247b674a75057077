"""Webhooks in tests: a throwaway mutating webhook served over HTTPS on 127.0.0.1, and certificate files
laid out as the kubelet mounts a Secret."""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from localcluster.certs import CertifiedKey

# Given the AdmissionReview's request, return the JSONPatch operations to apply.
Mutation = Callable[[dict[str, Any]], list[dict[str, Any]]]


class MutatingWebhookServer:
    """Answers every POST with ``allowed: true`` and the JSONPatch that ``mutate`` returns.

    ``requests`` keeps each AdmissionReview request it answered, for assertions.
    """

    def __init__(self, certificate: CertifiedKey, mutate: Mutation) -> None:
        self.requests: list[dict[str, Any]] = []
        self._mutate = mutate
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.socket = _tls_context(certificate).wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, name="test-webhook", daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}/mutate"

    def __enter__(self) -> MutatingWebhookServer:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _review(self, review: dict[str, Any]) -> dict[str, Any]:
        request = review["request"]
        self.requests.append(request)
        response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
        patch = self._mutate(request)
        if patch:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
        return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        review = self._review

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                answer = json.dumps(review(json.loads(body))).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        return Handler


def _tls_context(certificate: CertifiedKey) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # load_cert_chain reads only files; they are not needed once loaded.
    with tempfile.TemporaryDirectory() as folder:
        cert, key = Path(folder) / "tls.crt", Path(folder) / "tls.key"
        certificate.write(cert, key)
        context.load_cert_chain(cert, key)
    return context


class MountedSecret:
    """tls.crt and tls.key as the kubelet lays out a mounted Secret, and renews them.

    Each file is a link through `..data`, a link to the current version's folder;
    a renewal writes a new folder and swaps `..data` in one atomic rename, so a
    reader sees either the old pair or the new one.
    """

    def __init__(self, root: Path, pair: CertifiedKey) -> None:
        self.root = root
        self.versions = 0
        root.mkdir(parents=True, exist_ok=True)
        self.write(pair)
        for name in ("tls.crt", "tls.key"):
            (root / name).symlink_to(f"..data/{name}")

    @property
    def cert(self) -> Path:
        return self.root / "tls.crt"

    @property
    def key(self) -> Path:
        return self.root / "tls.key"

    def write(self, pair: CertifiedKey) -> None:
        self.versions += 1
        folder = self.root / f"..version-{self.versions}"
        folder.mkdir()
        pair.write(folder / "tls.crt", folder / "tls.key")
        (self.root / "..data-new").symlink_to(folder.name)
        os.replace(self.root / "..data-new", self.root / "..data")
