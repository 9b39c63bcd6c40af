#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine, then run it with trial.
# Idempotent: re-running skips what is already installed.  Exits non-zero when a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]' --config-settings editable_mode=compat
# The editable install must expose only gateway/ and twisted/plugins/: with the checkout itself
# on sys.path, graphsmtp's tests/ shadowed every plugin's own tests package.
.venv/bin/python scripts/editable-import-root.py
# msal-node, so a test can check that a non-Python MSAL accepts the fake Entra authority.
npm install --prefix tests/msal_node --no-audit --no-fund --silent
# trial's exit status decides; its summary ("PASSED (successes=N)" / "FAILED (failures=F,
# errors=E, successes=N)") is restated as one plain "N passed, M failed" line, and a run that
# executed no test at all is a failure.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
.venv/bin/python -m twisted.trial --jobs=2 "${@:-tests}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
summary=$(grep -E '^(PASSED|FAILED)' "$log" | tail -n 1)
count() { echo "$summary" | grep -oE "$1=[0-9]+" | cut -d= -f2 | head -n 1; }
passed=$(( $(count successes || true) + 0 ))
failed=$(( $(count failures || true) + $(count errors || true) + $(count unexpectedSuccesses || true) + 0 ))
echo "$passed passed, $failed failed"
if [ "$passed" -eq 0 ] && [ "$failed" -eq 0 ]; then
    echo "no test ran" >&2
    exit 1
fi
exit "$status"
