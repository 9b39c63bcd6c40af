"""
The users file (format, refusal of plaintext, reload on change) and its twisted.cred checker
(bcrypt in a dedicated thread pool, uniform failures).
"""

from __future__ import annotations

import json
import os
import threading

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.auth.checkers import UsersFileChecker
from gateway.config.users import (
    UserRecord,
    UsersFileError,
    UsersStore,
    load_users,
    parse_users,
    write_users,
)
from gateway.policy.interfaces import Identity
from gateway.testing.logs import LogCapture
from gateway.testing.threads import ImmediateReactor, SynchronousThreadPool
from tests.auth_helpers import (
    cheap_hash,
    make_users_file,
    private_file,
)


class UsersFileFormatTests(SynchronousTestCase):
    def setUp(self):
        self.hash = cheap_hash("pw")

    def line(self, **fields):
        data = {"login": "scanner", "hash": self.hash, "allowed_senders": ["scanner@corp.example"]}
        data.update(fields)
        return json.dumps({k: v for k, v in data.items() if v is not None})

    def test_parses_records_comments_and_blank_lines(self):
        text = "# users\n\n" + self.line() + "\n" + self.line(login="crm", allowed_senders=["*@crm.example"], disabled=True) + "\n"
        users = parse_users(text, "u.jsonl")
        self.assertEqual(set(users), {"scanner", "crm"})
        self.assertEqual(users["crm"].allowed_senders, ("*@crm.example",))
        self.assertTrue(users["crm"].disabled)
        self.assertFalse(users["scanner"].disabled)

    def test_plaintext_password_refused_without_echoing_it(self):
        for line in (self.line(hash="hunter2secret"), self.line(password="hunter2secret")):
            e = self.assertRaises(UsersFileError, parse_users, line, "u.jsonl")
            self.assertIn("u.jsonl line 1", str(e))
            self.assertIn("scanner", str(e))
            self.assertNotIn("hunter2secret", str(e))

    def test_other_errors_name_line_and_problem(self):
        cases = {
            "{not json": "not valid JSON",
            self.line(allowed_senders=[]): "allowed_senders",
            self.line(allowed_senders=["corp.example"]): "local@domain",
            self.line(login=""): "login",
            self.line(login="a b"): "spaces",
            self.line(extra=1): "unknown field 'extra'",
            self.line(disabled="yes"): "disabled",
            self.line() + "\n" + self.line(): "appears twice",
        }
        for text, fragment in cases.items():
            e = self.assertRaises(UsersFileError, parse_users, "# c\n" + text, "u.jsonl")
            self.assertIn("u.jsonl line", str(e))
            self.assertIn(fragment, str(e))

    def test_record_repr_hides_hash(self):
        record = UserRecord("a", self.hash, ("*",))
        self.assertNotIn(self.hash, repr(record))

    def test_write_is_private_and_round_trips(self):
        path = os.path.join(self.mktemp())
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        records = [UserRecord("b", self.hash, ("*@b.example",)), UserRecord("a", self.hash, ("*",), True)]
        write_users(path, records)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(sorted(load_users(path).values(), key=lambda u: u.login), sorted(records, key=lambda u: u.login))

    def test_group_or_world_readable_file_refused(self):
        path = make_users_file(self.mktemp(), {"a": ("pw", ["*"])})
        os.chmod(path, 0o644)
        e = self.assertRaises(UsersFileError, load_users, path)
        self.assertIn(path, str(e))
        self.assertIn("chmod 600", str(e))


class UsersStoreTests(SynchronousTestCase):
    def setUp(self):
        self.path = make_users_file(self.mktemp(), {"a": ("pw", ["a@x.example"])})
        self.store = UsersStore(self.path)

    def test_reloads_when_file_replaced(self):
        self.assertIsNone(self.store.lookup("b"))
        make_users_file(self.path, {"a": ("pw", ["a@x.example"]), "b": ("pw2", ["b@x.example"])})
        self.assertEqual(self.store.lookup("b").allowed_senders, ("b@x.example",))
        self.assertEqual(self.store.reloads, 1)
        self.assertFalse(self.store.check_for_changes())

    def test_broken_new_file_keeps_old_users(self):
        events = LogCapture.install(self)
        private_file(self.path, b'{"login": "a", "hash": "plaintext-pw", "allowed_senders": ["*"]}\n')
        self.assertIsNotNone(self.store.lookup("a"))
        self.assertEqual([e for e in events if e.get("log_level").name == "error"].__len__(), 1)
        self.assertFalse(any("plaintext-pw" in repr(e) for e in events))
        # not re-read (nor re-logged) until it changes again
        self.store.lookup("a")
        self.assertEqual(len([e for e in events if e.get("log_level").name == "error"]), 1)

    def test_broken_file_at_start_is_an_error(self):
        private_file(self.path, b"nonsense\n")
        self.assertRaises(UsersFileError, UsersStore, self.path)


class UsersCheckerTests(SynchronousTestCase):
    def setUp(self):
        path = make_users_file(
            self.mktemp(),
            {"scanner": ("s3cret", ["scanner@corp.example"]), "old": ("pw", ["*"])},
            disabled=["old"],
        )
        self.pool = SynchronousThreadPool()
        self.checker = UsersFileChecker(UsersStore(path), ImmediateReactor(), self.pool, dummy_hash=cheap_hash("dummy").encode())

    def check(self, user, password):
        return self.checker.requestAvatarId(UsernamePassword(user, password))

    def test_right_password_gives_identity_with_senders(self):
        identity = self.successResultOf(self.check(b"scanner", b"s3cret"))
        self.assertEqual(identity, Identity("scanner", ("scanner@corp.example",)))

    def test_wrong_unknown_disabled_all_fail_the_same_way_after_a_hash_check(self):
        for user, password in ((b"scanner", b"wrong"), (b"nobody", b"s3cret"), (b"old", b"pw"), (b"\xff\xfe", b"x")):
            before = self.pool.jobs
            self.failureResultOf(self.check(user, password), UnauthorizedLogin)
            if user != b"\xff\xfe":
                self.assertEqual(self.pool.jobs, before + 1, user)

    def test_overlong_password_fails_instead_of_being_truncated(self):
        path = make_users_file(self.mktemp(), {"long": ("x" * 72, ["*"])})
        checker = UsersFileChecker(UsersStore(path), ImmediateReactor(), SynchronousThreadPool())
        self.successResultOf(checker.requestAvatarId(UsernamePassword(b"long", b"x" * 72)))
        self.failureResultOf(checker.requestAvatarId(UsernamePassword(b"long", b"x" * 73)), UnauthorizedLogin)


class UsersCheckerThreadTests(TestCase):
    """bcrypt runs in the dedicated pool, never in the reactor thread."""

    @inlineCallbacks
    def test_hash_checked_in_pool_thread(self):
        path = make_users_file(self.mktemp(), {"a": ("pw", ["*"])})
        pool = ThreadPool(1, 1, "test-auth")
        pool.start()
        self.addCleanup(pool.stop)
        threads = []
        import gateway.auth.checkers as checkers_module
        original = checkers_module._verify

        def spy(password, hashed):
            threads.append(threading.current_thread().name)
            return original(password, hashed)

        self.patch(checkers_module, "_verify", spy)
        checker = UsersFileChecker(UsersStore(path), reactor, pool)
        identity = yield checker.requestAvatarId(UsernamePassword(b"a", b"pw"))
        self.assertEqual(identity.login, "a")
        self.assertEqual(len(threads), 1)
        self.assertNotEqual(threads[0], threading.current_thread().name)
        self.assertIn("test-auth", threads[0])

    @inlineCallbacks
    def test_users_file_is_looked_up_in_pool_thread(self):
        path = make_users_file(self.mktemp(), {"a": ("pw", ["*"])})
        pool = ThreadPool(1, 1, "test-auth")
        pool.start()
        self.addCleanup(pool.stop)
        store = UsersStore(path)
        threads = []
        original = store.lookup

        def spy(login):
            threads.append(threading.current_thread().name)
            return original(login)

        store.lookup = spy
        checker = UsersFileChecker(store, reactor, pool)
        yield checker.requestAvatarId(UsernamePassword(b"a", b"pw"))
        self.assertEqual(len(threads), 1)
        self.assertIn("test-auth", threads[0])
