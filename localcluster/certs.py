"""Certificates for the local control plane, made with ``cryptography``.

One CA signs everything: the apiserver's serving certificate, client
certificates (the apiserver maps CN to the user and O to groups) and serving
certificates for webhooks that tests run on 127.0.0.1, so a webhook's
``caBundle`` is simply the CA's PEM. ECDSA P-256 keys because they are made in
microseconds, and every Kubernetes component accepts them.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LIFETIME = datetime.timedelta(days=365)
# Clocks of the processes that verify certificates may lag ours by a little.
BACKDATE = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class CertifiedKey:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes

    def write(self, cert_path: Path, key_path: Path) -> None:
        cert_path.write_bytes(self.cert_pem)
        _write_secret(key_path, self.key_pem)


def _write_secret(path: Path, content: bytes) -> None:
    path.touch(mode=0o600)
    path.write_bytes(content)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str, organizations: Sequence[str] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


class CertificateAuthority:
    """A CA whose key stays in memory (or in the cluster folder) to issue more certificates later."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self._cert = cert
        self._key = key

    @classmethod
    def create(cls, common_name: str = "localcluster-ca") -> CertificateAuthority:
        key = _new_key()
        now = datetime.datetime.now(datetime.UTC)
        subject = _name(common_name)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> CertificateAuthority:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path} is not an ECDSA key: recreate the cluster folder")
        return cls(x509.load_pem_x509_certificate(cert_path.read_bytes()), key)

    @property
    def cert_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def as_certified_key(self) -> CertifiedKey:
        return CertifiedKey(self.cert_pem, _key_pem(self._key))

    def _issue(
        self,
        subject: x509.Name,
        usage: x509.ObjectIdentifier,
        sans: Sequence[x509.GeneralName] = (),
    ) -> CertifiedKey:
        key = _new_key()
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=False,
                    content_commitment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return CertifiedKey(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    def issue_serving(
        self,
        common_name: str = "localhost",
        ips: Sequence[str] = ("127.0.0.1",),
        dns_names: Sequence[str] = ("localhost",),
    ) -> CertifiedKey:
        """A TLS server certificate valid for the given addresses (clients check the SANs, not the CN)."""
        sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        sans += [x509.DNSName(name) for name in dns_names]
        return self._issue(_name(common_name), ExtendedKeyUsageOID.SERVER_AUTH, sans)

    def issue_client(self, user: str, groups: Sequence[str] = ()) -> CertifiedKey:
        """A client certificate the apiserver authenticates as ``user`` in ``groups``."""
        return self._issue(_name(user, groups), ExtendedKeyUsageOID.CLIENT_AUTH)

    def issue_webhook_serving(self) -> CertifiedKey:
        """A serving certificate for a webhook listening on 127.0.0.1; its caBundle is ``cert_pem``."""
        return self.issue_serving(common_name="webhook.localhost")


@dataclass(frozen=True)
class SigningKeyPair:
    """The key pair the apiserver signs service-account tokens with, PEM."""

    private_pem: bytes
    public_pem: bytes

    @classmethod
    def create(cls) -> SigningKeyPair:
        key = _new_key()
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cls(_key_pem(key), public)


ADMIN_USER = "admin"
ADMIN_GROUPS = ("system:masters",)


@dataclass(frozen=True)
class ClusterPki:
    """Paths of every file the control plane's flags point at."""

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    service_account_private: Path
    service_account_public: Path

    @classmethod
    def in_directory(cls, directory: Path) -> ClusterPki:
        return cls(
            ca_cert=directory / "ca.crt",
            ca_key=directory / "ca.key",
            serving_cert=directory / "apiserver.crt",
            serving_key=directory / "apiserver.key",
            admin_cert=directory / "admin.crt",
            admin_key=directory / "admin.key",
            service_account_private=directory / "service-account.key",
            service_account_public=directory / "service-account.pub",
        )

    @classmethod
    def create(cls, directory: Path) -> ClusterPki:
        directory.mkdir(parents=True, exist_ok=True)
        pki = cls.in_directory(directory)
        ca = CertificateAuthority.create()
        ca.as_certified_key().write(pki.ca_cert, pki.ca_key)
        ca.issue_serving(common_name="kube-apiserver").write(pki.serving_cert, pki.serving_key)
        ca.issue_client(ADMIN_USER, ADMIN_GROUPS).write(pki.admin_cert, pki.admin_key)
        signing = SigningKeyPair.create()
        _write_secret(pki.service_account_private, signing.private_pem)
        pki.service_account_public.write_bytes(signing.public_pem)
        return pki

    def authority(self) -> CertificateAuthority:
        return CertificateAuthority.load(self.ca_cert, self.ca_key)
