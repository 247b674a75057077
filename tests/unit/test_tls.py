"""The webhook's certificate is re-read from its files while the server keeps listening.

A real TLS listener on 127.0.0.1 serving `ReloadingCertificate.context`; the
files change the way the kubelet changes a mounted Secret (`MountedSecret`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509

from jobgate.service.tls import ReloadingCertificate
from localcluster.certs import CertificateAuthority, CertifiedKey
from tests.support.webhook import MountedSecret


async def served_subject(port: int, ca: CertificateAuthority) -> str:
    """The common name of the certificate a new connection gets, verified against `ca`."""
    client = ssl.create_default_context(cadata=ca.cert_pem.decode())
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname="localhost")
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    await writer.wait_closed()
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


@contextlib.asynccontextmanager
async def serve(context: ssl.SSLContext) -> AsyncIterator[int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def test_new_connections_get_the_renewed_certificate_without_a_restart(tmp_path: Path) -> None:
    old_ca, new_ca = CertificateAuthority.create("old-ca"), CertificateAuthority.create("new-ca")
    secret = MountedSecret(tmp_path, old_ca.issue_serving(common_name="old"))
    certificate = ReloadingCertificate(secret.cert, secret.key)

    async def scenario() -> None:
        async with serve(certificate.context) as port:
            assert await served_subject(port, old_ca) == "old"
            assert not certificate.reload_if_changed()  # unchanged: nothing to do

            secret.write(new_ca.issue_serving(common_name="new"))
            assert await served_subject(port, old_ca) == "old"  # not re-read yet
            assert certificate.reload_if_changed()
            assert await served_subject(port, new_ca) == "new"
            with pytest.raises(ssl.SSLCertVerificationError):
                await served_subject(port, old_ca)

    asyncio.run(scenario())


def test_a_certificate_without_its_key_is_not_served(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ca = CertificateAuthority.create()
    secret = MountedSecret(tmp_path, ca.issue_serving(common_name="first"))
    certificate = ReloadingCertificate(secret.cert, secret.key)
    # The certificate renewed before its key: a mismatched pair, as two separate writes would leave.
    second, third = ca.issue_serving(common_name="second"), ca.issue_serving(common_name="third")
    secret.write(CertifiedKey(second.cert_pem, third.key_pem))

    async def scenario() -> None:
        async with serve(certificate.context) as port:
            assert not certificate.reload_if_changed()
            assert "do not make a usable pair" in caplog.text
            assert await served_subject(port, ca) == "first"  # the live context is intact
            assert not certificate.reload_if_changed()  # said once, not retried until the files change
            secret.write(third)
            assert certificate.reload_if_changed()
            assert await served_subject(port, ca) == "third"

    asyncio.run(scenario())


def test_follow_picks_up_a_change_within_its_period(tmp_path: Path) -> None:
    old_ca, new_ca = CertificateAuthority.create("old-ca"), CertificateAuthority.create("new-ca")
    secret = MountedSecret(tmp_path, old_ca.issue_serving(common_name="old"))
    certificate = ReloadingCertificate(secret.cert, secret.key)

    async def scenario() -> float:
        following = asyncio.create_task(certificate.follow(every=0.05))
        try:
            async with serve(certificate.context) as port:
                secret.write(new_ca.issue_serving(common_name="new"))
                changed = asyncio.get_running_loop().time()
                while True:
                    try:
                        if await served_subject(port, new_ca) == "new":
                            return asyncio.get_running_loop().time() - changed
                    except ssl.SSLCertVerificationError:
                        await asyncio.sleep(0.01)
        finally:
            following.cancel()

    assert asyncio.run(asyncio.wait_for(scenario(), timeout=5)) < 1.0
