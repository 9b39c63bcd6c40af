"""
``[gateway] plugin_paths`` (issue 15): plugin directories without PYTHONPATH, checked at load
time, and plugin modules that fail to import reported at start-up and by ``graphsmtp-config
check`` whether or not a listener names them (before, only when a configured name was missing).
"""

from __future__ import annotations

import io
import os
import sys
import textwrap

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

import twisted.plugins
from gateway.cli.configcheck import main as config_main
from gateway.config.errors import ConfigError
from gateway.config.loader import build_config
from gateway.testing.harness import start_gateway

POLICY_PLUGIN = '''
from gateway.plugin import IPlugin, IPolicyFactory, PolicyBase, PolicyOptions, Reject, Option
from zope.interface import implementer

OPTIONS = (Option("word", "string", '"secret"', "refuse subjects containing this word"),)


class Refuse(PolicyBase):
    def __init__(self, word):
        self.word = word

    def on_message(self, session, message):
        subject = (message.headers.get("Subject") or "").lower()
        return Reject(550, "5.7.1", "No {}s".format(self.word)) if self.word in subject else super().on_message(session, message)


@implementer(IPlugin, IPolicyFactory)
class Factory:
    name = "{name}"
    description = "test policy from a plugin_paths directory"
    options = OPTIONS

    def build(self, options, context):
        o = PolicyOptions(options, OPTIONS)
        word = o.string("word", "secret")
        o.finish()
        return Refuse(word)


plugin = Factory()
'''


def plugin_root(case, modules):
    root = os.path.abspath(case.mktemp())
    plugins = os.path.join(root, "twisted", "plugins")
    os.makedirs(plugins)
    for name, source in modules.items():
        with open(os.path.join(plugins, f"{name}.py"), "w") as f:
            f.write(textwrap.dedent(source))
    return root


def config_with(case, root, policies=()):
    base = os.path.abspath(case.mktemp())
    os.makedirs(base)
    data = {"gateway": {"plugin_paths": [root], "state_dir": os.path.join(base, "state")},
            "listener": [{"name": "in", "endpoint": "tcp:0:interface=127.0.0.1",
                          "trusted_networks": ["127.0.0.0/8"], "policies": list(policies)}]}
    return data, base


class PluginPathsConfigTests(SynchronousTestCase):
    def test_directory_without_twisted_plugins_is_refused(self):
        bare = os.path.abspath(self.mktemp())
        os.makedirs(bare)
        with self.assertRaises(ConfigError) as caught:
            build_config({"gateway": {"plugin_paths": [bare]}}, {}, {}, bare)
        self.assertEqual(caught.exception.key, "gateway.plugin_paths[0]")
        self.assertIn("has no twisted/plugins/ directory", str(caught.exception))

    def test_pointing_at_twisted_plugins_itself_gets_a_hint(self):
        root = plugin_root(self, {})
        with self.assertRaises(ConfigError) as caught:
            build_config({"gateway": {"plugin_paths": [os.path.join(root, "twisted", "plugins")]}}, {}, {}, root)
        self.assertIn(f"give the directory that contains twisted/, here {root}", str(caught.exception))

    def test_missing_directory_is_refused(self):
        with self.assertRaises(ConfigError) as caught:
            build_config({"gateway": {"plugin_paths": ["nowhere"]}}, {}, {}, os.path.abspath(self.mktemp()))
        self.assertIn("is not a directory", str(caught.exception))

    def test_relative_paths_are_relative_to_the_configuration(self):
        root = plugin_root(self, {})
        config = build_config({"gateway": {"plugin_paths": [os.path.basename(root)]}}, {}, {}, os.path.dirname(root))
        self.assertEqual(config.plugin_paths, (root,))


class PluginPathsDaemonTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_policy_from_a_plugin_path_runs_without_pythonpath(self):
        root = plugin_root(self, {"pp_refuse_word": POLICY_PLUGIN.replace("{name}", "pp-refuse-word")})
        data, _ = config_with(self, root, [{"use": "pp-refuse-word", "word": "secret"}])
        gw = yield start_gateway(self, data)
        refused = yield gw.send("a@corp.example", ["b@corp.example"], b"Subject: top secret\r\n\r\nx\r\n")
        self.assertEqual((refused.refused_at, refused.code, refused.text), ("data", 550, "No secrets"))
        ok = yield gw.send("a@corp.example", ["b@corp.example"], b"Subject: hello\r\n\r\nx\r\n")
        self.assertTrue(ok.accepted, ok)
        self.assertIn(root, sys.path)

    @inlineCallbacks
    def test_search_path_is_restored_after_the_gateway(self):
        root = plugin_root(self, {})
        data, _ = config_with(self, root)
        gw = yield start_gateway(self, data)
        yield gw.stop()
        gw.components.plugin_search.undo()
        self.assertNotIn(root, sys.path)
        self.assertNotIn(os.path.join(root, "twisted", "plugins"), twisted.plugins.__path__)

    @inlineCallbacks
    def test_broken_module_is_logged_at_start_up_though_no_listener_names_it(self):
        root = plugin_root(self, {"pp_broken": "import graphsmtp_no_such_dependency\n"})
        data, _ = config_with(self, root)
        gw = yield start_gateway(self, data)
        self.flushLoggedErrors(ModuleNotFoundError)  # twisted.plugin's own traceback of the import
        self.assertEqual(dict(gw.components.broken_plugins),
                         {"twisted.plugins.pp_broken": "ModuleNotFoundError: No module named 'graphsmtp_no_such_dependency'"})
        [line] = [line for line in gw.log.lines if "pp_broken" in line and "failed to import" in line]
        self.assertEqual(line, "plugin module twisted.plugins.pp_broken failed to import: "
                               "ModuleNotFoundError: No module named 'graphsmtp_no_such_dependency'")


class ConfigCheckTests(SynchronousTestCase):
    def write_config(self, root):
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        path = os.path.join(base, "graphsmtp.toml")
        with open(path, "w") as f:
            f.write(f'[gateway]\nstate_dir = "{base}/state"\nplugin_paths = ["{root}"]\n')
        return path

    def test_check_reports_a_broken_plugin_module(self):
        root = plugin_root(self, {"pp_broken_check": "raise RuntimeError('half-edited plugin')\n"})
        out = io.StringIO()
        status = config_main(["check", self.write_config(root)], out)
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(status, 0, out.getvalue())
        self.assertIn("WARNING        plugin module twisted.plugins.pp_broken_check failed to import: "
                      "RuntimeError: half-edited plugin", out.getvalue())
        self.assertIn(f"plugin path    {root}", out.getvalue())
        self.assertNotIn(root, sys.path)

    def test_check_names_the_key_of_a_bad_plugin_path(self):
        out = io.StringIO()
        status = config_main(["check", self.write_config("/nonexistent/plugins")], out)
        self.assertEqual(status, 78)
        self.assertIn("gateway.plugin_paths[0]: /nonexistent/plugins is not a directory", out.getvalue())


class ReloadTests(SynchronousTestCase):
    def test_changed_plugin_paths_need_a_restart(self):
        from gateway.reload import restart_needed

        root = plugin_root(self, {})
        base = os.path.dirname(root)
        started = build_config({}, {}, {}, base)
        changed = build_config({"gateway": {"plugin_paths": [root]}}, {}, {}, base)
        self.assertEqual(restart_needed(started, changed), ["[gateway] plugin_paths] changed"])


class PluginPathsListingTests(SynchronousTestCase):
    """
    ``graphsmtp-config policies --config FILE`` lists the policies of the file's plugin_paths
    too: a plugin author who installed through plugin_paths (the documented way) otherwise
    never sees their policy's options there.
    """

    def test_policies_of_plugin_paths_are_listed_with_their_options(self):
        import io
        import sys

        import twisted.plugins
        from gateway.cli.configcheck import main

        root = plugin_root(self, {"listed_by_config_policy": POLICY_PLUGIN.replace("{name}", "listed-by-config")})
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(f'[gateway]\nplugin_paths = ["{root}"]\nstate_dir = "{os.path.abspath(self.mktemp())}"\n')
        before = (list(sys.path), list(twisted.plugins.__path__))
        out = io.StringIO()
        code = main(["policies", "--config", path], out)
        self.assertEqual(code, 0, out.getvalue())
        self.assertIn("listed-by-config", out.getvalue())
        self.assertIn("refuse subjects containing this word", out.getvalue())
        self.assertEqual((list(sys.path), list(twisted.plugins.__path__)), before)  # no trace left

    def test_a_bad_config_is_one_line_with_ex_config(self):
        import io

        from gateway.cli.configcheck import main

        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write('[gateway]\nplugin_paths = ["/nonexistent/graphsmtp-plugins"]\n')
        out = io.StringIO()
        code = main(["policies", "--config", path], out)
        self.assertEqual(code, 78)
        self.assertEqual(len(out.getvalue().splitlines()), 1, out.getvalue())
        self.assertIn("gateway.plugin_paths", out.getvalue())
