#!/usr/bin/env bash
# Starts the whole stack on this machine (embedded Postgres, Kafka-compatible broker, chDB,
# local body store): `helicone-stack up` with the data dir, UPSTREAM=fake (the bundled fake
# OpenAI/Anthropic provider, started and stopped by the runner), DETACH=1 (in the background,
# back once READY; `make down` stops it) and any further arguments (`make up ARGS=...`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
args=(up --data-dir "${DATA_DIR:-.helicone-data}")
if [ -n "${UPSTREAM:-}" ]; then
  args+=(--upstream "$UPSTREAM")
fi
if [ -n "${FAKE_UPSTREAM_PORT:-}" ]; then
  args+=(--fake-upstream-port "$FAKE_UPSTREAM_PORT")
fi
case "${DETACH:-}" in
  ""|0|false|no) ;;
  *) args+=(--detach) ;;
esac
exec "$PY" -m helicone_runner "${args[@]}" "$@"
