"""
Policies end to end: the whole gateway in-process on loopback (gateway.testing.harness), real
smtplib clients, the real spool, and what the capture outbox receives.
"""

from __future__ import annotations

import json
import os
import shutil
import smtplib
import socket
import tempfile
import tomllib

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from gateway.testing.harness import LOOPBACK_EPHEMERAL, send_message, start_gateway
from gateway.testing.policy import start_redis_server
from tests.auth_helpers import make_users_file
from tests.test_policy_docs import DEVICE_MESSAGE, DOCS, documented_toml
from tests.test_policy_registry import PluginDirectoryMixin
from tests.tools import require_tool

TRUSTED = ["127.0.0.0/8"]


def listener(*policies, name="default", **extra):
    return {"name": name, "endpoint": LOOPBACK_EPHEMERAL, "trusted_networks": TRUSTED, "policies": list(policies), **extra}


def message(from_header: str, subject: str = "hello", extra: str = "") -> bytes:
    return f"From: {from_header}\r\nTo: team@corp.example\r\nSubject: {subject}\r\n{extra}\r\nbody\r\n".encode()


def raw_outbox_files(gw):
    new = os.path.join(gw.config.capture.outbox, "new")
    result = []
    for name in sorted(os.listdir(new)):
        with open(os.path.join(new, name), "rb") as f:
            result.append(f.read())
    return result


class SenderAllowlistEndToEnd(TestCase):
    @inlineCallbacks
    def test_header_from_spoofing_is_refused_and_never_delivered(self):
        gw = yield start_gateway(self, {"listener": [listener({"use": "sender-allowlist", "allow": ["*@corp.example"]})]})
        code, _ = yield send_message(gw.port(), "alice@corp.example", ["team@corp.example"], message("Alice <alice@corp.example>"))
        self.assertEqual(code, 250)
        # smtplib's data() returns the final reply rather than raising.
        code, text = yield send_message(
            gw.port(), "alice@corp.example", ["team@corp.example"], message("Alice <ceo@evil.example>"))
        self.assertEqual((code, text), (550, b"5.7.1 Sender address not allowed"))
        # A display name showing another address is refused by the mail grammar (issue 8).
        code, text = yield send_message(
            gw.port(), "alice@corp.example", ["team@corp.example"], message("\"alice@corp.example\" <ceo@evil.example>"))
        self.assertEqual((code, text[:5]), (550, b"5.6.0"))
        envelope = yield self.assertFailure(
            send_message(gw.port(), "ceo@evil.example", ["team@corp.example"], message("ceo@evil.example")),
            smtplib.SMTPSenderRefused,
        )
        self.assertEqual(envelope.smtp_code, 550)
        yield gw.delivered(1)
        self.assertEqual([str(m["From"]) for m in gw.outbox_messages()], ["Alice <alice@corp.example>"])


class PrinterExampleEndToEnd(TestCase):
    @inlineCallbacks
    def test_documented_printer_configuration_over_smtp_auth(self):
        """The docs example with only the endpoint/TLS changed for a loopback test."""
        data = tomllib.loads(documented_toml("printer"))
        users = os.path.abspath(self.mktemp())
        make_users_file(users, {"printer@corp.example": ("printer password 1234", ["*"])})
        data["auth"]["users_file"] = users
        (printers,) = data["listener"]
        printers.update(endpoint=LOOPBACK_EPHEMERAL, tls="none", allow_plaintext_auth=True)
        del printers["tls_cert"], printers["tls_key"]
        gw = yield start_gateway(self, data)
        login = ("printer@corp.example", "printer password 1234")

        code, _ = yield send_message(gw.port("printers"), "scanner@corp.example", ["team@corp.example"], DEVICE_MESSAGE, login=login)
        self.assertEqual(code, 250)
        refused = yield self.assertFailure(
            send_message(gw.port("printers"), "ceo@corp.example", ["team@corp.example"], DEVICE_MESSAGE, login=login),
            smtplib.SMTPSenderRefused,
        )
        self.assertEqual(refused.smtp_code, 550)
        self.assertIn(b"may only send as scanner@corp.example", refused.smtp_error)

        yield gw.delivered(1)
        [delivered] = gw.outbox_messages()
        (address,) = delivered["From"].addresses
        self.assertEqual((address.display_name, address.addr_spec), ("HP LaserJet", "scanner@corp.example"))
        self.assertIsNone(delivered["Sender"])


