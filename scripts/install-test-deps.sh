#!/usr/bin/env bash
# Install the Debian packages the test suite needs (scripts/debian-packages.txt) that are not
# installed yet.  Called by scripts/test.sh; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

# The one list of Debian packages the tests need: scripts/debian-packages.txt.
need_apt=()
while read -r package _; do
    [ -n "$package" ] || continue
    # NodeSource's nodejs package ships npm itself and conflicts with Debian's npm package.
    if [ "$package" = npm ] && command -v npm >/dev/null; then continue; fi
    status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
    [ "$status" = "installed" ] || need_apt+=("$package")
done < <(sed -e 's/#.*//' scripts/debian-packages.txt)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing Debian packages: ${need_apt[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi
