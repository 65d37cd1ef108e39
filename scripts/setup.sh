#!/usr/bin/env bash
# Creates .venv and installs every package of the repo (editable) with pinned versions.
# Safe to re-run; does nothing heavy when the environment is already up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PY:-}" ] && [ "$PY" != ".venv/bin/python" ]; then
  exit 0  # `make PY=/path/to/python ...`: that interpreter's environment is used as it is
fi
PY=${PYTHON:-python3}
# Debian tools the tests drive: `apt_tool <command> <package> <what needs it>` installs the package when the command is missing.
apt_tool() {
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$2" >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$2" >/dev/null; }
  else
    echo "setup: $1 not found; install Debian's '$2' package ($3 need it)" >&2
  fi
}
apt_tool promtool prometheus "the chart's alert tests"
apt_tool redis-server redis-server "the gateway cache tests"
apt_tool chromium chromium "the dashboard browser test"
apt_tool chromedriver chromium-driver "the dashboard browser test"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.helicone-setup
want=$(cat constraints.txt requirements-dev.txt */*/pyproject.toml runner/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -r requirements-dev.txt \
  -e libs/protos -e libs/core \
  -e services/gateway -e services/ingest -e services/api -e services/prompts \
  -e runner
echo "$want" > "$stamp"
