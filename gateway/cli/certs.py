"""
``graphsmtp-certs``: a self-signed certificate so STARTTLS/implicit TLS work on first start.

    graphsmtp-certs --cert /etc/graphsmtp/tls/cert.pem --key /etc/graphsmtp/tls/key.pem \\
        --name relay.corp.example --name 192.0.2.25

NOT FOR PRODUCTION: clients cannot verify a self-signed certificate, so it protects against
passive eavesdropping only, not against an active man in the middle.  Replace it with a
certificate from your CA or ACME (certbot, acme.sh) and point ``tls_cert``/``tls_key`` at that;
the gateway reloads certificates on SIGHUP and when the files change.

The key is ECDSA P-256, written with mode 0600 (created exclusively: existing files are only
replaced with ``--force``).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import socket
import sys
from typing import Optional, Sequence, TextIO

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

WARNING = (
    "graphsmtp-certs: this is a SELF-SIGNED certificate, NOT FOR PRODUCTION: clients cannot "
    "verify it. Replace it with one from your CA or ACME."
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graphsmtp-certs", description="Generate a self-signed TLS certificate (not for production).")
    p.add_argument("--cert", required=True, help="where to write the certificate (PEM)")
    p.add_argument("--key", required=True, help="where to write the private key (PEM, mode 0600)")
    p.add_argument("--name", action="append", default=[], help="DNS name or IP address (repeatable; default: this host's name)")
    p.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    p.add_argument("--force", action="store_true", help="replace existing files")
    return p


def build_certificate(names: Sequence[str], days: int) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) for ``names``."""
    key = ec.generate_private_key(ec.SECP256R1())
    alt = []
    for n in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alt.append(x509.DNSName(n))
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "graphsmtp self-signed (not for production)"),
    ])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write(path: str, data: bytes, mode: int, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(path, flags, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def main(argv: Optional[Sequence[str]] = None, stdout: TextIO = None, stderr: TextIO = None) -> int:
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    args = _parser().parse_args(argv)
    names = args.name or [socket.getfqdn()]
    if not 1 <= args.days <= 3650:
        stderr.write("graphsmtp-certs: --days must be from 1 to 3650\n")
        return 1
    if not args.force:
        for path in (args.cert, args.key):
            if os.path.exists(path):
                stderr.write(f"graphsmtp-certs: {path} exists; use --force to replace it\n")
                return 1
    cert_pem, key_pem = build_certificate(names, args.days)
    try:
        _write(args.key, key_pem, 0o600, args.force)
        _write(args.cert, cert_pem, 0o644, args.force)
    except OSError as e:
        stderr.write(f"graphsmtp-certs: cannot write {e.filename}: {e.strerror}\n")
        return 1
    stderr.write(WARNING + "\n")
    stdout.write(f"certificate {args.cert} and key {args.key} for {', '.join(names)}, valid {args.days} days\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
