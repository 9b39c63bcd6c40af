"""
Making server certificates: the self-signed one ``graphsmtp-certs`` writes for a first start,
and the ones the test CA in L{gateway.testing.certs} issues.  One builder, so both carry the
same names and extensions that TLS clients check (SAN for every name, serverAuth, not a CA).
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import Optional, Sequence, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SELF_SIGNED_ORGANIZATION = "graphsmtp self-signed (not for production)"
KEY_TYPES = ("ecdsa", "rsa")
# 2048 bits: what old printers and scanners (the reason to choose RSA) can still handle.
RSA_KEY_BITS = 2048


def subject_alt_names(names: Sequence[str]) -> x509.SubjectAlternativeName:
    """Every name as an IP address entry when it is one, a DNS name otherwise."""
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


#: The kinds of key the gateway makes: ECDSA P-256, or RSA for devices that know only RSA suites.
PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]


def new_private_key(key_type: str = "ecdsa") -> PrivateKey:
    """An ECDSA P-256 key (the default) or an RSA key for devices that know only RSA suites."""
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    if key_type == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"key type must be one of {', '.join(KEY_TYPES)}, not {key_type!r}")


def private_key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def server_certificate(
    names: Sequence[str],
    days: int,
    issuer: Optional[tuple[x509.Certificate, ec.EllipticCurvePrivateKey]] = None,
    key_type: str = "ecdsa",
) -> tuple[bytes, bytes]:
    """
    ``(certificate PEM, private key PEM)`` for ``names`` (the first is the common name), an
    ECDSA P-256 key (or RSA with ``key_type="rsa"``), valid from five minutes ago (clock skew)
    for ``days``.  Signed by ``issuer`` (certificate, key) when given, else self-signed and
    labelled not for production.
    """
    key = new_private_key(key_type)
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, names[0])]
    if issuer is None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, SELF_SIGNED_ORGANIZATION))
    subject = x509.Name(attributes)
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer is not None else (subject, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(subject_alt_names(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(signing_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), private_key_pem(key)


__all__ = ["server_certificate", "subject_alt_names", "private_key_pem", "new_private_key", "KEY_TYPES",
           "SELF_SIGNED_ORGANIZATION"]
