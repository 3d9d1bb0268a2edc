#!/usr/bin/env bash
# Make sure Debian's chromium and chromium-driver are installed, for the console's browser tests
# (tests/test_console.py drives /usr/bin/chromium through /usr/bin/chromedriver; nothing is
# downloaded at test time). If they cannot be installed, say so: those tests then skip with the reason.
set -uo pipefail
have() { command -v chromium >/dev/null 2>&1 && [ -x /usr/bin/chromedriver ]; }
if have; then
  echo "ensure_chromium: found $(chromium --version 2>/dev/null | head -1)"
  exit 0
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
if $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; then
  have && echo "ensure_chromium: installed $(chromium --version 2>/dev/null | head -1)" && exit 0
fi
echo "ensure_chromium: could not install chromium/chromium-driver; the console browser tests will skip" >&2
exit 0
