#!/usr/bin/env bash
# Debian's headless-capable Chromium for the HTML report tests (tests/test_report_html.py
# screenshots the page and checks the pixels). Idempotent: does nothing when it is there.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    echo "chromium: $CHROMIUM present"
    exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
$sudo apt-get update
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
[ -x "$CHROMIUM" ] || {
    echo "chromium installed but $CHROMIUM not found" >&2
    exit 1
}