class HeaderRewriteEndToEnd(TestCase):
    @inlineCallbacks
    def test_rewrites_are_what_the_outbox_receives(self):
        gw = yield start_gateway(self, {"listener": [listener({
            "use": "header-rewrite",
            "from": "Büro Köln <buero@corp.example>",
            "subject_tag": "[Scan]",
            "strip_internal": True,
            "add": {"X-Relayed-By": "graphsmtp"},
        })]})
        raw = (
            b"Received: from scanner.lan (10.1.2.3) by relay.lan\r\n"
            b"X-Originating-IP: [10.1.2.3]\r\n"
            b"From: =?iso-8859-1?q?Ger=E4t?= <device@corp.example>\r\n"
            b"To: team@corp.example\r\n"
            b"Subject: =?utf-8?b?R3LDvMOfZSBhdXMgS8O2bG4=?=\r\n"
            b"\r\nbody\r\n"
        )
        code, _ = yield send_message(gw.port(), "device@corp.example", ["team@corp.example"], raw)
        self.assertEqual(code, 250)
        yield gw.delivered(1)
        [delivered] = gw.outbox_messages()
        self.assertEqual(str(delivered["Subject"]), "[Scan] Grüße aus Köln")
        self.assertEqual(str(delivered["From"]), "Büro Köln <buero@corp.example>")
        self.assertEqual(str(delivered["X-Relayed-By"]), "graphsmtp")
        self.assertIsNone(delivered["X-Originating-IP"])
        # Only the gateway's own Received is left; the device's internal hops are gone.
        self.assertEqual(len(delivered.get_all("Received")), 1)
        [raw_file] = raw_outbox_files(gw)
        header_section = raw_file.split(b"\r\n\r\n", 1)[0]
        self.assertTrue(header_section.isascii())
        self.assertNotIn(b"10.1.2.3", raw_file)
        for name in ("Subject", "From"):
            self.assertEqual(delivered[name].defects, ())


class DroppedInPluginEndToEnd(PluginDirectoryMixin, TestCase):
    @inlineCallbacks
    def test_example_plugin_copied_into_twisted_plugins_is_enforced(self):
        write = self.plugin_dir()
        with open(os.path.join(DOCS, "example_policy.py"), encoding="utf-8") as f:
            write("h5test_example_policy", f.read())
        gw = yield start_gateway(self, {"listener": [listener({
            "use": "subject-filter", "words": ["password reset"], "tag": "X-Subject-Filter",
        })]})
        blocked = yield send_message(gw.port(), "a@corp.example", ["b@corp.example"], message("a@corp.example", "Your Password Reset link"))
        self.assertEqual(blocked, (550, b"5.7.1 Subject not allowed"))
        code, _ = yield send_message(gw.port(), "a@corp.example", ["b@corp.example"], message("a@corp.example", "Scan"))
        self.assertEqual(code, 250)
        yield gw.delivered(1)
        [delivered] = gw.outbox_messages()
        self.assertEqual((delivered["Subject"], delivered["X-Subject-Filter"]), ("Scan", "passed"))


class SharedRedisEndToEnd(TestCase):
    @inlineCallbacks
    def test_two_gateways_share_one_rate_limit(self):
        require_tool(self, "redis-server", "redis-server")
        directory = tempfile.mkdtemp(prefix="gsr", dir="/tmp")
        self.addCleanup(shutil.rmtree, directory, True)
        server = yield start_redis_server(reactor, directory)
        self.addCleanup(server.stop)
        config = {
            "redis": {"unix_socket": server.socket_path},
            "listener": [listener({"use": "rate-limit", "key": "client-ip", "messages": 2, "per": "1h", "backend": "redis"})],
        }
        one = yield start_gateway(self, dict(config))
        two = yield start_gateway(self, dict(config))
        msg = message("a@corp.example")
        self.assertEqual((yield send_message(one.port(), "a@corp.example", ["b@corp.example"], msg))[0], 250)
        self.assertEqual((yield send_message(two.port(), "a@corp.example", ["b@corp.example"], msg))[0], 250)
        for gw in (one, two):
            refused = yield self.assertFailure(
                send_message(gw.port(), "a@corp.example", ["b@corp.example"], msg), smtplib.SMTPSenderRefused)
            self.assertEqual(refused.smtp_code, 451)
            self.assertIn(b"4.7.1", refused.smtp_error)
            self.assertIn(b"try again in 1800 seconds", refused.smtp_error)
        yield one.delivered(1)
        yield two.delivered(1)


