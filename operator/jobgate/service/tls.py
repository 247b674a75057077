"""The webhook's TLS: a serving certificate re-read from its files when they change, with no restart.

Kubernetes renews the files of a mounted Secret in place (cert-manager renewals,
a regenerated chart Secret). Kopf's own server notices that only every minute,
and then stops and starts its listener: connections refused meanwhile, and with
`failurePolicy: Fail` refused Jobs. Here the one SSL context that the listener
holds takes the new pair with `load_cert_chain`: handshakes from then on use it,
connections already open go on with the old one, nothing stops listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import kopf

log = logging.getLogger("jobgate.tls")

CHECK_SECONDS = 1.0


class ReloadingCertificate:
    """A server SSL context whose certificate and key follow two files."""

    def __init__(self, cert_path: Path, key_path: Path) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        pair = self._read()
        self._load(self.context, pair)  # a bad pair at start is an error, not a retry
        self._loaded = _digest(pair)
        self._complained: str | None = None  # the digest of a pair we already said is unusable

    def reload_if_changed(self) -> bool:
        """Take the files' pair if it changed and is usable; True when the context now serves a new one.

        The pair is read once and checked in a scratch context first: a certificate renewed
        before its key (two writes) would leave a live context that failed half-way with no
        usable certificate at all. An unusable pair is skipped until the files change again.
        """
        try:
            pair = self._read()
        except OSError as e:
            log.warning("cannot read the webhook certificate (%s); still serving the previous one", e)
            return False
        digest = _digest(pair)
        if digest in (self._loaded, self._complained):
            return False
        try:
            self._load(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH), pair)
        except (ssl.SSLError, ValueError) as e:
            self._complained = digest
            log.warning(
                "the webhook certificate %s and key %s do not make a usable pair (%s); still serving the previous one",
                self.cert_path,
                self.key_path,
                e,
            )
            return False
        self._load(self.context, pair)
        self._loaded = digest
        log.info("serving the renewed webhook certificate from %s", self.cert_path)
        return True

    async def follow(self, every: float = CHECK_SECONDS) -> None:
        """Check the files every `every` seconds, forever. Kubernetes swaps a Secret's files with no event."""
        while True:
            await asyncio.sleep(every)
            self.reload_if_changed()

    def _read(self) -> tuple[bytes, bytes]:
        return self.cert_path.read_bytes(), self.key_path.read_bytes()

    @staticmethod
    def _load(context: ssl.SSLContext, pair: tuple[bytes, bytes]) -> None:
        cert, key = pair
        with _private_file(cert) as cert_file, _private_file(key) as key_file:
            context.load_cert_chain(cert_file, key_file)


class ReloadingWebhookServer(kopf.WebhookServer):
    """Kopf's webhook server, serving a `ReloadingCertificate` instead of reading the files itself."""

    def __init__(self, *, addr: str, port: int, cert_path: Path, key_path: Path, check_seconds: float = CHECK_SECONDS):
        # No certfile/pkeyfile for Kopf: given them, it would restart the listener when they change.
        super().__init__(addr=addr, port=port)
        self.certificate = ReloadingCertificate(cert_path, key_path)
        self.check_seconds = check_seconds

    def _build_ssl(self) -> tuple[bytes | None, ssl.SSLContext | None]:
        return None, self.certificate.context  # no caBundle: the webhook configuration is not Kopf's

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        following = asyncio.create_task(self.certificate.follow(self.check_seconds))
        try:
            async for client_config in super().__call__(fn):
                yield client_config
        finally:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following


@contextlib.contextmanager
def _private_file(content: bytes) -> Iterator[str]:
    """A path to `content` that nobody else can read: in memory where Linux allows, else a 0600 temp file.

    `load_cert_chain` reads only paths; reading the mounted files once and loading these
    copies makes the check and the load see the very same bytes.
    """
    if hasattr(os, "memfd_create"):
        with open(os.memfd_create("jobgate-tls"), "wb") as file:
            file.write(content)
            file.flush()
            yield f"/proc/self/fd/{file.fileno()}"
        return
    with tempfile.NamedTemporaryFile() as file:  # created 0600
        file.write(content)
        file.flush()
        yield file.name


def _digest(pair: tuple[bytes, bytes]) -> str:
    # Only a digest is kept: no copy of the key stays in memory between checks.
    return hashlib.sha256(b"\0".join(pair)).hexdigest()
