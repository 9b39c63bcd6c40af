"""
The capture deliverer: "delivers" into a local Maildir outbox instead of sending anything.

It is the default when no Graph credentials are configured, so a new installation can be tried
end to end, and an admin can see exactly what would have been sent and to whom.  Each message
becomes one file (for the whole recipient set) in ``<outbox>/new/``, written with the Maildir
protocol (tmp/ → fsync → rename into new/ → fsync new/) so a mail reader never sees half a file
and a crash never loses one.  The envelope, which is not part of the message, is prepended as
headers::

    X-Graphsmtp-Queue-Id: 0SJ5Q4ZP1A2B3C4D5E6
    X-Graphsmtp-Envelope-From: <app@example.com>      (<> for the null sender)
    X-Graphsmtp-Envelope-To: <a@example.com>          (one per recipient, Bcc included)

The message body is copied from the spool file in the kernel (or in 1 MiB chunks), never read
into memory whole.  A retry after a crash may write the same message twice; that is the
at-least-once promise, and the queue id header shows the duplicate.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.delivery.interfaces import Delivered, IDeliverer, Transient
from gateway.spool.entry import SpoolEntry
from gateway.spool.fileops import DIR_MODE, FileOps, quietly


def _header_value(address: str) -> str:
    # Envelope addresses came through SMTP and cannot hold CR/LF; make sure anyway, because a
    # header line is being built from them.
    return "<" + "".join(ch for ch in address if ch not in "\r\n") + ">"


def envelope_headers(entry: SpoolEntry) -> bytes:
    lines = [f"X-Graphsmtp-Queue-Id: {entry.queue_id}",
             f"X-Graphsmtp-Envelope-From: {_header_value(entry.envelope.sender)}"]
    lines += [f"X-Graphsmtp-Envelope-To: {_header_value(r)}" for r in entry.envelope.recipients]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


@implementer(IDeliverer)
class CaptureDeliverer:
    log = Logger()
    #: The ``relay`` field of its log lines: the message went to the local outbox, not to Graph.
    relay = "capture"

    def __init__(self, outbox: str, threadpool: Any, reactor: Any, fileops: FileOps | None = None) -> None:
        self.outbox = os.path.abspath(outbox)
        self._pool = threadpool
        self._reactor = reactor
        self._ops = fileops or FileOps()
        self._host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
        self._count = 0

    def deliver(self, entry: SpoolEntry) -> Deferred:
        self._count += 1
        d = deferToThreadPool(self._reactor, self._pool, self._write, entry, self._count)
        return d.addCallbacks(lambda path: Delivered(detail=f"captured as {path}"), self._trouble,
                              errbackArgs=(entry,))

    def _trouble(self, failure: Failure, entry: SpoolEntry) -> Transient:
        if failure.check(OSError):
            reason = f"capture outbox {self.outbox}: {failure.value.strerror or failure.value}"
        else:
            self.log.failure("capture of {queue_id} failed", failure, queue_id=entry.queue_id)
            reason = f"capture outbox: internal error {failure.type.__name__}"
        return Transient(reason=reason)

    def _unique_name(self, entry: SpoolEntry, n: int) -> str:
        now = time.time()
        return f"{int(now)}.M{int(now * 1e6) % 1000000}P{os.getpid()}Q{n}_{entry.queue_id}.{self._host}"

    def _write(self, entry: SpoolEntry, n: int) -> str:
        """Blocking: runs in the thread pool."""
        ops = self._ops
        # The outbox holds whole messages: its own directory is private too (makedirs applies
        # ``mode`` to the last component only).
        os.makedirs(self.outbox, mode=DIR_MODE, exist_ok=True)
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(self.outbox, sub), mode=DIR_MODE, exist_ok=True)
        name = self._unique_name(entry, n)
        tmp_path = os.path.join(self.outbox, "tmp", name)
        new_path = os.path.join(self.outbox, "new", name)
        src = ops.open_read(entry.message_path)
        dst = None
        try:
            size = os.fstat(src).st_size
            dst = ops.open_new(tmp_path)
            ops.write(dst, envelope_headers(entry))
            ops.copy_range(src, dst, 0, size)
            ops.sync_file(dst)
            ops.close(dst)
            dst = None
            ops.rename(tmp_path, new_path)
            ops.sync_dir(os.path.join(self.outbox, "new"))
        except BaseException:
            if dst is not None:
                quietly(ops.close, dst)
            quietly(ops.unlink, tmp_path)
            raise
        finally:
            ops.close(src)
        return new_path


__all__ = ["CaptureDeliverer", "envelope_headers"]
