"""
A plain TCP connection's peer is read once per session (issue 13): Twisted makes a new address
object at every ``getPeer``, and the session view asks for the peer at connect, EHLO, MAIL,
RCPT and end of data.  On a real loopback connection the policies still see the right client
address, port and trust.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from twisted.internet import reactor, tcp
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.smtp_helpers import ScriptedPolicy, make_factory

MESSAGE = b"From: a@b.test\r\nTo: r@x.test\r\nSubject: hi\r\n\r\nbody\r\n.\r\n"


def converse(port: int) -> tuple[int, bytes]:
    """One SMTP conversation, the client side (in a thread): its own port and all replies."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        script = [b"EHLO c.test\r\n", b"MAIL FROM:<a@b.test>\r\n", b"RCPT TO:<r@x.test>\r\n", b"DATA\r\n",
                  MESSAGE, b"QUIT\r\n"]
        replies = client.recv(1000)
        for line in script:
            client.sendall(line)
            replies += client.recv(1000)
        while True:
            more = client.recv(1000)
            if not more:
                break
            replies += more
        return client.getsockname()[1], replies


class PeerReadOnceTests(TestCase):

    @inlineCallbacks
    def test_views_name_the_real_client_and_the_peer_is_read_once(self):
        calls: list[Any] = []
        real = tcp.Server.getPeer

        def counting(transport: Any) -> Any:
            calls.append(transport)
            return real(transport)

        self.patch(tcp.Server, "getPeer", counting)
        policy = ScriptedPolicy()
        factory = make_factory(policies=(policy,), clock=reactor, trusted_networks=(ipaddress.ip_network("127.0.0.0/8"),))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client_port, replies = yield deferToThread(converse, port.getHost().port)
        yield factory.all_closed()
        self.assertIn(b"250 2.0.0 Ok: queued as ", replies)
        self.assertTrue(replies.endswith(b"closing connection\r\n"), replies)
        views = [call[1] for call in policy.calls]
        self.assertEqual([c[0] for c in policy.calls], ["on_connect", "on_mail_from", "on_rcpt_to", "on_message"])
        for view in views:
            self.assertEqual((view.client_address, view.client_port, view.trusted_network), ("127.0.0.1", client_port, True))
        self.assertEqual(len(calls), 1, "the peer of a plain TCP connection was read more than once")
