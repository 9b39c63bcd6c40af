"""
The commit process's batches as plain values (L{gateway.spool.commit_wire}): nothing of a
request is lost or changed on the way, and anything that is not a batch of this format is
refused with a reason.
"""

from __future__ import annotations

import pickle

import attrs
from twisted.trial.unittest import SynchronousTestCase

from gateway.spool import commit_wire
from gateway.spool.accept import CommitRequest, TempMessage
from gateway.spool.entry import AttemptRecord, Envelope, Provenance, SpoolEntry


def _full_request(where: str = "held") -> CommitRequest:
    """A request with every field of every value away from its default."""
    entry = SpoolEntry(
        "1K1GJAXF4MPJKFWYCAD", Envelope("bounce@example.com", ("a@example.net", "b@example.org")),
        Provenance("192.0.2.7", "printer.example", "submission", tls=True, auth_identity="scanner",
                   credential_ref="tenant-b", node="gw2"),
        1_700_000_000.25, "/var/spool/graphsmtp/held/1K1GJAXF4MPJKFWYCAD.msg", 10_514, attempts=2,
        next_attempt_at=1_700_000_600.5,
        history=(AttemptRecord(1_700_000_100.0, "429 from Graph", "throttled"), AttemptRecord(1_700_000_200.0, "x")),
        sending_mailbox="printer@example.com", message_digest="sha256:" + "ab" * 32, draft_id="AAMkAD=")
    return CommitRequest(entry, where, data=b"Subject: hi\r\n\r\nbody\r\n")


class RoundTripTests(SynchronousTestCase):
    def test_every_field_comes_back_equal(self) -> None:
        batch = [_full_request("held"), _full_request("queue"), CommitRequest(_full_request().entry, "incoming")]
        self.assertEqual(commit_wire.decode_batch(commit_wire.encode_batch(batch)), batch)

    def test_defaults_come_back_equal(self) -> None:
        entry = SpoolEntry("0000000000A00000001", Envelope("", ("b@example.com",)),
                           Provenance("127.0.0.1", "localhost", "local"), 1.0, "/s/queue/0000000000A00000001.msg", 0)
        batch = [CommitRequest(entry, data=b"")]
        self.assertEqual(commit_wire.decode_batch(commit_wire.encode_batch(batch)), batch)

    def test_the_codec_names_every_field(self) -> None:
        """A field added to one of these values must travel too: update commit_wire and this list."""
        fields = {cls.__name__: [a.name for a in attrs.fields(cls)]
                  for cls in (CommitRequest, SpoolEntry, Envelope, Provenance, AttemptRecord)}
        self.assertEqual(fields, {
            "CommitRequest": ["entry", "where", "temp", "data"],
            "SpoolEntry": ["queue_id", "envelope", "provenance", "received_at", "message_path", "size", "attempts",
                           "next_attempt_at", "history", "sending_mailbox", "message_digest", "draft_id"],
            "Envelope": ["sender", "recipients"],
            "Provenance": ["client_address", "client_name", "listener", "tls", "auth_identity", "credential_ref",
                           "node"],
            "AttemptRecord": ["at", "reason", "cause"],
        }, "fields changed: update gateway.spool.commit_wire (and bump its FORMAT) and this list")

    def test_one_value_per_field(self) -> None:
        """A field added anywhere changes the count, so the codec cannot leave it behind silently."""
        leaves = (len(attrs.fields(CommitRequest)) - 2  # the entry's values stand in for it; temp never travels
                  + len(attrs.fields(SpoolEntry)) - 2 + len(attrs.fields(Envelope)) + len(attrs.fields(Provenance)))
        self.assertEqual(len(commit_wire._request_values(_full_request())), leaves)

    def test_plain_values_only(self) -> None:
        """What makes it cheap: no class of ours is named in the bytes, so none runs to read them."""
        encoded = commit_wire.encode_batch([_full_request()])
        self.assertNotIn(b"gateway", encoded)


class RefusalTests(SynchronousTestCase):
    def test_a_message_in_a_temp_file_is_not_sent(self) -> None:
        temp = TempMessage("1K1GJAXF4MPJKFWYCAD", "/s/tmp/t.1K1GJAXF4MPJKFWYCAD.msg", None)
        request = attrs.evolve(_full_request(), temp=temp, data=None)
        self.assertRaises(commit_wire.WireError, commit_wire.encode_batch, [request])

    def test_another_format_names_the_cause(self) -> None:
        for data in (pickle.dumps((commit_wire.FORMAT + 1, [])),
                     pickle.dumps([_full_request(), _full_request()])):  # attrs objects, as before FORMAT 1
            with self.subTest(data=data[:20]):
                e = self.assertRaises(commit_wire.WireError, commit_wire.decode_batch, data)
                self.assertIn("restart the daemon", str(e))

    def test_what_is_not_a_batch_is_refused(self) -> None:
        good = commit_wire.encode_batch([_full_request()])
        for data in (b"", b"not a pickle", pickle.dumps("not a batch"), pickle.dumps((commit_wire.FORMAT, [("x",)])),
                     good[:-5]):
            with self.subTest(data=data[:20]):
                e = self.assertRaises(commit_wire.WireError, commit_wire.decode_batch, data)
                self.assertIn("not a commit batch", str(e))

    def test_the_error_shows_nothing_of_the_batch(self) -> None:
        """The error is logged, and a batch holds messages: none of its values is in the text."""
        request = _full_request()
        for data in (pickle.dumps([request, request]), pickle.dumps((request, request)),
                     pickle.dumps((commit_wire.FORMAT, [(request.data,)]))):
            with self.subTest(data=data[:20]):
                e = self.assertRaises(commit_wire.WireError, commit_wire.decode_batch, data)
                for value in ("printer", "bounce@example.com", "Subject", "1K1GJAXF4MPJKFWYCAD"):
                    self.assertNotIn(value, str(e))
