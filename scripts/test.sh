#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine, then run it with trial.
# Idempotent: re-running skips what is already installed.  Exits non-zero when a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v swaks >/dev/null 2>&1 || need_apt+=(swaks)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]' --config-settings editable_mode=compat
# trial's own summary line ("PASSED (successes=N)" / "FAILED (...)") and exit status decide.
exec .venv/bin/python -m twisted.trial --jobs=2 "${@:-tests}"
