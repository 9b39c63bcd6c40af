"""
The SMTP verbs a session knows, and how a command line reaches its handler.

Each verb maps to a function of ``(session, argument)``: the transaction's (MAIL, RCPT, DATA),
the greeting's (HELO, EHLO, STARTTLS), the login's (AUTH), or one of the small commands here.
Before a handler runs, the dispatcher applies the rules that are about the client rather than
the command: a line that is HTTP (or another protocol) closes the session with ``421 4.7.0``;
``max_commands_before_mail`` commands that do not move a transaction forward (NOOP/RSET/VRFY
floods) close it too; 8-bit characters are refused outside MAIL and RCPT.
"""

from __future__ import annotations

from typing import Any, Callable

from gateway.smtp.greeting import helo_command, starttls_command
from gateway.smtp.login import auth_command
from gateway.smtp.transaction import data_command, mail_command, rcpt_command

Handler = Callable[[Any, bytes], None]

# Commands that do not move a mail transaction forward; floods of them end the session.
_JUNK = frozenset({b"HELO", b"EHLO", b"RSET", b"NOOP", b"VRFY", b"EXPN", b"HELP", b"STARTTLS", b"AUTH"})
# Someone is speaking HTTP (or another protocol) at us: cross-protocol attacks, not mail.
_FOREIGN = frozenset({b"GET", b"POST", b"HEAD", b"PUT", b"CONNECT", b"OPTIONS", b"USER"})
# Commands whose argument is an address: their parser answers 8-bit characters itself (553 5.6.7).
_ADDRESS_VERBS = frozenset({b"MAIL", b"RCPT"})
# Commands whose reply is always the same.
_FIXED_REPLIES = {
    b"NOOP": (250, "2.0.0", "Ok"),
    b"HELP": (214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH"),
    **{verb: (502, "5.5.1", "Command not implemented") for verb in (b"EXPN", b"BDAT", b"ETRN", b"TURN", b"ATRN")},
}


def _fixed(reply: tuple[int, str, str]) -> Handler:
    return lambda session, rest: session.reply(*reply)


def _rset(session: Any, rest: bytes) -> None:
    session.reset_transaction()
    session.reply(250, "2.0.0", "Ok")


def _vrfy(session: Any, rest: bytes) -> None:
    if not rest.strip():
        session.reply(501, "5.5.4", "Syntax: VRFY <address>")
        return
    session.reply(252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery")


def _quit(session: Any, rest: bytes) -> None:
    session.sendLine(f"221 2.0.0 {session.hostname} closing connection".encode("ascii"))
    session.lose_connection()


COMMANDS: dict[bytes, Handler] = {
    b"HELO": lambda session, rest: helo_command(session, rest, esmtp=False),
    b"EHLO": lambda session, rest: helo_command(session, rest, esmtp=True),
    b"MAIL": mail_command,
    b"RCPT": rcpt_command,
    b"DATA": data_command,
    b"RSET": _rset,
    b"QUIT": _quit,
    b"VRFY": _vrfy,
    b"STARTTLS": starttls_command,
    b"AUTH": auth_command,
    **{verb: _fixed(reply) for verb, reply in _FIXED_REPLIES.items()},
}


def handle_command(session: Any, line: bytes) -> None:
    """Run one command line (an AUTH exchange's lines do not come here)."""
    parts = line.strip(b" \t").split(None, 1)
    verb = parts[0].upper() if parts else b""
    if verb in _FOREIGN:
        session.log.info("closing session with {client}: not an SMTP client", client=session.client_label())
        session.reply_and_close(421, "4.7.0", "This is an SMTP server; closing")
        return
    handler = COMMANDS.get(verb)
    if parts and (verb in _JUNK or handler is None):
        session.commands_without_mail += 1
        if session.commands_without_mail > session.limits.max_commands_before_mail:
            session.log.info("closing session with {client}: too many commands without mail", client=session.client_label())
            session.reply_and_close(421, "4.7.0", f"{session.hostname} Too many commands without a mail transaction")
            return
    if handler is None:
        session.reply(500, "5.5.2", "Syntax error, command unrecognized")
    elif verb not in _ADDRESS_VERBS and not line.isascii():
        session.reply(500, "5.5.2", "8-bit characters are not allowed in commands")
    else:
        handler(session, parts[1] if parts[1:] else b"")


__all__ = ["COMMANDS", "handle_command"]
