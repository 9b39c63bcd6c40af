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
# module under pytest, and prints the survivors and a score per target:
#   killed / (killed + survived)   — timeouts count as killed, "no tests" as survived.
# The goal (issue 8) is at least 90 % for gateway/mail and the relay guard.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
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
                  tests/test_auth_patterns.py tests/test_policy_sender_allowlist.py tests/test_review_graph_recipients.py \
                  "tests/test_security_mail.py::SenderImpersonationTests" "tests/test_security_mail.py::ParserCrashTests" \
                  "tests/test_security_mail.py::GroupRecipientTests" "tests/test_security_mail.py::LowFindingTests" ;;
        relay) printf '%s\n' tests/test_security_relay.py tests/test_mail_relay_guard.py \
                   "tests/test_security_mail.py::SenderImpersonationTests" ;;
        framing) printf '%s\n' tests/test_smtp_framing.py ;;
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
import json, pathlib, sys
from mutmut.stats import status_by_exit_code
counts, survivors = {}, []
for meta in pathlib.Path("mutants").rglob("*.meta"):
    data = json.loads(meta.read_text())
    for name, code in data.get("exit_code_by_key", {}).items():
        kind = status_by_exit_code[code]
        counts[kind] = counts.get(kind, 0) + 1
        if kind in ("survived", "no tests"):
            survivors.append(name)
killed = counts.get("killed", 0) + counts.get("timeout", 0) + counts.get("caught by type check", 0)
total = killed + counts.get("survived", 0) + counts.get("no tests", 0)
for name in sorted(survivors):
    print("  survived:", name)
print(f"{sys.argv[1]}: {counts}")
print(f"{sys.argv[1]}: score {killed}/{total} = {100.0 * killed / max(total, 1):.1f} %")
PY
    )
done
exit "$status"
