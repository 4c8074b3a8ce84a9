#!/usr/bin/env bash
# Install Debian's Chromium for the report's browser test (tests/report/test_report_browser.py).
#   bash scripts/install_chromium.sh
# The test opens the report in headless Chromium at /usr/bin/chromium and skips,
# saying so, where it is missing. Needs root (CI containers) or sudo.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    echo "install_chromium: $(/usr/bin/chromium --version 2>/dev/null || echo chromium) already installed"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium
/usr/bin/chromium --version
