#!/usr/bin/env bash
# Debian's Chromium for the browser tests (tests/test_browser.py drives it through Playwright
# with executable_path=/usr/bin/chromium; Playwright's own browser download is not used).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
