"""
``graphsmtp-send-test FROM TO`` (and ``graphsmtp-sendmail -bv TO``): send one test message and
wait for its outcome, so an admin sees in one command whether mail really leaves.

Through the running daemon (default): the message goes into the spool's ``incoming/`` drop box
exactly as ``graphsmtp-sendmail`` puts it there (same code, same durability), after checking
that a daemon holds the spool's lock (else nobody would deliver it: exit 78).  The command
then follows the queue id through the spool, which is where the daemon records every outcome:

- ``queue/<id>.env`` present: waiting or deferred; each new failed attempt's reason is printed;
- ``failed/<id>``: failed for good, with the daemon's reason;
- ``archive/<id>`` or gone from every directory: delivered (the daemon removes a delivered
  message, or archives it with ``spool.archive_delivered``).

Polling the spool needs no status endpoint and no log access, works as the gateway's user (the
only one who may write the spool anyway) and sees exactly the state ``graphsmtp-queue`` shows.

``--direct`` bypasses the daemon: a token from Entra (as ``config check --online``) and one
``sendMail`` request to Graph, in this process — for a first test before the daemon runs.

The last line is the result, Postfix-style: ``<id>: to=<…>, relay=graph, mailbox=…,
delay=…, status=sent|deferred|bounced (…)``, followed by what to do when it did not work.
Exit status: 0 sent, 69 bounced (EX_UNAVAILABLE), 75 still deferred when ``--timeout`` ran out
(EX_TEMPFAIL), 78 configuration problem or no daemon (EX_CONFIG), 64 usage.
"""

from __future__ import annotations

import base64
import io
import os
import re
import socket
import sys
import time
from email.utils import format_datetime, make_msgid
from typing import TYPE_CHECKING, Callable, Mapping, Optional, Sequence, TextIO

import attrs

from gateway.cli.sysexits import EX_CONFIG, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE, SysexitsArgumentParser

if TYPE_CHECKING:  # imported where used: the command starts without loading the spool or the config
    from gateway.config import GatewayConfig
    from gateway.spool.disk import SpoolDisk
    from gateway.spool.entry import SpoolEntry


POLL_INTERVAL = 0.5


class SendTestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@attrs.frozen
class Result:
    """What became of the test message.  ``status``: ``sent``, ``deferred`` or ``bounced``."""

    queue_id: str
    recipient: str
    status: str
    mailbox: str = ""
    delay: float = 0.0
    reason: str = ""
    relay: str = "graph"

    def line(self) -> str:
        text = f"{self.queue_id}: to=<{self.recipient}>, relay={self.relay}"
        if self.mailbox:
            text += f", mailbox={self.mailbox}"
        text += f", delay={self.delay:.1f}, status={self.status}"
        return text + (f" ({self.reason})" if self.reason else "")

    @property
    def exit_status(self) -> int:
        return {"sent": EX_OK, "deferred": EX_TEMPFAIL}.get(self.status, EX_UNAVAILABLE)


def test_message(sender: str, recipient: str, hostname: str, now: float) -> bytes:
    """A small plain-text message that says where it came from."""
    import datetime

    when = format_datetime(datetime.datetime.fromtimestamp(now, datetime.timezone.utc))
    lines = [
        f"From: graphsmtp test <{sender}>", f"To: <{recipient}>",
        f"Subject: graphsmtp test message from {hostname}", f"Date: {when}",
        f"Message-ID: {make_msgid('graphsmtp-test', domain=hostname)}",
        "MIME-Version: 1.0", "Content-Type: text/plain; charset=us-ascii", "",
        f"This is a test message sent by graphsmtp-send-test on {hostname} at {when}.",
        "If you can read it, mail from this gateway reaches Microsoft 365.", "",
    ]
    return "\r\n".join(lines).encode("ascii", "replace")


def advice(reason: str) -> str:
    """What an admin does about a delivery failure ``reason`` (empty when we cannot tell)."""
    from gateway.delivery.graph.entra_errors import MAIL_SEND_MISSING, explain

    code = re.search(r"AADSTS\d+", reason)
    if code:
        return explain(code.group(0)).action
    if "ErrorAccessDenied" in reason or ("403" in reason and "Mail.Send" in reason):
        return MAIL_SEND_MISSING[1]
    if re.search(r"ErrorInvalidUser|ResourceNotFound|MailboxNotEnabledForRESTAPI|ErrorMailboxNotFound", reason):
        return ("the sending mailbox must be an Exchange Online mailbox of the tenant (licensed, not on-premises): "
                "use such an address as FROM, or set graph.send_as")
    if "ErrorSendAsDenied" in reason:
        return "the app may not send as this address: send from the mailbox itself, or check graph.send_as"
    if re.search(r"token|login host|unreachable|HTTP 5\d\d|timed out|connect", reason, re.I):
        return "check the network path to Entra and Graph; `graphsmtp-config check --online` shows the details"
    return ""


