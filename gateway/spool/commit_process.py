"""
Group commits in a child process, so that the spool's file work does not wait for the GIL.

A commit is a string of short system calls (create two files, write them, rename them, one
``syncfs``), each of which gives up the GIL and must take it back.  In the daemon the reactor
thread holds the GIL for long stretches while it serves other sessions, and a thread that
only wants it back for a moment waits behind it, call after call (CPython's "convoy effect",
https://bugs.python.org/issue7946).  Measured with ten connections (issue 13): a batch of about
five 10 KB commits took 5-7 ms in the spool's thread, 4 ms of it writing the temp files, against
0.5 ms for the same calls on their own.  In a process of its own the same code needs no GIL
but its own, and runs on the other core while the reactor serves the sessions.

So the daemon (L{gateway.wiring.build_spool}, ``[spool] committer = "process"``) starts one
child running L{main}: it reads batches of L{CommitRequest} from its stdin, runs
L{Acceptor.publish_batch} on them, exactly as the thread would, and writes each batch's results
to its stdout.  Both directions are framed by a 4-byte length
(L{twisted.protocols.basic.Int32StringReceiver}): batches as plain values
(L{gateway.spool.commit_wire}), answers as small pickles; the pipe is private to the two processes.
The reactor talks to the child directly: no thread hand-off is left on the commit's path.

What stays in the thread pool: a batch holding a message streamed to a temp file (large
messages: the file is open in this process), and everything that is not intake.

The child ends with its parent (``PR_SET_PDEATHSIG``) and at the end of its stdin.  If it
ends on its own, the batches it had not answered fail (``451``: the clients send them again),
and what it may have committed of them is removed first (L{Acceptor.undo}), so a retry is not
delivered twice; the next batch starts a new child.  A child that cannot be started (or
written to) leaves its batch to the spool's threads, and after three in a row that end before
their first answer the threads commit everything.
"""

from __future__ import annotations

import collections
import ctypes
import os
import pickle
import select
import signal
import struct
import sys
import time
from typing import Any, Callable, NoReturn, Optional

from twisted.application.service import Service
from twisted.internet import error as net_error
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from gateway.spool.accept import Acceptor, CommitRequest, CommitResult
from gateway.spool.commit_wire import WireError, decode_batch, encode_batch
from gateway.spool.entry import SpoolEntry
from gateway.spool.fileops import FileOps
from gateway.spool.inflight import watch_descriptor
from gateway.spool.interfaces import SpoolError
from gateway.spool.journal import IntakeJournal, boot_id, journal_path
from gateway.spool.layout import SpoolFiles

#: Results of a large batch are a few hundred bytes per message; this bounds a broken child.
MAX_FRAME = 64 * 1024 * 1024
#: How long a stopping gateway waits for the child to finish its batch and exit.
STOP_GRACE = 30.0
#: Children in a row that end before answering anything: then commits stay in the threads.
GIVE_UP_AFTER = 3
#: The child's exit status when it cannot read a batch (L{_refuse}).
EXIT_UNREADABLE_BATCH = 3
#: Environment the child keeps: where Python finds its modules, and the locale.
_KEPT_ENVIRONMENT = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONHASHSEED")
_LENGTH = struct.Struct("!I")
_PR_SET_PDEATHSIG = 1


class _Frames(Int32StringReceiver):
    """The child's stdout, cut into replies."""

    MAX_LENGTH = MAX_FRAME

    def __init__(self, on_reply: Any) -> None:
        self._on_reply = on_reply

    def stringReceived(self, string: bytes) -> None:
        self._on_reply(string)

    def lengthLimitExceeded(self, length: int) -> None:
        self._on_reply(None)


