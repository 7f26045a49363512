#!/bin/sh
# Make sure the headless Chromium that tests/test_report_html.py opens the
# report in is there; the README's test command runs this before pytest.
#
# Found: $ONEPASS_CHROMIUM, else chromium / chromium-browser / google-chrome /
# google-chrome-stable / chrome on PATH (the same search as the test).
# Missing, as root with apt-get (Debian, Ubuntu, CI): installs Debian's
# `chromium` package. Missing otherwise: prints how to get one and exits 0, so
# the other tests still run; the report test then fails with the same advice.
set -eu

find_chromium() {
  if [ -n "${ONEPASS_CHROMIUM:-}" ]; then
    [ -x "$ONEPASS_CHROMIUM" ] && echo "$ONEPASS_CHROMIUM"
    return
  fi
  for name in chromium chromium-browser google-chrome google-chrome-stable chrome; do
    if command -v "$name" >/dev/null 2>&1; then
      command -v "$name"
      return
    fi
  done
}

found=$(find_chromium || true)
if [ -n "$found" ]; then
  exit 0
fi
if [ -n "${ONEPASS_CHROMIUM:-}" ]; then
  echo "ensure_chromium: ONEPASS_CHROMIUM=$ONEPASS_CHROMIUM is not an executable file;" \
       "the report test (tests/test_report_html.py) will fail." >&2
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "ensure_chromium: installing Debian's chromium for the report test (about a minute)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq -o DPkg::Lock::Timeout=300 chromium >/dev/null
  command -v chromium >/dev/null 2>&1 && exit 0
  echo "ensure_chromium: apt-get installed chromium but it is not on PATH" >&2
  exit 1
fi
echo "ensure_chromium: no Chromium found; the report test (tests/test_report_html.py) needs" \
     "one: install it (Debian/Ubuntu: sudo apt-get install chromium) or set" \
     "ONEPASS_CHROMIUM=/path/to/chromium-or-chrome. The other tests run without it." >&2
exit 0
