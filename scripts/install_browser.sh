#!/usr/bin/env bash
# Install headless Debian Chromium for the browser tests (tests/test_demo.py), idempotently.
#
# Playwright's own `playwright install` downloads a browser and fails offline, so the tests
# drive the distribution's /usr/bin/chromium instead (see TOOLCHAIN.md). Called by
# `make test` before pytest. Does nothing when Chromium is already installed.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    echo "install_browser: $CHROMIUM already present ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: $CHROMIUM is missing and apt-get is not available; install Chromium by hand (browser tests will be skipped)" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install_browser: $CHROMIUM is missing and installing it needs root (no passwordless sudo); run: sudo apt-get install -y chromium chromium-driver" >&2
        exit 1
    fi
fi

echo "install_browser: installing chromium and chromium-driver with apt-get"
if ! $SUDO apt-get update -qq; then
    echo "install_browser: 'apt-get update' failed (no access to the package mirror?)" >&2
    exit 1
fi
if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver; then
    echo "install_browser: 'apt-get install chromium chromium-driver' failed" >&2
    exit 1
fi

if [ ! -x "$CHROMIUM" ]; then
    echo "install_browser: apt-get finished but $CHROMIUM does not exist" >&2
    exit 1
fi
echo "install_browser: installed $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
