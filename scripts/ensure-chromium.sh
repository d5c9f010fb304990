#!/usr/bin/env bash
# The UI test drives Debian's chromium headless. Install it when missing and we can (root + apt-get);
# otherwise say so: the UI test then skips, or fails where RMN_REQUIRE_BROWSER=1 (CI).
set -uo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "ensure-chromium: installing Debian's chromium for the UI test (about a minute)…"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/tmp/rmn-apt-chromium.log 2>&1; then
    apt-get update -q >>/tmp/rmn-apt-chromium.log 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >>/tmp/rmn-apt-chromium.log 2>&1 \
      || echo "ensure-chromium: apt-get install chromium failed (see /tmp/rmn-apt-chromium.log)" >&2
  fi
else
  echo "ensure-chromium: chromium missing and cannot be installed here (needs root + apt-get)" >&2
fi
exit 0
