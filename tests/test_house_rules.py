"""
The house rules that keep graphsmtp easy to carry on, checked on every CI run.

Each rule is cheap to keep and expensive to win back once broken: imports between gateway's
subpackages run one way, product functions stay small enough to read, modules keep one job,
and the static checkers (ruff, mypy with mypy-zope) stay clean.  Where today's code still breaks
a rule, the offender is listed here by name; the lists only ever shrink (a test also fails when
a listed offender has been fixed, so the list cannot go stale).
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

from twisted.trial import unittest

ROOT = pathlib.Path(__file__).resolve().parent.parent
GATEWAY = ROOT / "gateway"

MAX_COMPLEXITY = 15
MAX_MODULE_LINES = 600

# Import edges (from-package, to-package) that still close a cycle.  Target: empty.
KNOWN_CYCLE_EDGES: frozenset[tuple[str, str]] = frozenset({
    ("auth", "config"),
    ("auth", "delivery"),
    ("auth", "policy"),
    ("config", "auth"),
    ("delivery", "config"),
    ("delivery", "policy"),
    ("delivery", "spool"),
    ("policy", "auth"),
    ("policy", "config"),
    ("spool", "config"),
    ("spool", "delivery"),
})

# "path:qualified name" of product functions above MAX_COMPLEXITY.  Target: empty.
KNOWN_COMPLEX: frozenset[str] = frozenset({
    "gateway/cli/adopt.py:adopt",
    "gateway/cli/configcheck.py:check",
    "gateway/cli/online_check.py:check_online",
    "gateway/cli/queue.py:_run",
    "gateway/cli/sendmail.py:load_submission_config",
    "gateway/cli/sendmail.py:parse_args",
    "gateway/cli/sendmail.py:read_message",
    "gateway/config/loader.py:build_config",
    "gateway/config/loader.py:parse_listener",
    "gateway/reload.py:apply_reload",
    "gateway/reload.py:restart_needed",
    "gateway/smtp/protocol.py:GatewayESMTP._cmd_mail",
    "gateway/smtp/protocol.py:GatewayESMTP._finish_message",
    "gateway/spool/disk.py:SpoolDisk._import_one",
    "gateway/spool/disk.py:SpoolDisk.scan_incoming",
    "gateway/spool/runner.py:QueueRunner._apply_request",
    "gateway/spool/runner.py:QueueRunner._attempt",
    "gateway/spool/runner.py:QueueRunner._transient",
    "gateway/status/metrics.py:StatusCollector.collect",
    "gateway/testing/fake_graph.py:FakeGraphServer._check_assertion",
    "gateway/testing/fake_graph.py:_route",
    "gateway/testing/harness.py:smtp_transaction",
})

# Product modules above MAX_MODULE_LINES (gateway/testing is exempt).  Target: empty.
KNOWN_LONG: frozenset[str] = frozenset({
    "gateway/smtp/protocol.py",
    "gateway/spool/disk.py",
    "gateway/spool/runner.py",
})


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True)


def package_import_edges() -> dict[tuple[str, str], set[str]]:
    """Every absolute import of gateway.<other> from inside gateway.<pkg>, function-local ones too."""
    edges: dict[tuple[str, str], set[str]] = {}
    packages = {p.name for p in GATEWAY.iterdir() if (p / "__init__.py").exists()} - {"testing"}
    for path in sorted(GATEWAY.rglob("*.py")):
        parts = path.relative_to(GATEWAY).parts
        if len(parts) < 2 or parts[0] not in packages:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                bits = name.split(".")
                if bits[0] == "gateway" and len(bits) > 1 and bits[1] in packages and bits[1] != parts[0]:
                    edges.setdefault((parts[0], bits[1]), set()).add(str(path.relative_to(ROOT)))
    return edges


def edges_on_cycles(edges: dict[tuple[str, str], set[str]]) -> set[tuple[str, str]]:
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))
        return False

    return {(a, b) for a, b in edges if reaches(b, a)}


class ImportDirectionTests(unittest.TestCase):
    def test_no_new_cycle(self) -> None:
        edges = package_import_edges()
        on_cycles = edges_on_cycles(edges)
        new = sorted(on_cycles - KNOWN_CYCLE_EDGES)
        self.assertEqual(new, [], "new import cycle(s): " + "; ".join(
            f"{a} -> {b} in {', '.join(sorted(edges[a, b]))}" for a, b in new))
        self.assertEqual(sorted(KNOWN_CYCLE_EDGES - on_cycles), [],
                         "these edges no longer close a cycle: remove them from KNOWN_CYCLE_EDGES")

    def test_detects_a_cycle(self) -> None:
        self.assertEqual(edges_on_cycles({("a", "b"): set(), ("b", "a"): set(), ("b", "c"): set()}),
                         {("a", "b"), ("b", "a")})


def function_complexities() -> dict[str, int]:
    from radon.complexity import cc_visit
    found = {}
    for path in sorted(GATEWAY.rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for block in cc_visit(path.read_text()):
            items = [block] + list(getattr(block, "methods", []))
            for item in items:
                name = f"{item.classname}.{item.name}" if getattr(item, "classname", None) else item.name
                found[f"{rel}:{name}"] = max(found.get(f"{rel}:{name}", 0), item.complexity)
    return found


class SizeTests(unittest.TestCase):
    def test_functions_stay_small(self) -> None:
        complex_now = {name for name, value in function_complexities().items() if value > MAX_COMPLEXITY}
        self.assertEqual(sorted(complex_now - KNOWN_COMPLEX), [],
                         f"functions above cyclomatic complexity {MAX_COMPLEXITY}: split them")
        self.assertEqual(sorted(KNOWN_COMPLEX - complex_now), [],
                         "fixed (or gone): remove them from KNOWN_COMPLEX")

    def test_modules_stay_small(self) -> None:
        long_now = {str(p.relative_to(ROOT)) for p in GATEWAY.rglob("*.py")
                    if "testing" not in p.relative_to(GATEWAY).parts[:1]
                    and len(p.read_text().splitlines()) > MAX_MODULE_LINES}
        self.assertEqual(sorted(long_now - KNOWN_LONG), [], f"modules above {MAX_MODULE_LINES} lines: split them")
        self.assertEqual(sorted(KNOWN_LONG - long_now), [], "fixed (or gone): remove them from KNOWN_LONG")


class StaticCheckTests(unittest.TestCase):
    def test_ruff(self) -> None:
        result = _run("ruff", "check", "--output-format", "concise", "gateway", "twisted", "tests", "bench", "scripts")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_mypy(self) -> None:
        result = _run("mypy", "gateway", "twisted/plugins")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
