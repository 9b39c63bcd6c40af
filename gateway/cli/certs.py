"""
``graphsmtp-certs``: a self-signed certificate so STARTTLS/implicit TLS work on first start.

    graphsmtp-certs --cert /etc/graphsmtp/tls/cert.pem --key /etc/graphsmtp/tls/key.pem \\
        --name relay.corp.example --name 192.0.2.25

NOT FOR PRODUCTION: clients cannot verify a self-signed certificate, so it protects against
passive eavesdropping only, not against an active man in the middle.  Replace it with a
certificate from your CA or ACME (certbot, acme.sh) and point ``tls_cert``/``tls_key`` at that;
the gateway reloads certificates on SIGHUP and when the files change.

The key is ECDSA P-256 by default; ``--key-type rsa`` makes an RSA 2048 key instead, for old
devices (printers, scanners) that offer only RSA suites on a ``tls_min_version = "1.0"``
listener.  It is written with mode 0600 (created exclusively: existing files are only replaced
with ``--force``).

Exit status (sysexits.h), with one line on standard error: 0 written, 64 usage, 73 cannot
create the files (they exist, or the directory is not writable).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Optional, Sequence, TextIO

from gateway.certificates import KEY_TYPES, server_certificate
from gateway.cli.sysexits import EX_CANTCREAT, EX_OK, EX_USAGE

WARNING = (
    "graphsmtp-certs: this is a SELF-SIGNED certificate, NOT FOR PRODUCTION: clients cannot "
    "verify it. Replace it with one from your CA or ACME."
)


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """Usage mistakes as one line and EX_USAGE, not argparse's usage text and status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see graphsmtp-certs --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="graphsmtp-certs", description="Generate a self-signed TLS certificate (not for production).")
    p.add_argument("--cert", required=True, help="where to write the certificate (PEM)")
    p.add_argument("--key", required=True, help="where to write the private key (PEM, mode 0600)")
    p.add_argument("--name", action="append", default=[], help="DNS name or IP address (repeatable; default: this host's name)")
    p.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    p.add_argument("--key-type", choices=KEY_TYPES, default="ecdsa",
                   help="ecdsa (P-256, the default) or rsa (2048 bits: for old devices that know only RSA suites)")
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


def main(argv: Optional[Sequence[str]] = None, stdout: Optional[TextIO] = None, stderr: Optional[TextIO] = None) -> int:
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    try:
        args = _parser().parse_args(argv)
    except UsageError as e:
        stderr.write(f"graphsmtp-certs: {e}\n")
        return EX_USAGE
    except SystemExit as e:  # --help
        return EX_OK if e.code == 0 else EX_USAGE
    names = args.name or [socket.getfqdn()]
    if not 1 <= args.days <= 3650:
        stderr.write("graphsmtp-certs: --days must be from 1 to 3650\n")
        return EX_USAGE
    if not args.force:
        for path in (args.cert, args.key):
            if os.path.exists(path):
                stderr.write(f"graphsmtp-certs: {path} exists; use --force to replace it\n")
                return EX_CANTCREAT
    cert_pem, key_pem = server_certificate(names, args.days, key_type=args.key_type)
    try:
        _write(args.key, key_pem, 0o600, args.force)
        _write(args.cert, cert_pem, 0o644, args.force)
    except OSError as e:
        stderr.write(f"graphsmtp-certs: cannot write {e.filename}: {e.strerror}\n")
        return EX_CANTCREAT
    stderr.write(WARNING + "\n")
    stdout.write(f"certificate {args.cert} and key {args.key} ({args.key_type}) for {', '.join(names)}, "
                 f"valid {args.days} days\n")
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
