"""
incoming/: the drop box the daemon shares with the local commands.  The sendmail command
leaves complete entries there (<id>.msg + <id>.env), which the daemon imports into the queue;
the queue command leaves control requests (<action>-<target>.ctl) for the running daemon.

How a drop-off is written and imported without losing or doubling it across a crash is the
"accept" and "import" part of the L{gateway.spool} package docstring.  Blocking: spool
threads, or the queue command (L{DropBox.request_control}).
"""

from __future__ import annotations

import os
import pwd
from typing import Optional, Union

import attrs

from gateway.spool.accept import Acceptor
from gateway.spool.entries import StoredEntries
from gateway.spool.entry import SpoolEntry
from gateway.spool.fileops import quietly, spool_error
from gateway.spool.interfaces import SpoolError
from gateway.spool.layout import ENV, MSG, SpoolFiles, SpoolLayout
from gateway.spool.message_rules import MessageInspection, inspect_message_file
from gateway.spool.quarantine import Quarantine, Quarantined
from gateway.spool.queueid import is_queue_id
from gateway.spool.record import RecordError, decode_record

CONTROL = ".ctl"
CONTROL_ACTIONS = ("retry", "delete", "requeue", "hold", "release")
# Actions whose target may be "all" as well as one queue id.
_ALL_ACTIONS = ("retry", "hold", "release")
ALL = "all"
# A sendmail command may legitimately be half-way through writing into incoming/ while the
# daemon starts; its leftovers are only treated as abandoned after this long.
INCOMING_GRACE = 3600.0
ABANDONED_TEMP_AGE = 86400.0


@attrs.frozen
class ControlRequest:
    """An admin request dropped by the queue command: ``action`` on ``target`` (id or "all")."""

    action: str
    target: str

    @property
    def file_name(self) -> str:
        return f"{self.action}-{self.target}{CONTROL}"

    @classmethod
    def from_file_name(cls, name: str) -> Optional["ControlRequest"]:
        if not name.endswith(CONTROL) or "-" not in name:
            return None
        action, target = name[: -len(CONTROL)].split("-", 1)
        if action not in CONTROL_ACTIONS or not (is_queue_id(target) or (target == ALL and action in _ALL_ACTIONS)):
            return None
        return cls(action, target)


@attrs.frozen
class Refused:
    """
    A drop-off whose message breaks an intake rule (L{gateway.spool.message_rules}): ``entry``
    as stored in failed/, and ``reason``.  ``error`` says why it could not be moved to failed/;
    it is then queued (and listed among the scan's entries) as it would have been before the
    rule, rather than stranded in a queue nobody schedules.
    """

    entry: SpoolEntry
    reason: str
    error: Optional[str] = None


@attrs.define
class IncomingScan:
    """What one pass over incoming/ found: entries now in the queue, and admin requests."""

    entries: list[SpoolEntry] = attrs.field(factory=list)
    requests: list[ControlRequest] = attrs.field(factory=list)
    quarantined: list[Quarantined] = attrs.field(factory=list)
    errors: list[str] = attrs.field(factory=list)
    refused: list[Refused] = attrs.field(factory=list)


@attrs.frozen
class _DropOff:
    """Where the files of one sendmail entry are (or go) during its import."""

    queue_id: str
    incoming_env: str
    incoming_msg: str
    queued_env: str
    queued_msg: str

    @classmethod
    def of(cls, layout: SpoolLayout, queue_id: str) -> "_DropOff":
        inc, q = layout.incoming, layout.queue
        return cls(queue_id, SpoolLayout.path(inc, queue_id, ENV), SpoolLayout.path(inc, queue_id, MSG),
                   SpoolLayout.path(q, queue_id, ENV), SpoolLayout.path(q, queue_id, MSG))


@attrs.frozen
class _Imported:
    """A drop-off now queued, and the intake rule its message breaks (None: none)."""

    entry: SpoolEntry
    problem: Optional[str]


#: What importing one drop-off came to: the queued entry, something quarantined, or nothing
#: to do (an import finished earlier, except for removing its incoming record).
ImportResult = Union[_Imported, Quarantined, None]


