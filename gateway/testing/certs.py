"""
A throw-away certificate authority for tests: real TLS handshakes on loopback without any
certificate from outside.  Public, so plugin authors' trial tests can use it too.
"""

from __future__ import annotations

import datetime
import os
from typing import Iterable

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.certificates import server_certificate


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@attrs.frozen
class IssuedCertificate:
    """A leaf certificate on disk: ``cert_path`` (PEM, leaf only) and ``key_path`` (PEM, 0600)."""

    cert_path: str
    key_path: str
    cert_pem: bytes


@attrs.define
class TestCA:
    """
    A CA whose certificate is at ``ca_cert_path``; ``issue()`` makes server certificates for
    loopback names.  Create one with L{TestCA.create}.
    """

    __test__ = False  # not a test case, whatever trial's name matching thinks

    directory: str
    ca_cert_path: str
    _key: ec.EllipticCurvePrivateKey
    _cert: x509.Certificate
    _serial: int = 1

    @classmethod
    def create(cls, directory: str, name: str = "graphsmtp test CA") -> "TestCA":
        os.makedirs(directory, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256())
        )
        ca_path = os.path.join(directory, "ca.pem")
        with open(ca_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        return cls(directory, ca_path, key, cert)

    def issue(self, names: Iterable[str] = ("localhost", "127.0.0.1"), basename: str = "server",
              key_type: str = "ecdsa") -> IssuedCertificate:
        """A server certificate valid for ``names`` (DNS names and IP addresses); ``key_type`` ecdsa or rsa."""
        self._serial += 1
        cert_pem, key_pem = server_certificate(list(names), days=7, issuer=(self._cert, self._key), key_type=key_type)
        cert_path = os.path.join(self.directory, f"{basename}-{self._serial}.pem")
        key_path = os.path.join(self.directory, f"{basename}-{self._serial}.key")
        with open(cert_path, "wb") as f:
            f.write(cert_pem)
        _write_private(key_path, key_pem)
        return IssuedCertificate(cert_path, key_path, cert_pem)


__all__ = ["TestCA", "IssuedCertificate"]