class _Child(ProcessProtocol):
    """One run of the child: its replies in order, and how it ended."""

    log = Logger()
    transport: Any  # the IProcessTransport, set by spawnProcess before anything is sent

    def __init__(self, owner: "CommitProcess") -> None:
        self._owner = owner
        self._frames = _Frames(self._reply)
        # Each batch sent and not yet answered.
        self.waiting: collections.deque[tuple[Deferred, list[CommitRequest]]] = collections.deque()
        # A reply could not be read: nothing more from this child is believed.
        self._broken = False
        self.ended: Deferred = Deferred()
        #: Batches answered (a child that ends before its first answer may not start at all).
        self.answered = 0
        #: Where its journal is, if it keeps one (L{gateway.spool.journal}), and a descriptor
        #: of the spool's filesystem opened before it started: a flush through it reports any
        #: write the kernel failed since (L{gateway.spool.inflight.settle}).
        self.journal: Optional[str] = None
        self.watch: Optional[int] = None

    def send(self, requests: list[CommitRequest]) -> Deferred:
        """
        Send a batch.  If it cannot be written, the child goes (what it got of the batch is
        unknown) and the error propagates: the caller commits the batch elsewhere, so it is
        not waited for here, nor undone when this child ends.
        """
        data = encode_batch(requests)
        try:
            self.transport.write(_LENGTH.pack(len(data)) + data)
        except BaseException:
            self._broken = True
            _kill(self)
            raise
        d: Deferred = Deferred()
        self.waiting.append((d, requests))
        return d

    def outReceived(self, data: bytes) -> None:
        if not self._broken:
            self._frames.dataReceived(data)

    def errReceived(self, data: bytes) -> None:
        # Nothing is written there unless the child breaks: its traceback goes to our log.
        self.log.error("spool commit process: {text}", text=data.decode("utf-8", "replace").rstrip())

    def _reply(self, data: Optional[bytes]) -> None:
        if not self.waiting or self._broken:
            return
        _, requests = self.waiting[0]
        try:
            if data is None:
                raise ValueError("a reply longer than the frame limit")
            results = _results(self._owner.acceptor, requests, pickle.loads(data))
        except Exception:
            # What the child did with the batch is unknown: it goes, and the batch is undone
            # with the others it held (processEnded).
            self._broken = True
            self.log.failure("unreadable reply from the spool's commit process; it is stopped")
            _kill(self)
            return
        d, _ = self.waiting.popleft()
        self.answered += 1
        if isinstance(results, Exception):
            d.errback(Failure(results))
        else:
            d.callback(results)

    def processEnded(self, reason: Failure) -> None:
        """
        Batches still unanswered may be in place already (the child may have died after the
        renames, even after the flush): their clients are told to try again, so their entries
        are removed first, as a failed commit in the thread removes its own.
        """
        self._owner.child_ended(self, reason)  # first: a commit made by an answer below starts another child
        waiting, self.waiting = list(self.waiting), collections.deque()
        if not waiting and (self.journal is None or reason.check(net_error.ProcessDone)):
            self._close_watch()
            self.ended.callback(None)  # a child that ended cleanly retired its journal (or left it for start-up)
            return
        failed = SpoolError("the spool's commit process ended during the commit")

        def answer(_: Any) -> None:
            for d, requests in waiting:
                d.callback([failed] * len(requests))

        undone = self._owner.undo([request for _, requests in waiting for request in requests], self.journal,
                                  self.watch)
        undone.addErrback(lambda f: self.log.failure("removing what the spool's commit process left failed", f))
        undone.addCallback(answer).addBoth(self._watched).addBoth(self.ended.callback)

    def _watched(self, result: Any) -> Any:
        self._close_watch()
        return result

    def _close_watch(self) -> None:
        if self.watch is not None:
            fd, self.watch = self.watch, None
            os.close(fd)


