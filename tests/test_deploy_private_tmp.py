"""
The shipped systemd unit gives the service a private /tmp (``PrivateTmp=yes``): systemd
bind-mounts ``/tmp/systemd-private-<id>-graphsmtp.service-<random>/tmp`` over /tmp and removes
it when the service stops.  A ``state_dir`` there loses every queued message at each stop, on
any filesystem, so the daemon names it at start-up.  The real daemon is started here in a mount
namespace of its own with exactly such a bind mount (tests/daemon_helpers.py), so the warning
is read from the kernel's own mount table.
"""

from __future__ import annotations

import os

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from gateway.spool.filesystem import PRIVATE_TMP
from tests.daemon_helpers import spawn_gateway
from tests.test_local_submission import require_root


class PrivateTmpStartUpTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_a_spool_in_the_private_tmp_is_named_at_start_up(self):
        require_root(self)  # a mount namespace of its own needs root, as graphsmtp-sendmail's uid tests do
        directory = os.path.abspath(self.mktemp())
        private = os.path.join(directory, "systemd-private-0123456789abcdef0123456789abcdef-graphsmtp.service-Ab12Cd",
                               "tmp")
        service_tmp = os.path.join(directory, "tmp")
        os.makedirs(private)
        os.makedirs(service_tmp)
        config = os.path.join(directory, "graphsmtp.toml")
        with open(config, "w") as f:
            f.write(f'[gateway]\nstate_dir = "{service_tmp}/graphsmtp"\nhostname = "private.test"\n'
                    '[[listener]]\nname = "mx"\nendpoint = "tcp:0:interface=127.0.0.1"\n')
        daemon = spawn_gateway(self, config, private_tmp=(private, service_tmp))
        match = yield daemon.wait_for(rb"spool (\S+) recovered: [^\n]*\n([^\n]*)\n")
        self.assertIn(PRIVATE_TMP.encode(), match.group(2))
        yield daemon.listening_port("mx")  # a warning, not a refusal: the gateway runs
        # The bind mount was real: what the daemon wrote under its /tmp is in the private directory.
        self.assertTrue(os.path.isdir(os.path.join(private, "graphsmtp", "spool")))
        self.assertEqual(os.listdir(service_tmp), [])
