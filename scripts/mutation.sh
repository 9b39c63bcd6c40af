#!/usr/bin/env bash
# Mutation testing (mutmut 3) of the security-critical parsers: the mail grammar (gateway/mail/),
# the relay guard (gateway/auth/relay.py) and the SMTP data framing (gateway/smtp/framing.py).
#
# Not part of CI (it takes minutes of CPU per target); run it after changing those modules:
#
#   bash scripts/mutation.sh            # all three targets
#   bash scripts/mutation.sh mail       # one of: mail relay framing
#
# It works on a throw-away copy of the tracked files (so no mutants/ directory or mutmut
# configuration lands in the work tree), runs the fast synchronous tests that target each
# module under pytest, and prints the survivors and two scores per target: over all mutants,
# and over the behaviour-changing ones — a survivor whose only change is inside a string (the
# text of a reply or a log line) is set aside, as the issue's goal excludes reply text.
# Timeouts count as killed, "no tests" as survived.  Survivors are listed by name; look at
# one with `cd <work dir> && mutmut show <name>`.
# The goal (issue 8) is at least 90 % for gateway/mail and the relay guard.
set -euo pipefail

# The whole script is one function, read before it runs: editing the file during a long run
# cannot change what the run does.
main() {
repo="$(git -C "$(dirname "$0")" rev-parse --show-toplevel 2>/dev/null || pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
jobs="${MUTATION_JOBS:-2}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(mail relay framing)

"$python" -m pip install -q 'mutmut==3.8.1' 'pytest>=8' >/dev/null

paths_for() {
    case "$1" in
        mail) echo "gateway/mail/*" ;;
        relay) echo "gateway/auth/relay.py" ;;
        framing) echo "gateway/smtp/framing.py" ;;
        *) echo "unknown target $1 (mail, relay, framing)" >&2; exit 64 ;;
    esac
}

tests_for() {
    case "$1" in
        mail) printf '%s\n' tests/test_mail_addresses.py tests/test_mail_message.py tests/test_security_relay.py tests/test_mail_relay_guard.py \
                  tests/test_auth_patterns.py tests/test_policy_sender_allowlist.py tests/test_graph_mime.py \
                  "tests/test_security_mail.py::SenderImpersonationTests" "tests/test_security_mail.py::ParserCrashTests" \
                  "tests/test_security_mail.py::GroupRecipientTests" "tests/test_security_mail.py::LowFindingTests" ;;
        relay) printf '%s\n' tests/test_security_relay.py tests/test_mail_relay_guard.py \
                   "tests/test_security_mail.py::SenderImpersonationTests" ;;
        framing) printf '%s\n' tests/test_smtp_framing.py tests/test_smtp_framing_limits.py tests/test_smtp_body_limits.py ;;
    esac
}

status=0
for target in "${targets[@]}"; do
    work="$(mktemp -d "${TMPDIR:-/tmp}/graphsmtp-mutation-$target.XXXXXX")"
    (cd "$repo" && git ls-files -z | xargs -0 cp --parents -t "$work")
    {
        echo
        echo "[mutmut]"
        echo "source_paths = gateway"
        echo "only_mutate = $(paths_for "$target")"
        echo "pytest_add_cli_args = -p no:cacheprovider -q"
        echo "pytest_add_cli_args_test_selection ="
        tests_for "$target" | sed 's/^/    /'
    } >> "$work/setup.cfg"
    echo "== $target: mutating $(paths_for "$target") in $work"
    (cd "$work" && "$python" -m mutmut run --max-children "$jobs" >"$work/run.log" 2>&1) || status=$?
    (cd "$work" && "$python" - "$target" <<'PY'
import ast, json, pathlib, sys
from mutmut.stats import status_by_exit_code

def functions(path):
    """Every function definition of a mutated module by name (methods included)."""
    tree = ast.parse(path.read_text())
    return {node.name: node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}

class Texts(ast.NodeTransformer):
    """
    Every string (and f-string) becomes one placeholder, and so does the message argument of
    a raised exception (mutmut replaces it by None): what is left is behaviour.
    """
    def visit_Constant(self, node):
        return ast.Constant("") if isinstance(node.value, str) else node
    def visit_JoinedStr(self, node):
        return ast.Constant("")
    def visit_Raise(self, node):
        self.generic_visit(node)
        call = node.exc
        if isinstance(call, ast.Call):
            call.args = [ast.Constant("") if isinstance(a, ast.Constant) and a.value in ("", None) else a for a in call.args]
        return node

def text_only(name, modules):
    module, _, function = name.rpartition(".")
    if module not in modules:
        modules[module] = functions(pathlib.Path("mutants", *module.split(".")).with_suffix(".py"))
    defs = modules[module]
    mutant, original = defs.get(function), defs.get(function.rsplit("__mutmut_", 1)[0] + "__mutmut_orig")
    if mutant is None or original is None:
        return False
    def strip(node):
        function = Texts().visit(ast.parse(ast.unparse(node))).body[0]
        return [ast.dump(statement) for statement in function.body]
    return strip(mutant) == strip(original)

counts, survivors, modules = {}, [], {}
for meta in pathlib.Path("mutants").rglob("*.meta"):
    data = json.loads(meta.read_text())
    for name, code in data.get("exit_code_by_key", {}).items():
        kind = status_by_exit_code[code]
        if kind in ("survived", "no tests"):
            if text_only(name, modules):
                kind = "survived (reply text only)"
            else:
                survivors.append(name)
        counts[kind] = counts.get(kind, 0) + 1
killed = counts.get("killed", 0) + counts.get("timeout", 0) + counts.get("caught by type check", 0)
lived = counts.get("survived", 0) + counts.get("no tests", 0)
texts = counts.get("survived (reply text only)", 0)
for name in sorted(survivors):
    print("  survived:", name)
print(f"{sys.argv[1]}: {counts}")
print(f"{sys.argv[1]}: all mutants killed {killed}/{killed + lived + texts} = {100.0 * killed / max(killed + lived + texts, 1):.1f} %")
print(f"{sys.argv[1]}: behaviour-changing (reply text aside) killed {killed}/{killed + lived} = {100.0 * killed / max(killed + lived, 1):.1f} %")
PY
    )
done
return "$status"
}

main "$@"; exit