# -- through the running daemon ------------------------------------------------------------

def via_daemon(config: GatewayConfig, sender: str, recipient: str, timeout: float, out: TextIO,
               environ: Mapping[str, str], sleep: Callable[[float], None], now: Callable[[], float],
               config_path: Optional[str] = None) -> Result:
    from gateway.cli.sendmail import Options, SendmailError, submit
    from gateway.spool.disk import SpoolDisk

    spool = config.spool.directory
    disk = SpoolDisk(spool)
    if not os.path.isdir(spool) or disk.daemon_pid() is None:
        raise SendTestError(EX_CONFIG, f"no running graphsmtp owns the spool {spool}: start the daemon "
                                       "(or use --direct to send straight to Graph)")
    started = now()
    message = test_message(sender, recipient, config.hostname, started)
    try:
        queue_id = submit(Options(recipients=[recipient], sender=sender, config=config_path, spool=spool,
                                  ignore_dots=True),
                          io.BytesIO(message), environ, now=started)
    except SendmailError as e:
        raise SendTestError(e.status, str(e)) from None
    out.write(f"{queue_id}: queued in {spool}; waiting up to {timeout:.0f}s for the gateway to deliver it\n")
    out.flush()
    mailbox = _expected_mailbox(config, sender) if config.deliverer == "graph" else ""
    relay = "graph" if config.deliverer == "graph" else "capture"
    seen_attempts = 0
    last_reason = ""
    while True:
        state, entry, reason = spool_state(disk, queue_id)
        if entry is not None:
            mailbox = entry.sending_mailbox or mailbox
            for attempt in entry.history[seen_attempts:]:
                seen_attempts += 1
                last_reason = attempt.reason
                out.write(f"{queue_id}: attempt {seen_attempts} deferred: {attempt.reason}\n")
                out.flush()
        if state == "delivered":
            what = "delivered by the running gateway" if relay == "graph" else \
                f"captured in {config.capture.outbox}, NOT sent: no [graph] credentials configured"
            return Result(queue_id, recipient, "sent", mailbox, now() - started, what, relay)
        if state == "failed":
            return Result(queue_id, recipient, "bounced", mailbox, now() - started, reason, relay)
        if now() - started >= timeout:
            return Result(queue_id, recipient, "deferred", mailbox, now() - started,
                          last_reason or f"not delivered within {timeout:.0f}s; still queued", relay)
        sleep(POLL_INTERVAL)


def spool_state(disk: SpoolDisk, queue_id: str) -> tuple[str, Optional[SpoolEntry], str]:
    """
    ``(state, entry, reason)`` with state ``incoming``, ``queued``, ``failed`` or ``delivered``.
    Checked in the order the daemon moves an entry (incoming → queue → failed/archive/gone), so
    a move happening between two checks is never mistaken for delivery.
    """
    from gateway.spool.disk import ENV, SpoolLayout

    layout = disk.layout
    if os.path.exists(SpoolLayout.path(layout.incoming, queue_id, ENV)):
        return "incoming", None, ""
    if os.path.exists(SpoolLayout.path(layout.queue, queue_id, ENV)):
        try:
            return "queued", disk.load(queue_id, quarantine=False), ""
        except Exception:  # noqa: BLE001 - EntryMissing, OSError: caught mid-move, look again
            return "queued", None, ""
    if os.path.exists(SpoolLayout.path(layout.failed, queue_id, ENV)) or \
            os.path.exists(SpoolLayout.path(layout.failed, queue_id, ".reason")):
        return "failed", None, disk.failure_reason(queue_id) or "failed (see graphsmtp-queue show)"
    return "delivered", None, ""


def _expected_mailbox(config: GatewayConfig, sender: str) -> str:
    graph = getattr(config, "graph", None)
    send_as = getattr(graph, "send_as", "header-from") if graph is not None else "header-from"
    return send_as if "@" in str(send_as) else sender


# -- directly to Graph --------------------------------------------------------------------

