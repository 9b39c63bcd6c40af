"""
graphsmtp-sendmail's way into the running daemon: SMTP over the ``[local]`` UNIX socket.

The daemon identifies the user from the socket's peer credentials and runs the same intake
and policies as on a listener, so this module only speaks the protocol (with the standard
library's smtplib) and turns the daemon's replies into sysexits statuses: 0 only after the
final 250 (the message is fsynced in the spool), ``EX_NOPERM`` for a 5.7.x refusal (sender or
policy), ``EX_DATAERR`` for any other permanent refusal, ``EX_TEMPFAIL`` for 4xx replies and
a connection lost half way.  The body is streamed from standard input, never held whole.
"""

from __future__ import annotations

import re
import smtplib
import socket
from typing import Iterable, Optional, Union

from gateway.cli.sysexits import EX_DATAERR, EX_NOPERM, EX_TEMPFAIL

TIMEOUT = 300.0
_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}\b")
_BATCH = 256 * 1024


class NotRunning(Exception):
    """Nothing listens on the socket (the daemon is stopped): the caller may fall back."""


class Refused(Exception):
    """The daemon refused the message; ``status`` is the sysexits code to exit with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _UnixSMTP(smtplib.SMTP):
    """smtplib over a UNIX stream socket (the address given to connect() is ignored)."""

    def __init__(self, path: str, timeout: float) -> None:
        self._path = path
        # A fixed name: smtplib would otherwise resolve this host's FQDN (a DNS lookup).
        super().__init__(local_hostname="localhost", timeout=timeout)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        return sock


def connect(path: str, helo: str, timeout: float = TIMEOUT) -> smtplib.SMTP:
    """An SMTP session on the daemon's socket; L{NotRunning} when nobody listens there."""
    client = _UnixSMTP(path, timeout)
    try:
        code, text = client.connect("localhost", 25)
    except (FileNotFoundError, ConnectionRefusedError) as e:
        raise NotRunning(f"{path}: {e.strerror}") from None
    except PermissionError:
        raise Refused(EX_NOPERM, f"no permission to connect to the graphsmtp daemon's socket {path}") from None
    except OSError as e:
        raise Refused(EX_TEMPFAIL, f"cannot talk to the graphsmtp daemon on {path}: {e}") from None
    _expect(client, code, text, 220, "connecting")
    code, text = client.ehlo(helo)
    _expect(client, code, text, 250, "EHLO")
    return client


def send(client: smtplib.SMTP, sender: str, recipients: Iterable[str], lines: Iterable[bytes]) -> str:
    """
    One transaction; ``lines`` is the message as CRLF lines (a long line may come in pieces).
    Returns the daemon's final reply text ("Ok: queued as …"); raises L{Refused}.
    """
    try:
        code, text = client.mail(sender)
        _expect(client, code, text, 250, "MAIL FROM")
        for recipient in recipients:
            code, text = client.rcpt(recipient)
            _expect(client, code, text, (250, 251), f"RCPT TO:<{recipient}>")
        client.putcmd("data")
        code, text = client.getreply()
        _expect(client, code, text, 354, "DATA")
        _stream(client, lines)
        code, text = client.getreply()
        _expect(client, code, text, 250, "end of data")
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            pass  # accepted already; the goodbye does not matter
        return text.decode("utf-8", "replace")
    except smtplib.SMTPServerDisconnected:
        raise Refused(EX_TEMPFAIL, "the graphsmtp daemon closed the connection; message not accepted, try again later") from None
    except OSError as e:
        raise Refused(EX_TEMPFAIL, f"lost the connection to the graphsmtp daemon ({e}); message not accepted, try again later") from None
    finally:
        client.close()


def _stream(client: smtplib.SMTP, lines: Iterable[bytes]) -> None:
    """Dot-stuff (RFC 5321 §4.5.2) and send in batches, then the end-of-data line."""
    batch, size, at_line_start = [], 0, True
    last = b"\r\n"
    for piece in lines:
        if not piece:
            continue
        if at_line_start and piece.startswith(b"."):
            piece = b"." + piece
        at_line_start = piece.endswith(b"\r\n")
        batch.append(piece)
        size += len(piece)
        last = piece
        if size >= _BATCH:
            client.send(b"".join(batch))
            batch, size = [], 0
    if not last.endswith(b"\r\n"):
        batch.append(b"\r\n")
    batch.append(b".\r\n")
    client.send(b"".join(batch))


def _expect(client: smtplib.SMTP, code: int, text: bytes, wanted: Union[int, tuple[int, ...]], stage: str) -> None:
    if code in (wanted if isinstance(wanted, tuple) else (wanted,)):
        return
    reply = " ".join(text.decode("utf-8", "replace").split())
    try:
        client.close()
    except OSError:
        pass
    raise Refused(status_for(code, reply), f"refused at {stage}: {code} {reply}")


def status_for(code: int, reply: str) -> int:
    """sysexits status for an SMTP refusal: 4xx temporary, 5.7.x permission, other 5xx data."""
    if code < 500:
        return EX_TEMPFAIL
    match = _STATUS.match(reply)
    if match and match.group(0).startswith("5.7."):
        return EX_NOPERM
    return EX_DATAERR


def queue_id_of(reply: str) -> Optional[str]:
    marker = "queued as "
    return reply.rsplit(marker, 1)[1].strip() if marker in reply else None


__all__ = ["connect", "send", "status_for", "queue_id_of", "NotRunning", "Refused"]