class CommitProcess(Service):
    """
    The parent's end: L{run_batch} sends a batch to the child and gives a Deferred of its
    results (one per request, as L{Acceptor.publish_batch} returns them).  Used on the reactor
    thread only.  ``acceptor`` is this process's (its set of ids being committed is what
    recovery checks).
    """

    log = Logger()
    name: Optional[str] = "graphsmtp-spool-commits"  # type: ignore[assignment]  # Service declares it None

    def __init__(self, reactor: Any, acceptor: Acceptor, files: SpoolFiles,
                 undo: Callable[[list[CommitRequest], Optional[str], Optional[int]], Deferred],
                 flush_per_file: bool = False,
                 python: str = sys.executable, module: str = "gateway.spool.commit_process",
                 journal: bool = True) -> None:
        self._reactor = reactor
        #: This process's (its set of ids being committed is what recovery checks).
        self.acceptor = acceptor
        self._files = files
        #: Removes the entries of unanswered requests (in the spool's threads): L{Acceptor.undo}.
        self.undo = undo
        self._flush_per_file = flush_per_file
        self._journal = journal and not flush_per_file
        self._python = python
        self._module = module
        self._child: Optional[_Child] = None
        self._failed_starts = 0
        #: Children started so far (tests and the status notes).
        self.started = 0

    @property
    def usable(self) -> bool:
        """False once children keep ending before their first answer: the threads commit instead."""
        return self._failed_starts < GIVE_UP_AFTER

    @property
    def journal(self) -> Optional[str]:
        """The running child's intake journal, if it keeps one."""
        return None if self._child is None else self._child.journal

    @property
    def pid(self) -> Optional[int]:
        child = self._child
        return None if child is None or child.transport is None else child.transport.pid

    def startService(self) -> None:
        super().startService()
        self._start_child()

    def _start_child(self) -> _Child:
        child = _Child(self)
        # The tag is read now: an intake worker takes its supervisor's after building the spool.
        args = [self._python, "-m", self._module, self._files.layout.root, self._files.tag,
                str(os.getpid())] + (["--fdatasync"] if self._flush_per_file else [])
        if self._journal:
            child.journal = journal_path(self._files.layout.tmp, self._files.tag, self.started + 1)
            args.append("--journal=" + os.path.basename(child.journal))
            child.watch = watch_descriptor(self._files.layout.tmp)
        env = {k: v for k, v in os.environ.items() if k in _KEPT_ENVIRONMENT}
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        try:
            self._reactor.spawnProcess(child, self._python, args, env=env, childFDs={0: "w", 1: "r", 2: "r"})
        except BaseException:
            child._close_watch()
            raise
        self._child = child
        self.started += 1
        return child

    def run_batch(self, requests: list[CommitRequest]) -> Optional[Deferred]:
        """
        Commit ``requests`` in the child (a child that ended is started again first).  None
        when the child cannot take them — stopped, or it could not be started or written to
        (no file descriptors left, say): the caller commits them in the spool's threads.
        """
        if not self.running or not self.usable:
            return None
        try:
            child = self._child if self._child is not None else self._start_child()
        except Exception:
            self._failed_starts += 1
            self.log.failure("could not start the spool's commit process; the spool's threads commit the batch")
            return None
        ids = [request.entry.queue_id for request in requests]
        self.acceptor.committing(ids)  # before the child can see them: recovery here leaves them be

        def done(result: Any) -> Any:
            self.acceptor.committed(ids)
            return result

        try:
            d = child.send(requests)
        except Exception:
            done(None)
            self.log.failure("could not hand a batch to the spool's commit process; the spool's threads commit it")
            return None
        return d.addBoth(done)

    def child_ended(self, child: _Child, reason: Failure) -> None:
        if child is self._child:
            self._child = None
        if not self.running or reason.check(net_error.ProcessDone):
            return
        self._failed_starts = 0 if child.answered else self._failed_starts + 1
        if self.usable:
            self.log.error("the spool's commit process ended unexpectedly ({reason}); the next commit starts "
                           "another", reason=reason.getErrorMessage())
        else:
            self.log.error("the spool's commit process ended {count} times before committing anything "
                           "({reason}); intake commits in the spool's threads from now on",
                           count=self._failed_starts, reason=reason.getErrorMessage())

    def stopService(self) -> Deferred:
        """Close the child's stdin: it finishes its batch and exits (killed after L{STOP_GRACE})."""
        super().stopService()
        child = self._child
        if child is None or child.transport is None:
            return succeed(None)
        child.transport.closeStdin()
        kill = self._reactor.callLater(STOP_GRACE, _kill, child)
        return child.ended.addBoth(lambda _: kill.cancel() if kill.active() else None)


def _results(acceptor: Acceptor, requests: list[CommitRequest], answers: Any) -> Any:
    """
    The results of ``requests``, as L{Acceptor.publish_batch} gives them, from the child's
    ``answers`` (L{_answers}); a batch-wide L{SpoolError} stays one.  A reply that does not fit
    its batch raises, and is treated as unreadable.
    """
    if isinstance(answers, SpoolError):
        return answers
    if not isinstance(answers, list) or len(answers) != len(requests):
        raise ValueError("a reply that does not match its batch")
    return [answer if isinstance(answer, SpoolError) else acceptor.committed_entry(request, *answer)
            for request, answer in zip(requests, answers, strict=True)]


def _answers(results: list[CommitResult]) -> list[Any]:
    """What the child sends back for each result: its size and digest, or its error."""
    return [(result.size, result.message_digest) if isinstance(result, SpoolEntry) else result for result in results]


def _kill(child: _Child) -> None:
    try:
        child.transport.signalProcess("KILL")
    except (net_error.ProcessExitedAlready, OSError):
        pass


