"""
Review: ``header-rewrite`` must not turn a decodable Subject into a policy failure.  A Subject
whose encoded words decode to a line break used to make the tagged value contain CR LF, which
the chain (rightly) refuses as header injection — answering 451 for that message forever.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.policy.chain import PolicyChain
from gateway.policy.context import PolicyContext
from gateway.policy.header_rewrite import build
from gateway.policy.testing import make_session, run_transaction
from gateway.smtp.headers import apply_edits

CLIENT_HEADERS = b"From: a@corp.example\r\nSubject: =?utf-8?q?hello=0D=0ABcc:_x@evil.example?=\r\nTo: b@corp.example\r\n"


class SubjectTagTests(SynchronousTestCase):
    def test_tag_on_subject_with_encoded_line_break(self):
        chain = PolicyChain([build({"subject_tag": "[Scan]"}, PolicyContext(clock=Clock()))])
        result = self.successResultOf(run_transaction(
            chain, make_session(), "a@corp.example", ["b@corp.example"], CLIENT_HEADERS + b"\r\nbody\r\n",
        ))
        self.assertEqual(result.step, "message")
        self.assertTrue(result.allowed, result.result)
        written = apply_edits(CLIENT_HEADERS, result.result.edits)
        lines = written.split(b"\r\n")
        # No injected header line; the Subject is one (possibly folded) field starting with the tag.
        self.assertFalse(any(line.lower().startswith(b"bcc:") for line in lines), written)
        subject = [line for line in lines if line.lower().startswith(b"subject:")]
        self.assertEqual(len(subject), 1, written)
        self.assertIn(b"[Scan]", subject[0])