def _owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class DropBox:
    """
    Imports sendmail drop-offs and collects control requests.  ``node`` is stamped into the
    provenance of what is imported.
    """

    def __init__(self, files: SpoolFiles, acceptor: Acceptor, entries: StoredEntries,
                 quarantine: Quarantine, node: Optional[str] = None) -> None:
        self._files = files
        self._acceptor = acceptor
        self._entries = entries
        self._quarantine = quarantine
        self.node = node

    # -- control requests (the queue command's side) ---------------------------------------

    def request_control(self, request: ControlRequest) -> str:
        """Drop an admin request for the running daemon (queue command)."""
        ops, incoming = self._files.ops, self._files.layout.incoming
        path = os.path.join(incoming, request.file_name)
        tmp = os.path.join(incoming, f".{request.file_name}.{os.getpid()}.tmp")
        fd = ops.open_new(tmp)
        ops.close(fd)
        ops.rename(tmp, path)
        return path

    # -- the daemon's side -----------------------------------------------------------------

    def scan(self, take_requests: bool = True) -> IncomingScan:
        """
        Import complete sendmail entries into the queue and (unless ``take_requests`` is
        false) collect and consume control requests.  Cheap when incoming/ is empty (one
        directory listing), so the daemon can poll it.
        """
        scan = IncomingScan()
        now = self._files.now()
        try:
            with os.scandir(self._files.layout.incoming) as it:
                names = {e.name for e in it}
        except FileNotFoundError:
            return scan
        except OSError as e:
            raise spool_error(e, "list incoming/") from None
        for name in sorted(names):
            self._take(name, names, now, take_requests, scan)
        return scan

    def _take(self, name: str, names: set[str], now: float, take_requests: bool, scan: IncomingScan) -> None:
        """Deal with one name of the listing ``names`` (temp file, request, drop-off half…)."""
        path = os.path.join(self._files.layout.incoming, name)
        if name.startswith("."):
            if name.endswith(".tmp") and self._older_than(path, now, ABANDONED_TEMP_AGE):
                quietly(self._files.ops.unlink, path)
            return
        request = ControlRequest.from_file_name(name)
        if request is not None:
            if take_requests and quietly(self._files.ops.unlink, path) is None:
                scan.requests.append(request)
            return
        queue_id, _, suffix = name.partition(".")
        if not is_queue_id(queue_id) or "." + suffix not in (MSG, ENV):
            if self._older_than(path, now, INCOMING_GRACE) and quietly(self._quarantine.move_file, path) is None:
                scan.quarantined.append(Quarantined(name, "unknown file in incoming/"))
            return
        if "." + suffix == MSG:
            self._drop_unrecorded_message(path, queue_id, names, now)
        else:
            self._import_into(scan, queue_id, queue_id + MSG in names)

    def _import_into(self, scan: IncomingScan, queue_id: str, message_listed: bool) -> None:
        try:
            result = self._import_one(queue_id, message_listed)
        except SpoolError as e:
            # Left in incoming/ (or half-imported, which the next scan finishes); the
            # entries imported so far must still reach the runner.
            scan.errors.append(f"{queue_id}: {e}")
            return
        if isinstance(result, Quarantined):
            scan.quarantined.append(result)
        elif result is not None and result.problem is not None:
            self._refuse(scan, result.entry, result.problem)
        elif result is not None:
            scan.entries.append(result.entry)

    def _refuse(self, scan: IncomingScan, entry: SpoolEntry, problem: str) -> None:
        """
        Fail a queued drop-off that breaks an intake rule.  Import first, then fail: both are
        crash-safe protocols, and a crash between them leaves a queued entry — delivered as
        before the rule, never lost.
        """
        reason = f"sendmail drop-off refused at import: {problem}"
        try:
            failed = self._entries.fail(entry, reason)
        except SpoolError as e:
            scan.refused.append(Refused(entry, reason, str(e)))
            scan.entries.append(entry)
            return
        scan.refused.append(Refused(failed, reason))

    def _drop_unrecorded_message(self, path: str, queue_id: str, names: set[str], now: float) -> None:
        if (queue_id + ENV not in names and self._older_than(path, now, INCOMING_GRACE)
                and not os.path.exists(os.path.join(self._files.layout.incoming, queue_id + ENV))):
            # sendmail died between its two renames: never acknowledged.
            quietly(self._files.ops.unlink, path)

    @staticmethod
    def _older_than(path: str, now: float, age: float) -> bool:
        try:
            return now - os.stat(path).st_mtime > age
        except OSError:
            return False

    def _import_one(self, queue_id: str, message_in_incoming: bool) -> ImportResult:
        drop = _DropOff.of(self._files.layout, queue_id)
        if message_in_incoming or os.path.exists(drop.incoming_msg):  # may be renamed in since the listing
            source_msg = drop.incoming_msg
        elif os.path.exists(drop.queued_env):
            quietly(self._files.ops.unlink, drop.incoming_env)  # import finished; only the unlink was lost
            return None
        elif os.path.exists(drop.queued_msg):
            source_msg = drop.queued_msg  # an import cut short after moving the message: finish it
        else:
            quietly(self._quarantine.move_file, drop.incoming_env)
            return Quarantined(queue_id + ENV, "sendmail record without a message")
        read = self._read(drop, source_msg)
        if isinstance(read, str):
            quietly(self._quarantine.move_file, drop.incoming_env)
            quietly(self._quarantine.move_file, source_msg)
            return Quarantined(queue_id, read)
        entry, owner_uid = read
        inspection = self._inspect(entry, source_msg)
        entry = self._stamp(entry, owner_uid, inspection)
        self._acceptor.move_into_queue(entry, source_msg, "import from incoming/")
        quietly(self._files.ops.unlink, drop.incoming_env)
        return _Imported(entry, inspection.problem)

    def _read(self, drop: _DropOff, source_msg: str) -> Union[tuple[SpoolEntry, int], str]:
        """The drop-off's record and the uid of its owner, or why it cannot be an entry."""
        try:
            st = os.stat(drop.incoming_env)
            entry = decode_record(self._files.ops.read_file(drop.incoming_env), drop.queued_msg, drop.queue_id)
            size = os.stat(source_msg).st_size
        except FileNotFoundError as e:
            return f"unreadable sendmail entry: {e}"
        except RecordError as e:
            return f"unreadable sendmail entry: {e}"
        except OSError as e:
            # Transient (EMFILE, EIO) or fixable (permissions): the drop-off was acknowledged,
            # so it stays in incoming/ and the next scan tries again.
            raise spool_error(e, f"read sendmail entry {drop.queue_id}") from None
        if size != entry.size:
            return f"sendmail message is {size} bytes, record says {entry.size}"
        return entry, st.st_uid

    def _inspect(self, entry: SpoolEntry, source_msg: str) -> MessageInspection:
        """
        One read of the message: the intake rules SMTP applies at the end of DATA, and the
        digest when the record has none (written by an older sendmail command: digested now,
        so what is queued from here on is protected like everything else).
        """
        digest = entry.message_digest is None
        try:
            return inspect_message_file(source_msg, digest=digest)
        except OSError as e:
            # Like a record that cannot be read now: stays in incoming/ for the next scan.
            raise spool_error(e, f"{'digest' if digest else 'read'} sendmail entry {entry.queue_id}") from None

    def _stamp(self, entry: SpoolEntry, owner_uid: int, inspection: MessageInspection) -> SpoolEntry:
        # The file owner, not what the record claims, says which local user submitted it.
        return attrs.evolve(entry, message_digest=entry.message_digest or inspection.digest,
                            provenance=attrs.evolve(entry.provenance, listener="sendmail",
                                                    auth_identity=_owner_name(owner_uid),
                                                    node=entry.provenance.node or self.node))


__all__ = ["DropBox", "ControlRequest", "IncomingScan", "Refused", "ALL", "CONTROL", "CONTROL_ACTIONS"]
