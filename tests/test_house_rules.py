"""
The house rules that keep graphsmtp easy to carry on, checked on every CI run.

Each rule is cheap to keep and expensive to win back once broken: imports between gateway's
subpackages run one way (down the layer table of ARCHITECTURE.md), product functions stay small
enough to read, modules keep one job, and the static checkers (ruff, mypy with mypy-zope) stay
clean.  There is no list of exceptions: the last offenders were fixed when these rules joined CI
(twisted/plugins is type-checked too; gateway/testing is held to the function rule, not the
module one — the fake Graph is one server).
"""

from __future__ import annotations

import ast
import pathlib
import re
import subprocess
import sys

from twisted.trial import unittest

ROOT = pathlib.Path(__file__).resolve().parent.parent
GATEWAY = ROOT / "gateway"

MAX_COMPLEXITY = 15
MAX_MODULE_LINES = 600

# The intended order of gateway's parts, lowest row first: the table in ARCHITECTURE.md
# (test_architecture_document_has_the_same_table keeps the two the same).  A part is a
# subpackage (``mail``) or a top-level module (``service`` for gateway/service.py): top-level
# modules are held to the order too, or a cycle through the composition root goes unseen.  A
# part imports only parts on lower rows, function-local imports included; parts on one row
# never import each other.  So an upward import fails here even before it closes a cycle.  A
# new package or top-level module gets a row here and in ARCHITECTURE.md.  gateway.testing sits
# beside the top, has no row, and nothing in a row may import it except SHIMS.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"threads", "logging", "private_files", "certificates", "callback_free_tls"}),
    frozenset({"mail"}),
    frozenset({"config"}),
    frozenset({"plugins", "spool"}),
    frozenset({"policy", "delivery"}),
    frozenset({"auth"}),
    frozenset({"smtp", "queue", "cluster"}),
    frozenset({"status"}),
    frozenset({"wiring"}),
    frozenset({"reload"}),
    frozenset({"service"}),
    frozenset({"cli", "workers"}),
    frozenset({"tap", "plugin"}),
)

TESTING = "testing"

# Old import paths of the test helpers, documented as public (gateway/testing/__init__.py) and
# imported by plugin authors' tests: re-exports of gateway.testing, the one upward import allowed.
SHIMS = frozenset({"gateway/spool/testing.py", "gateway/policy/testing.py"})


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True)


def gateway_parts() -> set[str]:
    """gateway's subpackages and top-level modules, by name, gateway.testing left out."""
    packages = {p.name for p in GATEWAY.iterdir() if (p / "__init__.py").exists()}
    modules = {p.stem for p in GATEWAY.glob("*.py")} - {"__init__"}
    return (packages | modules) - {TESTING}


