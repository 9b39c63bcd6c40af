"""
The status page in a real browser: headless Chromium (Debian's ``chromium``, installed by
``scripts/test.sh``) loads ``/`` from the running gateway over loopback and saves a screenshot.

The test checks that Chromium produced a PNG of the requested size that is not a blank page.
The screenshot is kept at ``$GRAPHSMTP_SCREENSHOT`` when set (CI keeps it as an artifact),
otherwise in the test's temporary directory; its path is printed either way.
"""

from __future__ import annotations

import os
import shutil
import struct
import sys
import zlib

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from tests.status_helpers import get, http_client, make_traffic, start_status_gateway

WIDTH, HEIGHT = 1280, 1600
CHROMIUM_TIMEOUT = 90.0


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError("chromium is not installed: scripts/test.sh installs Debian's chromium package "
                         "(apt-get install chromium); this test needs it and does not skip")


class _Collect(ProcessProtocol):
    """Gathers output; ``ended`` fires with the exit code.  A hung browser is killed."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: Deferred = Deferred()
        self.killer = None

    def outReceived(self, data: bytes) -> None:
        self.output += data[-20000:]

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        if self.killer is not None and self.killer.active():
            self.killer.cancel()
        self.ended.callback(getattr(reason.value, "exitCode", None))

    def kill(self) -> None:
        try:
            self.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass


def png_facts(data: bytes) -> tuple[int, int, int]:
    """(width, height, distinct byte values in the decoded image data) of a PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise AssertionError("not a PNG file")
    pos, width, height, idat = 8, 0, 0, bytearray()
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    return width, height, len(set(zlib.decompress(bytes(idat))))


class StatusPageInChromiumTests(TestCase):
    timeout = 180

    @inlineCallbacks
    def test_page_renders_in_headless_chromium(self):
        binary = chromium_binary()
        gw, fake, base = yield start_status_gateway(self)
        yield make_traffic(gw, fake)
        # The page the browser will get is complete (and the queue read) before it starts.
        response, _ = yield get(http_client(self), base + "/")
        self.assertEqual(response.code, 200)

        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        screenshot = os.environ.get("GRAPHSMTP_SCREENSHOT") or os.path.join(work, "status-page.png")
        os.makedirs(os.path.dirname(os.path.abspath(screenshot)), exist_ok=True)
        if os.path.exists(screenshot):
            os.unlink(screenshot)
        args = [
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--user-data-dir={os.path.join(work, 'profile')}",
            f"--screenshot={screenshot}", f"--window-size={WIDTH},{HEIGHT}", base + "/",
        ]
        env = {"HOME": work, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        proto = _Collect()
        reactor.spawnProcess(proto, binary, args, env=env, path=work)
        proto.killer = reactor.callLater(CHROMIUM_TIMEOUT, proto.kill)
        code = yield proto.ended
        output = bytes(proto.output).decode("utf-8", "replace")
        self.assertTrue(os.path.exists(screenshot), f"chromium wrote no screenshot (exit {code}):\n{output[-3000:]}")
        with open(screenshot, "rb") as f:
            width, height, distinct = png_facts(f.read())
        self.assertEqual((width, height), (WIDTH, HEIGHT))
        # A blank or error page has a handful of byte values; text, tables and badges have many.
        self.assertGreater(distinct, 40)
        sys.stdout.write(f"\nstatus page screenshot: {screenshot}\n")
