"""
A graceful stop (421 4.3.2) while the session waits for its own answer: nothing may follow that
last reply.  Found by the review of this round's session changes (it predates them): with the
spool writer for DATA still being opened when the gateway stopped, the session sent "354 End
data ..." after its 421 on the closing connection and never released the writer it then got.
"""
from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.testing.memory_spool import MemorySpool
from tests.smtp_helpers import Session, make_factory


class SlowOpenSpool(MemorySpool):
    """open_writer answers when the test says (DirectorySpool's first open is a thread hop)."""

    def open_writer(self) -> Deferred:
        inner = super().open_writer()
        d: Deferred = Deferred()
        self.__dict__.setdefault("opening", []).append((d, inner))
        return d

    def open_now(self) -> None:
        d, inner = self.opening.pop()
        inner.addCallback(d.callback)


class ShutdownDuringWriterOpen(SynchronousTestCase):

    def test_nothing_said_after_the_421_and_writer_released(self):
        spool = SlowOpenSpool()
        s = Session(make_factory(spool=spool, clock=Clock()))
        self.addCleanup(s.close)
        s.ehlo()
        s.envelope()
        self.assertEqual(s.send(b"DATA\r\n"), [])
        s.proto.shutdown()
        self.assertEqual(s.lines(), [b"421 4.3.2 gw.test Service shutting down, try again later"])
        spool.open_now()
        self.assertEqual(s.lines(), [], "a reply was written after the final 421")
        self.assertEqual([w.aborted for w in spool.writers], [True], "the writer opened after the 421 was not released")
