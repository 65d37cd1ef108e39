#!/usr/bin/env bash
# Creates .venv and installs every package of the repo (editable) with pinned versions.
# Safe to re-run; does nothing heavy when the environment is already up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PY:-}" ] && [ "$PY" != ".venv/bin/python" ]; then
  exit 0  # `make PY=/path/to/python ...`: that interpreter's environment is used as it is
fi
PY=${PYTHON:-python3}
# promtool (Debian's prometheus package) checks and unit-tests the chart's alert rules.
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null; }
  else
    echo "setup: promtool not found; install Debian's 'prometheus' package (the chart's alert tests need it)" >&2
  fi
fi
# redis-server (Debian's redis-server package): the gateway cache tests run against a real Redis.
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server >/dev/null; }
  else
    echo "setup: redis-server not found; install Debian's 'redis-server' package (the gateway cache tests need it)" >&2
  fi
fi
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
