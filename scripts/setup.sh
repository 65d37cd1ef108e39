#!/usr/bin/env bash
# Creates .venv and installs every package of the repo (editable) with pinned versions.
# Safe to re-run; does nothing heavy when the environment is already up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
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