class JsonLogEndToEnd(TestCase):
    @inlineCallbacks
    def test_delivery_outcome_is_logged_as_one_json_line(self):
        path = os.path.abspath(self.mktemp())
        gw = yield start_gateway(self, {"observer": [{"use": "json-log", "path": path}]})
        code, text = yield send_message(gw.port(), "a@corp.example", ["b@corp.example", "c@corp.example"], message("a@corp.example"))
        self.assertEqual(code, 250)
        [entry] = yield gw.delivered(1)
        with open(path, encoding="utf-8") as f:
            (line,) = [json.loads(line) for line in f]
        self.assertEqual(
            (line["queue_id"], line["outcome"], line["sender"], line["recipients"]),
            (entry.queue_id, "delivered", "a@corp.example", 2),
        )


SLOW_POLICY = '''
"""Answers every step later (a Deferred fired by the clock), refusing recipients named refuse@."""
from twisted.internet.task import deferLater
from twisted.plugin import IPlugin
from zope.interface import implementer
from gateway.policy.base import CONTINUE, PolicyBase
from gateway.policy.interfaces import IPolicyFactory, Reject


class Slow(PolicyBase):
    def __init__(self, clock):
        self.clock = clock

    def on_mail_from(self, session, sender):
        return deferLater(self.clock, 0.05, lambda: CONTINUE)

    def on_rcpt_to(self, session, recipient):
        # Later recipients answer sooner, so out-of-order completion would show.
        delay = 0.01 if recipient.startswith("b@") else 0.05
        verdict = Reject(550, "5.7.1", "refused later") if recipient.startswith("refuse@") else CONTINUE
        return deferLater(self.clock, delay, lambda: verdict)


@implementer(IPlugin, IPolicyFactory)
class SlowFactory:
    name = "slow-verdicts"
    description = "test: verdicts that arrive later"

    def build(self, options, context):
        return Slow(context.clock)


slow = SlowFactory()
'''


def pipelined_session(port: int) -> list[bytes]:
    """A raw client: EHLO, then MAIL, three RCPTs and DATA in one write; returns every reply line."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        f = sock.makefile("rb")

        def reply() -> list[bytes]:
            lines = [f.readline()]
            while lines[-1][3:4] == b"-":
                lines.append(f.readline())
            return lines

        reply()
        sock.sendall(b"EHLO client.test\r\n")
        ehlo = reply()
        assert any(b"PIPELINING" in line for line in ehlo), ehlo
        sock.sendall(
            b"MAIL FROM:<a@corp.example>\r\nRCPT TO:<x@corp.example>\r\nRCPT TO:<refuse@corp.example>\r\n"
            b"RCPT TO:<b@corp.example>\r\nDATA\r\n"
        )
        answers = [reply()[-1] for _ in range(5)]
        sock.sendall(b"From: a@corp.example\r\nSubject: pipelined\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        answers.append(reply()[-1])
        answers.append(reply()[-1])
        return answers


class AsyncVerdictsEndToEnd(PluginDirectoryMixin, TestCase):
    @inlineCallbacks
    def test_pipelined_commands_get_replies_in_order_while_verdicts_arrive_later(self):
        write = self.plugin_dir()
        write("h5test_slow_policy", SLOW_POLICY)
        gw = yield start_gateway(self, {"listener": [listener({"use": "slow-verdicts"})]})
        answers = yield deferToThread(pipelined_session, gw.port())
        self.assertEqual([a[:3] for a in answers], [b"250", b"250", b"550", b"250", b"354", b"250", b"221"])
        [entry] = yield gw.delivered(1)
        self.assertEqual(entry.envelope.recipients, ("x@corp.example", "b@corp.example"))