# -- the child ---------------------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """
    Linux: SIGKILL when the parent goes, so no commit outlives the process that will answer it
    (an intake worker's sweep may be cleaning up after it).  The signals that stop the daemon
    are the parent's to act on: a ``systemctl stop`` signals every process of the unit, and the
    child must finish the batch the stopping daemon still waits for; it ends when its stdin does.
    """
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    try:
        refused = ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0
    except (OSError, AttributeError):  # not Linux: the end of stdin still ends the child
        refused = False
    if refused:
        sys.stderr.write(f"PR_SET_PDEATHSIG refused ({os.strerror(ctypes.get_errno())}): this process ends "
                         "when its stdin does, not at once with its parent\n")
        sys.stderr.flush()
    if os.getppid() != parent:  # gone before the prctl took effect
        os._exit(1)


def _read_exactly(fd: int, count: int) -> Optional[bytes]:
    """``count`` bytes from ``fd``, or None at its end."""
    chunks = []
    while count:
        chunk = os.read(fd, count)
        if not chunk:
            return None
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def serve(acceptor: Acceptor, ops: FileOps, read_fd: int = 0, write_fd: int = 1,
          journal: Optional[IntakeJournal] = None) -> None:
    """
    Commit every batch read from ``read_fd`` until its end; each batch's results to
    ``write_fd``, written with ``ops`` (the spool's own whole-write loop).  With a
    ``journal``, its generations are retired on time between batches, and at the end it is
    retired and removed.
    """
    while True:
        _wait_for_input(read_fd, journal)
        header = _read_exactly(read_fd, _LENGTH.size)
        payload = None if header is None else _read_exactly(read_fd, _LENGTH.unpack(header)[0])
        if payload is None:
            if journal is not None:
                _close(journal)
            return
        try:
            requests = decode_batch(payload)
        except WireError as e:
            _refuse(e, journal)
        try:
            results: Any = _answers(acceptor.publish_batch(
                requests, journal=journal if journal is not None and journal.usable else None))
        except Exception as e:  # a bug, not a disk error (those come back per request)
            results = SpoolError(f"spool commit failed unexpectedly: {e!r}")
        reply = pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL)
        ops.write(write_fd, _LENGTH.pack(len(reply)) + reply)
        if journal is not None and journal.retire_in() == 0:
            _retire(journal)


def _refuse(error: WireError, journal: Optional[IntakeJournal]) -> NoReturn:
    """
    A batch this child cannot read (most likely one from a parent running other code: the
    package was changed while the daemon ran): nothing of it is committed, and the child ends
    without an answer.  Answering an error instead would fail every later batch the same way;
    ending makes the parent fail this batch (451), start another child, and after
    L{GIVE_UP_AFTER} that end before their first answer, commit in its own threads.
    """
    _tell(f"spool commit process: {error}")
    if journal is not None:
        _close(journal)
    raise SystemExit(EXIT_UNREADABLE_BATCH)


def _wait_for_input(read_fd: int, journal: Optional[IntakeJournal]) -> None:
    """Until ``read_fd`` has something to read, retire the journal's generation when it is due."""
    while journal is not None:
        wait = journal.retire_in()
        if wait is None or (wait > 0 and select.select([read_fd], [], [], wait)[0]):
            return
        _retire(journal)


def _retire(journal: IntakeJournal) -> None:
    try:
        journal.retire()
    except OSError as e:
        _tell(f"could not retire the intake journal {journal.path} ({e}): batches are flushed with the "
              "filesystem from now on, and the journal stays for the next start-up to check")


def _close(journal: IntakeJournal) -> None:
    try:
        journal.close()
    except OSError as e:
        _tell(f"could not retire the intake journal {journal.path} ({e}): it stays for the next start-up to check")


def _tell(text: str) -> None:
    """To stderr, which the parent logs."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _open_journal(files: SpoolFiles, ops: FileOps, name: str) -> Optional[IntakeJournal]:
    """This child's journal, or None where it cannot help (no syncfs to retire it, no boot id to read it by)."""
    boot = boot_id()
    if boot is None or not ops.flushes_whole_filesystem:
        return None
    try:
        return IntakeJournal(ops, os.path.join(files.layout.tmp, os.path.basename(name)), boot)
    except OSError as e:
        _tell(f"no intake journal ({e}); each batch is flushed with the filesystem")
        return None


def main(argv: Optional[list[str]] = None) -> None:
    """
    ``python -m gateway.spool.commit_process ROOT TAG PARENT_PID [--fdatasync] [--journal=NAME]``:
    started by L{CommitProcess}.
    """
    args = sys.argv[1:] if argv is None else argv
    root, tag, parent = args[0], args[1], int(args[2])
    _die_with_parent(parent)
    ops = FileOps().flush_per_file() if "--fdatasync" in args[3:] else FileOps()
    files = SpoolFiles(root, ops, tag, time.time)
    names = [arg.partition("=")[2] for arg in args[3:] if arg.startswith("--journal=")]
    journal = _open_journal(files, ops, names[0]) if names else None
    serve(Acceptor(files), ops, journal=journal)


if __name__ == "__main__":
    main()


__all__ = ["CommitProcess", "serve", "main"]
