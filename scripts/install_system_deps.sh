#!/usr/bin/env bash
# System packages the test suite needs besides Python's: Debian's chromium, which renders
# the HTML reports headless in tests/test_report.py. Installed only when missing; uses
# sudo when not run as root. (README Quick start, command 2; .ci/run runs the same line.)
set -euo pipefail
if command -v chromium > /dev/null 2>&1 || command -v chromium-browser > /dev/null 2>&1 \
        || command -v google-chrome > /dev/null 2>&1; then
    exit 0
fi
SUDO=
if [ "$(id -u)" -ne 0 ]; then
    SUDO=$(command -v sudo) || { echo "chromium is missing: apt-get install chromium (as root)" >&2; exit 1; }
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium
