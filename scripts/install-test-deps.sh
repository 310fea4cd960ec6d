#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian/Ubuntu machine: Python packages (Ray included) and Debian's
# chromium (Playwright's own browser download is not used; the browser tests drive /usr/bin/chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
# the Ray backend's tests (tests/search/test_ray_backend.py; ~15 s more to install, skipped without it)
python -m pip install -q --disable-pip-version-check -r requirements-distributed.txt
if [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
  else
    echo "warning: /usr/bin/chromium is missing and apt-get is unavailable; browser tests will be skipped" >&2
  fi
fi
