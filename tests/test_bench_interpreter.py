"""
``bench/interpreter.py``: the line every side-by-side run prints about the Python that runs the
daemon, whose build moves graphsmtp's figures (README, "Intake against Postfix").
"""

from __future__ import annotations

import os
import re
import sys

from twisted.trial.unittest import TestCase

from tests.bench_modules import load_bench

interpreter = load_bench("interpreter")


class InterpreterNoteTests(TestCase):
    def test_names_the_interpreter_and_times_it(self) -> None:
        """The version and base installation of the Python given, and a time per round of its loop."""
        note = interpreter.interpreter_note(sys.executable)
        version = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
        self.assertIn(f"Python {version} from {sys.base_prefix}, ", note)
        found = re.search(r", (\d+) ns per round", note)
        assert found is not None, note
        self.assertGreater(int(found.group(1)), 0)

    def test_an_interpreter_that_cannot_run(self) -> None:
        """A wrong --python is said, not a crash before the run's table."""
        missing = os.path.join(self.mktemp(), "python")
        self.assertEqual(interpreter.interpreter_note(missing).split(":")[:2],
                         [f"interpreter {missing}", " could not be run ([Errno 2] No such file or directory"])

    def test_an_interpreter_that_fails(self) -> None:
        """A program that runs but is no working Python (here: exits 1 at once)."""
        fake = self.mktemp()
        with open(fake, "w") as f:
            f.write("#!/bin/sh\necho broken >&2\nexit 1\n")
        os.chmod(fake, 0o755)
        self.assertEqual(interpreter.interpreter_note(fake), f"interpreter {fake}: could not be measured (broken)")
