"""
The one state of an SMTP session's connection, and the moves between states that are allowed.

Why one explicit state: the session used to carry eight booleans (done, gone, greeted, peer
checked, in DATA, in an AUTH exchange, ...) whose combinations were partly impossible and
nowhere written down; a reply depended on which of them a method remembered to look at.  Now
the session is in exactly one L{SessionState} and moves only along L{ALLOWED}.

Why not Automat (a Twisted dependency): an Automat machine cannot be asked which state it is
in, by design, while every SMTP reply is chosen by asking exactly that in a fixed, wire-visible
order (``503 Send EHLO/HELO first`` before ``421`` while draining, and so on), and answers that
arrive after the session closed must be ignored rather than be inputs every state has to
declare.  A small enum with a transition table keeps those checks readable and still refuses a
move the table does not list.

Orthogonal to the state, and therefore not part of it: whether the reader is held while a
reply is pending or the client does not read (L{gateway.smtp.input}), and two facts about the
session (TLS started, logged in).
"""

from __future__ import annotations

import enum


class SessionState(enum.Enum):
    #: Built; the connection is not made yet (local submission: its user is being looked up).
    NEW = "new"
    #: Connected behind PROXY protocol, the header naming the client has not come: nothing said.
    UNIDENTIFIED = "unidentified"
    #: 220 sent (or TLS just started): the client must say EHLO/HELO.
    AWAITING_HELO = "awaiting helo"
    #: Greeted: commands are accepted, no mail transaction is open.
    READY = "ready"
    #: An AUTH exchange waits for the client's next line (a 334 challenge was sent).
    AUTHENTICATING = "authenticating"
    #: MAIL FROM accepted; recipients are added, and after DATA the message is judged here.
    IN_TRANSACTION = "in transaction"
    #: 354 sent: the input is message data until the final dot.
    RECEIVING_DATA = "receiving data"
    #: The final reply is sent (or the connection aborted): nothing more is read or answered.
    CLOSING = "closing"
    #: The connection is lost.
    GONE = "gone"

    # Members are singletons compared by identity: hash them by identity too, in C, instead
    # of Enum's Python-level hash of the name (the session asks "in FINISHING?" and the
    # transition table several times per command; issue 13).
    __hash__ = object.__hash__


S = SessionState

#: Where each state may go (besides staying where it is).
ALLOWED: dict[SessionState, frozenset[SessionState]] = {
    S.NEW: frozenset({S.UNIDENTIFIED, S.CLOSING, S.GONE}),
    S.UNIDENTIFIED: frozenset({S.AWAITING_HELO, S.CLOSING, S.GONE}),
    S.AWAITING_HELO: frozenset({S.READY, S.CLOSING, S.GONE}),
    S.READY: frozenset({S.AWAITING_HELO, S.AUTHENTICATING, S.IN_TRANSACTION, S.CLOSING, S.GONE}),
    S.AUTHENTICATING: frozenset({S.READY, S.CLOSING, S.GONE}),
    S.IN_TRANSACTION: frozenset({S.READY, S.RECEIVING_DATA, S.CLOSING, S.GONE}),
    S.RECEIVING_DATA: frozenset({S.IN_TRANSACTION, S.READY, S.CLOSING, S.GONE}),
    S.CLOSING: frozenset({S.GONE}),
    S.GONE: frozenset(),
}

#: The session is finishing: nothing more is read or answered.
FINISHING = frozenset({S.CLOSING, S.GONE})
#: The client has said EHLO/HELO (and not had to start over since).
GREETED = frozenset({S.READY, S.AUTHENTICATING, S.IN_TRANSACTION, S.RECEIVING_DATA})
#: A mail transaction is open.
TRANSACTION = frozenset({S.IN_TRANSACTION, S.RECEIVING_DATA})


class IllegalTransition(Exception):
    """A move the table does not allow: a bug in the session, never the client's doing."""


def transition(current: SessionState, target: SessionState) -> SessionState:
    """
    The state after asking to move from ``current`` to ``target``.  A finishing session stays
    finishing (an answer that arrives after the close changes nothing), except that a closing
    one may be lost.
    """
    if target is current:
        return current
    if current in FINISHING and target is not S.GONE:
        return current
    if target not in ALLOWED[current]:
        raise IllegalTransition(f"{current.value} -> {target.value}")
    return target


__all__ = ["SessionState", "ALLOWED", "FINISHING", "GREETED", "TRANSACTION", "IllegalTransition", "transition"]
