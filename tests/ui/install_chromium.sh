#!/usr/bin/env bash
# Installs Debian's Chromium for the browser tests (tests/ui) when it is missing.
# Playwright's own browser downloads are not used: the playwright package drives this one.
set -euo pipefail
if [ -n "${SEGLIB_CHROMIUM:-}" ] || [ -x /usr/bin/chromium ]; then
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo -n"  # fails at once, rather than asking for a password
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq chromium
/usr/bin/chromium --version
