"""
``twistd -n graphsmtp`` as a real child process, for tests of what only a real daemon shows:
start-up failures and exit statuses, signals, the kernel's sandbox (MDWE).

The child's log is watched for patterns (``wait_for``) instead of sleeping, and every daemon a
test starts is stopped (SIGTERM, then SIGKILL) and reaped in the test's cleanup.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import sys
from typing import Any, Optional, Sequence

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: prctl(2) numbers (linux/prctl.h): Memory-Deny-Write-Execute, Linux >= 6.3.
PR_SET_MDWE = 65
PR_GET_MDWE = 66
PR_MDWE_REFUSE_EXEC_GAIN = 1

#: The child turns MDWE on for itself (inherited by nothing else: it is the child's own
#: process), says so on stderr, then runs twistd exactly as the systemd unit does.
_MDWE_BOOTSTRAP = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    f"if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:\n"
    "    sys.exit('PR_SET_MDWE failed: ' + os.strerror(ctypes.get_errno()))\n"
    f"sys.stderr.write('MDWE state %d\\n' % libc.prctl({PR_GET_MDWE}, 0, 0, 0, 0)); sys.stderr.flush()\n"
    "from twisted.scripts.twistd import run; run()\n"
)
#: The same rule by systemd's own means, a seccomp filter (tests/write_execute.py), which every
#: kernel with seccomp has.
_SECCOMP_BOOTSTRAP = (
    "import sys\n"
    "from tests.write_execute import deny_write_execute\n"
    "deny_write_execute()\n"
    "sys.stderr.write('MDWE state 1 (seccomp filter)\\n'); sys.stderr.flush()\n"
    "from twisted.scripts.twistd import run; run()\n"
)
#: systemd's PrivateTmp= by its own means: the child gets a mount namespace of its own and a
#: directory bind-mounted over another (``GRAPHSMTP_TEST_BIND_SOURCE`` over ``…_TARGET``), as systemd
#: mounts /tmp/systemd-private-<id>-<unit>-<random>/tmp over the service's /tmp.  Needs root.
_PRIVATE_TMP_BOOTSTRAP = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "source, target = os.environ['GRAPHSMTP_TEST_BIND_SOURCE'], os.environ['GRAPHSMTP_TEST_BIND_TARGET']\n"
    "def check(result, what):\n"
    "    if result != 0:\n"
    "        sys.exit(what + ' failed: ' + os.strerror(ctypes.get_errno()))\n"
    "check(libc.unshare(0x20000), 'unshare(CLONE_NEWNS)')\n"  # a mount namespace of its own
    "check(libc.mount(b'none', b'/', None, 0x4000 | 0x40000, None), 'mount(MS_REC|MS_PRIVATE)')\n"
    "check(libc.mount(source.encode(), target.encode(), None, 0x1000, None), 'mount(MS_BIND)')\n"
    "from twisted.scripts.twistd import run; run()\n"
)
_SANDBOXES = {"prctl": _MDWE_BOOTSTRAP, "seccomp": _SECCOMP_BOOTSTRAP, "private-tmp": _PRIVATE_TMP_BOOTSTRAP}
_PLAIN_BOOTSTRAP = "from twisted.scripts.twistd import run; run()"


def kernel_mdwe_support() -> Optional[str]:
    """``None`` when this kernel supports PR_SET_MDWE, else why not (for a skip reason)."""
    if not sys.platform.startswith("linux"):
        return "PR_SET_MDWE is Linux only"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) < 0:
        return f"this kernel ({os.uname().release}) lacks PR_GET_MDWE/PR_SET_MDWE (Linux >= 6.3)"
    return None


class GatewayDaemon(ProcessProtocol):
    """One child daemon: its combined output, its exit, and waits on patterns in the output."""

    def __init__(self) -> None:
        self.output = b""
        self.errors = b""  # stderr alone (also in output)
        self.ended: Deferred = Deferred()
        self.exit_code: Optional[int] = None
        self._waiting: list[tuple[re.Pattern, int, Deferred]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data
        for waiting in list(self._waiting):
            pattern, start, d = waiting
            m = pattern.search(self.output, start)
            if m:
                self._waiting.remove(waiting)
                d.callback(m)

    def errReceived(self, data: bytes) -> None:
        self.errors += data
        self.outReceived(data)

    def wait_for(self, pattern: bytes, after: int = 0) -> Deferred:
        """Fires with the first match of ``pattern`` in the output from offset ``after`` on."""
        d: Deferred = Deferred()
        self._waiting.append((re.compile(pattern), after, d))
        self.outReceived(b"")
        return d

    def listening_port(self, listener: str) -> Deferred:
        pattern = rb"listener " + re.escape(listener.encode()) + rb" accepting SMTP on 127\.0\.0\.1 port (\d+)"
        return self.wait_for(pattern).addCallback(lambda m: int(m.group(1)))

    def processEnded(self, reason: Any) -> None:
        self.exit_code = getattr(reason.value, "exitCode", None)
        waiting, self._waiting = self._waiting, []
        for pattern, _, d in waiting:
            d.errback(AssertionError(
                f"daemon exited ({self.exit_code}) before {pattern.pattern!r} appeared; output:\n"
                + self.output.decode("utf-8", "replace")))
        self.ended.callback(self.exit_code)

    def signal(self, signum: int) -> None:
        self.transport.signalProcess(signum)

    def stop(self) -> Deferred:
        """SIGTERM if still running; fires when it has been reaped."""
        if not self.ended.called:
            try:
                self.transport.signalProcess(signal.SIGTERM)
            except Exception:
                pass
            timer = reactor.callLater(30, self._kill)
            self.ended.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
        d: Deferred = Deferred()
        self.ended.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    def _kill(self) -> None:
        if not self.ended.called:
            self.transport.signalProcess(signal.SIGKILL)


def spawn_gateway(case: Any, config_path: str, *extra: str, mdwe: Optional[str] = None,
                  twistd_args: Sequence[str] = (), private_tmp: Optional[tuple[str, str]] = None) -> GatewayDaemon:
    """
    ``twistd -n --pidfile= --logfile=- [twistd_args] graphsmtp --config config_path extra``,
    optionally under MDWE (``mdwe``: ``"prctl"``, the kernel's switch, or ``"seccomp"``,
    systemd's filter) or with ``private_tmp`` (source, target) bind-mounted in a mount namespace
    of its own, as systemd's PrivateTmp= does; stopped and reaped in ``case``'s cleanup.
    """
    daemon = GatewayDaemon()
    sandbox = "private-tmp" if private_tmp else mdwe
    args = [
        sys.executable, "-c", _SANDBOXES[sandbox] if sandbox else _PLAIN_BOOTSTRAP,
        "-n", "--pidfile=", "--logfile=-", *twistd_args, "graphsmtp", "--config", config_path, *extra,
    ]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if private_tmp:
        env["GRAPHSMTP_TEST_BIND_SOURCE"], env["GRAPHSMTP_TEST_BIND_TARGET"] = private_tmp
    reactor.spawnProcess(daemon, sys.executable, args, env=env, path=ROOT)
    case.addCleanup(daemon.stop)
    return daemon


def write_private(path: str, text: str) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


__all__ = ["GatewayDaemon", "spawn_gateway", "kernel_mdwe_support", "write_private"]
