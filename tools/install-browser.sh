#!/usr/bin/env bash
# `make browser`: Debian's headless-capable Chromium, for the live view's end-to-end test
# (tests/live_view.rs). Idempotent: does nothing when /usr/bin/chromium is there already.
# Installing needs root (apt-get); `make demo` does not need it.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "chromium is missing and installing it needs root: run 'sudo $0' (or apt-get install chromium)" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
/usr/bin/chromium --version