def package_import_edges() -> dict[tuple[str, str], set[str]]:
    """
    Every absolute import of gateway.<other> from inside gateway.<part>, function-local ones
    too, where a part is a subpackage or a top-level module; imports of gateway.testing count
    (as edges to ``testing``) except from L{SHIMS}.
    """
    edges: dict[tuple[str, str], set[str]] = {}
    parts = gateway_parts()
    for path in sorted(GATEWAY.rglob("*.py")):
        relative = path.relative_to(GATEWAY).parts
        here = path.stem if len(relative) == 1 else relative[0]
        where = str(path.relative_to(ROOT))
        if here not in parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
                if node.module == "gateway":  # from gateway import service
                    names += [f"gateway.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                bits = name.split(".")
                if bits[0] != "gateway" or len(bits) < 2 or bits[1] == here:
                    continue
                if bits[1] in parts or (bits[1] == TESTING and where not in SHIMS):
                    edges.setdefault((here, bits[1]), set()).add(where)
    return edges


def layer_violations(edges: dict[tuple[str, str], set[str]], layers: tuple[frozenset[str], ...]) -> list[str]:
    """Every import edge that does not point to a lower row of ``layers`` (or whose part has no row)."""
    row = {part: number for number, parts in enumerate(layers) for part in parts}
    row[TESTING] = len(layers)
    problems = []
    for (a, b), files in sorted(edges.items()):
        if a not in row or b not in row:
            missing = a if a not in row else b
            problems.append(f"gateway/{missing} has no row in LAYERS (and ARCHITECTURE.md)")
        elif row[a] <= row[b]:
            where = "the same row as" if row[a] == row[b] else "a higher row than"
            problems.append(f"{a} -> {b}: {b} is on {where} {a}, in {', '.join(sorted(files))}")
    return problems


def architecture_layers(text: str) -> tuple[frozenset[str], ...]:
    """The layer table of ARCHITECTURE.md: rows ``| <n> | `pkg`, `module.py` | ... |``, lowest first."""
    rows = {}
    for line in text.splitlines():
        match = re.match(r"^\|\s*(\d+)\s*\|([^|]*)\|", line)
        if match:
            rows[int(match.group(1))] = frozenset(re.findall(r"`([a-z_]+)(?:\.py)?`", match.group(2)))
    return tuple(rows[number] for number in sorted(rows))


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
    def test_no_cycle(self) -> None:
        edges = package_import_edges()
        on_cycles = sorted(edges_on_cycles(edges))
        self.assertEqual(on_cycles, [], "import cycle(s): " + "; ".join(
            f"{a} -> {b} in {', '.join(sorted(edges[a, b]))}" for a, b in on_cycles))

    def test_imports_follow_the_layers(self) -> None:
        problems = layer_violations(package_import_edges(), LAYERS)
        self.assertEqual(problems, [], "imports against the layer order of ARCHITECTURE.md")

    def test_every_package_and_module_has_a_row(self) -> None:
        parts = gateway_parts()
        listed = set().union(*LAYERS)
        self.assertEqual(sorted(parts - listed), [], "give these a row in LAYERS and ARCHITECTURE.md")
        self.assertEqual(sorted(listed - parts), [], "these rows name packages or modules that do not exist")

    def test_architecture_document_has_the_same_table(self) -> None:
        document = architecture_layers((ROOT / "ARCHITECTURE.md").read_text())
        self.assertEqual([sorted(row) for row in document], [sorted(row) for row in LAYERS])

    def test_detects_an_upward_import_before_it_closes_a_cycle(self) -> None:
        layers = (frozenset({"low"}), frozenset({"mid", "side"}), frozenset({"top"}))
        edges = {("top", "low"): {"t.py"}, ("mid", "top"): {"m.py"}, ("mid", "side"): {"s.py"}, ("new", "low"): {"n.py"}}
        self.assertEqual(edges_on_cycles(edges), set())
        self.assertEqual(layer_violations(edges, layers), [
            "mid -> side: side is on the same row as mid, in s.py",
            "mid -> top: top is on a higher row than mid, in m.py",
            "gateway/new has no row in LAYERS (and ARCHITECTURE.md)",
        ])

    def test_nothing_in_a_row_imports_testing(self) -> None:
        edges = {("low", "testing"): {"gateway/low/helpers.py"}}
        self.assertEqual(layer_violations(edges, (frozenset({"low"}),)), [
            "low -> testing: testing is on a higher row than low, in gateway/low/helpers.py"])

    def test_reads_the_document_table(self) -> None:
        text = "| Layer | Packages | Job |\n|---|---|---|\n| 2 | `top.py` | x |\n| 1 | `a`, `b` | y |\n"
        self.assertEqual(architecture_layers(text), (frozenset({"a", "b"}), frozenset({"top"})))

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
        self.assertEqual(sorted(complex_now), [], f"functions above cyclomatic complexity {MAX_COMPLEXITY}: split them")

    def test_modules_stay_small(self) -> None:
        long_now = {str(p.relative_to(ROOT)) for p in GATEWAY.rglob("*.py")
                    if "testing" not in p.relative_to(GATEWAY).parts[:1]
                    and len(p.read_text().splitlines()) > MAX_MODULE_LINES}
        self.assertEqual(sorted(long_now), [], f"modules above {MAX_MODULE_LINES} lines: split them")


class StaticCheckTests(unittest.TestCase):
    def test_ruff(self) -> None:
        result = _run("ruff", "check", "--output-format", "concise", "gateway", "twisted", "tests", "bench", "scripts")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_mypy(self) -> None:
        result = _run("mypy", "gateway", "twisted/plugins")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
