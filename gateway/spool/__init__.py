"""
The spool: accepted messages stored on disk, and the crash-safety rules that make "accepted"
mean "survives a crash".

This docstring is the one description of the on-disk layout and of every protocol that
changes it; the modules below point here instead of repeating it.  The daemon runs the
blocking operations in its spool thread pool (through L{gateway.spool.store}), and intake's
group commits in a child process of their own (L{gateway.spool.commit_process}: the same
L{gateway.spool.accept.Acceptor.publish_batch}, off the GIL the SMTP sessions hold); the
sendmail and queue commands run them directly.  One implementation (L{gateway.spool.disk.SpoolDisk}
and the modules behind it) is what guarantees that all three agree on the formats and on the
rules below.

The modules that carry out these rules::

    disk.py        SpoolDisk: the one façade the daemon, sendmail and the queue command use
    layout.py      where everything lives (SpoolLayout, SpoolFiles) and the spool lock
    accept.py      accepting a message: temp files, group commit, moving a message into queue/
    inflight.py    the marker of a batch in place but not yet flushed, and its check at start-up
    incoming.py    incoming/: sendmail drop-offs imported into the queue, control requests
    entries.py     accepted entries: load, rewrite, delivered, failed, hold, release, requeue
    recovery.py    start-up: half-written files, interrupted moves, the schedule hints
    quarantine.py  moving unreadable things aside, never deleting them
    message_rules.py  the SMTP end-of-DATA octet rules, for messages that arrive as files
    fileops.py, dirsync.py   the OS calls (replaceable in tests), batched directory fsyncs
    record.py, entry.py      the envelope/state record format and the SpoolEntry value
    store.py, writer.py, group_commit.py   the Deferred-driven spool the daemon runs on
    commit_process.py        the child process the daemon's group commits run in

Layout (directories 0700, files 0600)::

    <spool>/
      lock                 flock()ed by the running daemon; holds its pid
      tmp/                 the daemon's files being written: <tag>.<id>.msg / .env / ...,
                           and <tag>.<first>.<last>.inflight while a batch is in place unflushed,
                           and <tag>.<n>.journal: the commit process's intake journal
      queue/<id>.msg       the message: RFC 5322 bytes with CRLF line ends, exactly as handed
                           to the spool writer (gateway headers included), nothing added
      queue/<id>.env       the envelope/state record (format: L{gateway.spool.record});
                           its mtime is set to the next attempt time (a hint, see below)
      incoming/            the sendmail command's drop box: .<id>.*.tmp while writing, then
                           <id>.msg + <id>.env; also control requests <action>-<target>.ctl
                           from the queue command while the daemon runs
      failed/<id>.msg/.env/.reason   permanently failed (reason: human-readable text)
      archive/<id>.msg/.env          delivered, when archive_delivered is on
      held/<id>.msg/.env   put on hold by the admin (graphsmtp-queue hold): outside queue/, so
                           the runner never sees, attempts or expires it until released
      quarantine/          anything unreadable, moved aside with a log line, never deleted

Completeness rule: **the record's presence marks a complete entry.**  Every protocol is
ordered so that a crash at any instant leaves either no entry or a whole one — with one
exception, named in "accept": a power loss while a batch is in place but not yet flushed,
whose entries recovery checks:

- accept (daemon and sendmail): write the message to a temp file and the record to another;
  rename the message into place, then the record; make the files and the renames durable.
  Only then is the message acknowledged (250, or exit status 0).  A message file without a
  record was never acknowledged and is deleted at recovery.  The daemon group-commits
  (L{gateway.spool.accept.Acceptor.publish_batch}, L{gateway.spool.group_commit}): every
  message whose DATA ended while the previous batch was flushing is written and renamed into
  queue/ (or held/), then *one* flush of the filesystem (``syncfs``, Linux >= 5.8) makes all
  of it durable, renames included — one device flush per batch, and a lone message pays one.
  Without ``syncfs`` (``[spool] flush = "fdatasync"``, older kernels) each file is
  fdatasynced first and each destination directory fsynced after the renames, as the
  commands do.  While a batch is in place but not yet flushed, an empty marker
  ``tmp/<tag>.<first id>.<last id>.inflight`` says so: a power loss in that window can leave
  an entry whose record or message never reached the disk (never acknowledged), and recovery
  checks the entries in a marker's range and quarantines the incomplete ones
  (L{gateway.spool.inflight}).  In the commit process the flush is instead one ``fdatasync``
  of its intake journal, which holds the batch's records and messages whole, *before* the
  renames (no marker: the journal is the batch's copy until a flush of the filesystem, within
  0.1 s, retires it); after another boot, recovery writes again from the journal what the disk
  lost (L{gateway.spool.journal}).  Nothing incomplete is ever sent even without the marker: a
  record that does not decode is quarantined when loaded, and the deliverer checks the
  message's digest before sending.  The sendmail command's drop-offs into incoming/, which
  the daemon scans and imports, are flushed before they are renamed, then incoming/ is
  fsynced; so is what ``graphsmtp-queue adopt`` commits (old ids, no marker).  With
  ``[queue] hold_new`` the destination is held/ instead of queue/ (the record's history notes
  the hold, as an admin hold would).  The on-disk format is unchanged by group commit:
  entries written by older gateways load and deliver as before.
- import (sendmail's entries, done by the daemon): write the record into tmp/, rename the
  message incoming/ → queue/, rename the record into queue/, fsync queue/, unlink the
  incoming record.  Recovery finishes a half-done import (incoming record + queue message).
  The message is read once on the way (L{gateway.spool.message_rules}): one that breaks a rule
  SMTP intake refuses at the end of DATA (a line over 998 octets, a NUL) is imported and then
  failed, both by the protocols here, so a crash between the two leaves it queued (delivered
  as before the rule), never lost; a drop-off is already acknowledged, so failing it with its
  reason is the honest answer, not deleting it.
- state change: write a new record to tmp/, fsync, rename over the old one (old or new state
  survives, never a mix).
- delivered: unlink the record first, then the message (or rename both into archive/,
  message first).  A crash in between leaves an orphan message, deleted at recovery — or a
  second delivery, never a lost one.
- failed: write failed/<id>.reason, move the message to failed/, write the final record into
  failed/, unlink the queued record, fsync failed/.  A queued record whose message is in
  failed/ (or archive/) is a move interrupted by a crash, and recovery completes it.
- requeue (admin): new record in tmp/, message failed/ → queue/, record into queue/, fsync,
  then the failed/ leftovers are removed.  A queued message without record whose record is
  still in failed/ is moved back to failed/ at recovery.
- hold (admin): message queue/ → held/, record written into held/, queued record unlinked,
  fsync held/.  A queued record whose message is in held/ is a hold interrupted by a crash,
  and recovery completes it (as for failed/).
- release (admin): new record in tmp/ (queue lifetime extended by the time held), message
  held/ → queue/, record into queue/, fsync, then the held/ record is removed.  A queued
  message without record whose record is still in held/ goes back to held/ at recovery.

Scheduling hint: a state change sets the record's mtime to ``next_attempt_at``, so start-up
can build the whole schedule from one ``stat`` per entry instead of parsing 100,000 JSON
records.  The record stays authoritative: the queue runner loads it when the hint says "due"
and reschedules if the real time is later, so a wrong mtime costs one early look, nothing more.
A new entry is due now (hint: its received time).  Where the spool's clock is the wall clock
(the daemon's reactor, the commands), intake leaves a new record the mtime its own write gave
it instead of setting it: a moment after received_at, and already past for any later start-up,
so it reads as "due now" just the same, one syscall per message cheaper.  Under any other clock
(tests), and for every entry with a next attempt, the hint is set explicitly.
"""