def direct(config: GatewayConfig, sender: str, recipient: str, out: TextIO, now: Callable[[], float]) -> Result:
    """A token and one MIME ``sendMail`` request, in this process (no daemon, no spool)."""
    from urllib.parse import quote

    from gateway.delivery.graph.credentials import credentials_from_config
    from gateway.delivery.graph.entra_errors import explain
    from gateway.delivery.graph.token import (
        TokenError,
        TokenProviders,
        msal_http_session,
    )

    if config.deliverer != "graph":
        raise SendTestError(EX_CONFIG, "--direct needs [graph] credentials in the configuration")
    graph = config.graph
    started = now()
    queue_id = "direct"
    proxies = {"https": graph.https_proxy} if graph.https_proxy else None
    tokens = TokenProviders(None, None, verify=graph.verify, proxies=proxies, timeout=graph.token_timeout)
    mailbox = _expected_mailbox(config, sender)
    try:
        token = tokens.acquire_blocking(credentials_from_config(graph), now)
    except TokenError as e:
        explanation = explain(e.code, e.description, transient=not e.is_config)
        return Result(queue_id, recipient, "bounced" if e.is_config else "deferred", mailbox, now() - started,
                      f"no Graph token: {explanation.summary()}")
    finally:
        tokens.close()
    out.write(f"{queue_id}: token issued; sending as {mailbox} through {graph.graph_url}\n")
    session = msal_http_session(graph.verify, proxies, graph.request_timeout)
    url = f"{graph.graph_url.rstrip('/')}/v1.0/users/{quote(mailbox, safe='@')}/sendMail"
    body = base64.b64encode(test_message(sender, recipient, config.hostname, started))
    try:
        response = session.post(url, data=body, headers={"Authorization": f"Bearer {token.reveal()}",
                                                         "Content-Type": "text/plain"})
    except Exception as e:  # noqa: BLE001 - requests' connection errors
        return Result(queue_id, recipient, "deferred", mailbox, now() - started,
                      f"cannot reach Graph ({type(e).__name__})")
    finally:
        session.close()
    request_id = response.headers.get("request-id", "")
    if response.status_code == 202:
        return Result(queue_id, recipient, "sent", mailbox, now() - started,
                      "Graph 202 Accepted" + (f", request-id {request_id}" if request_id else ""))
    try:
        error = response.json().get("error", {})
        code, message = error.get("code", ""), error.get("message", "")
    except (ValueError, AttributeError):
        code, message = "", ""
    status = "deferred" if response.status_code in (429, 500, 502, 503, 504) else "bounced"
    reason = f"Graph {response.status_code} {code or 'no error code'}" + (f": {message}" if message else "")
    return Result(queue_id, recipient, status, mailbox, now() - started, reason.rstrip("."))


# -- command line -------------------------------------------------------------------------

def run(sender: Optional[str], recipient: str, config_path: Optional[str] = None, spool: Optional[str] = None,
        use_direct: bool = False, timeout: float = 60.0, out: TextIO = sys.stdout, environ: Optional[Mapping[str, str]] = None,
        sleep: Callable[[float], None] = time.sleep, now: Callable[[], float] = time.time) -> int:
    """The whole command; also what ``graphsmtp-sendmail -bv`` calls.  Returns the exit status."""
    from gateway.cli.tool_config import load_tool_config
    from gateway.config import ConfigError

    environ = os.environ if environ is None else environ
    try:
        config = load_tool_config(config_path, spool, environ)
    except ConfigError as e:
        out.write(f"graphsmtp-send-test: configuration error: {e}\n")
        return EX_CONFIG
    sender = sender or _default_sender(config.hostname)
    for address in (sender, recipient):
        if not re.fullmatch(r"[^@\s<>(),]+@[^@\s<>(),]+", address or ""):
            out.write(f"graphsmtp-send-test: invalid address {address!r}\n")
            return EX_USAGE
    try:
        if use_direct:
            result = direct(config, sender, recipient, out, now)
        else:
            result = via_daemon(config, sender, recipient, timeout, out, environ, sleep, now, config_path)
    except SendTestError as e:
        out.write(f"graphsmtp-send-test: {e}\n")
        return e.status
    out.write(result.line() + "\n")
    if result.status != "sent":
        hint = advice(result.reason)
        if hint:
            out.write(f"  what to do: {hint}\n")
    return result.exit_status


def _default_sender(hostname: str) -> str:
    import pwd

    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = "root"
    return f"{user}@{hostname or socket.getfqdn()}"


def main(argv: Optional[Sequence[str]] = None, out: TextIO = sys.stdout) -> int:
    parser = SysexitsArgumentParser(
        prog="graphsmtp-send-test",
        description="Send a test message through the running gateway (or straight to Graph) and wait for its outcome.")
    parser.add_argument("sender", metavar="FROM", help="sender address (the mailbox Graph sends as)")
    parser.add_argument("recipient", metavar="TO", help="recipient address")
    parser.add_argument("--config", help="TOML configuration (default: $GRAPHSMTP_CONFIG, /etc/graphsmtp/graphsmtp.toml)")
    parser.add_argument("--spool", help="spool directory of the running gateway (overrides the configuration)")
    parser.add_argument("--direct", action="store_true", help="do not use the daemon: token + one Graph sendMail now")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the outcome (default 60)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return EX_OK if e.code == 0 else EX_USAGE
    return run(args.sender, args.recipient, args.config, args.spool, args.direct, args.timeout, out)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "run", "Result", "advice", "spool_state", "test_message"]
