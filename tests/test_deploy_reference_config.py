"""
etc/graphsmtp.toml is the annotated reference: it mentions every key the loader accepts, in the
section the loader reads it from.  The accepted keys are not a list kept here: the test records
what the loader's own table readers ask for while they parse a configuration that has every
section, so a key added to the loader without documenting it fails this test.
"""

from __future__ import annotations

import os
import re
import tomllib

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import ConfigError, load_config
from gateway.config.loader import build_config
from gateway.config.reader import TableReader
from gateway.policy.registry import build_listener_chains
from gateway.testing.policy import make_session, run_transaction

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(ROOT, "etc", "graphsmtp.toml")

#: One value for each section so that its parser runs and reads all of its keys.
EVERY_SECTION = {
    "gateway": {},
    "limits": {},
    "listener": [{"name": "x", "endpoint": "tcp:0", "limits": {}}],
    "spool": {},
    "queue": {},
    "delivery": {"capture": {}},
    "graph": {"tenant_id": "t", "client_id": "c", "client_secret": "s"},
    "redis": {},
    "observer": [],
    "auth": {"passthrough": {}, "throttle": {}},
    "status": {},
    "cluster": {},
}

_HEADER = re.compile(r"^#?\s*\[\[?\s*([A-Za-z0-9_.]+)\s*\]\]?")
_KEY = re.compile(r"^#?\s*([A-Za-z0-9_]+)\s*=")


def accepted_keys(case: SynchronousTestCase) -> dict[str, set[str]]:
    """Section (listener names folded: ``listener.limits``) -> keys the loader read there."""
    seen: dict[str, set[str]] = {}
    original = TableReader.finish

    def recording_finish(reader: TableReader) -> None:
        where = re.sub(r"^listener\.[^.]+", "listener", reader.where)
        seen.setdefault(where, set()).update(reader._used)
        original(reader)

    case.patch(TableReader, "finish", recording_finish)
    build_config(EVERY_SECTION, {}, {}, os.path.abspath(case.mktemp()))
    return seen


def documented_keys() -> dict[str, set[str]]:
    """Section -> keys the reference mentions, commented out or not."""
    documented: dict[str, set[str]] = {"": set()}
    section = ""
    with open(REFERENCE, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            header = _HEADER.match(line)
            if header:
                section = header.group(1)
                documented.setdefault(section, set())
                parent, _, name = section.rpartition(".")
                documented.setdefault(parent, set()).add(name)
                continue
            key = _KEY.match(line)
            if key:
                documented.setdefault(section, set()).add(key.group(1))
    return documented


class ReferenceConfigTests(SynchronousTestCase):
    def test_every_accepted_key_is_documented_in_its_section(self):
        accepted = accepted_keys(self)
        self.assertIn("graph", accepted[""])  # the recording saw the whole loader
        self.assertIn("users_file", accepted["auth"])
        documented = documented_keys()
        missing = sorted(f"[{section}] {key}" if section else key
                         for section, keys in accepted.items()
                         for key in keys - documented.get(section, set()))
        self.assertEqual(missing, [], "document these in etc/graphsmtp.toml (commented out, with the default)")

    def test_reference_loads_as_it_is(self):
        config = load_config(REFERENCE, environ={})
        self.assertEqual(config.deliverer, "capture")

    def test_unknown_key_names_the_file_it_is_in(self):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write('[graph]\ntenant_id = "t"\nclient_id = "c"\nclient_secret = "s"\nsave_to_sent_itmes = false\n')
        e = self.assertRaises(ConfigError, load_config, path, environ={})
        self.assertTrue(str(e).startswith(f"{path}: graph.save_to_sent_itmes: unknown setting"), str(e))
        self.assertEqual(e.key, "graph.save_to_sent_itmes")
        # ... and points at a reference that exists on this machine (installed or in the sources).
        reference = re.search(r"annotated reference (\S+) lists", str(e)).group(1)
        self.assertTrue(os.path.isfile(reference), reference)
        with open(reference, encoding="utf-8") as f, open(REFERENCE, encoding="utf-8") as g:
            self.assertEqual(f.read(), g.read())


# the policy example commented in etc/graphsmtp.toml must work once uncommented, as an
# admin would use it (it used to name an option sender-allowlist does not have).
ETC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc")


class AnnotatedExampleTests(SynchronousTestCase):
    def test_commented_policies_line_works_when_uncommented(self):
        with open(os.path.join(ETC, "graphsmtp.toml"), encoding="utf-8") as f:
            text = f.read()
        uncommented, count = re.subn(r"(?m)^# (policies = \[.*\])$", r"\1", text)
        self.assertEqual(count, 1, "the commented 'policies = [...]' example is gone")
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        data = tomllib.loads(uncommented)
        data["gateway"]["state_dir"] = base
        config = build_config(data, {}, {}, base)
        chain = build_listener_chains(config, Clock())["local"]
        session = make_session(client_address="127.0.0.1", listener="local")
        ok = self.successResultOf(run_transaction(chain, session, "app@corp.example", ["a@corp.example"]))
        self.assertTrue(ok.allowed)
        refused = self.successResultOf(run_transaction(chain, session, "app@elsewhere.example", ["a@corp.example"]))
        self.assertEqual((refused.step, refused.allowed), ("mail", False))
