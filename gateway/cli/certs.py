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
import os
import socket
import sys
from typing import Optional, Sequence, TextIO

from gateway.certificates import server_certificate

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
    cert_pem, key_pem = server_certificate(names, args.days)
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
