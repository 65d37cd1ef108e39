#!/usr/bin/env bash
# Starts the whole stack on this machine (embedded Postgres, Kafka-compatible broker, chDB,
# local body store). UPSTREAM=fake also starts the bundled fake OpenAI/Anthropic provider on
# :9999 and points the gateway at it, for machines without provider access.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-.helicone-data}
args=(up --data-dir "$DATA_DIR")
if [ "${UPSTREAM:-}" = "fake" ]; then
  .venv/bin/python -m tests.support.fake_upstream --port "${FAKE_UPSTREAM_PORT:-9999}" &
  fake_pid=$!
  trap 'kill $fake_pid 2>/dev/null || true' EXIT
  args+=(--openai-url "http://127.0.0.1:${FAKE_UPSTREAM_PORT:-9999}" --anthropic-url "http://127.0.0.1:${FAKE_UPSTREAM_PORT:-9999}")
fi
.venv/bin/helicone-stack "${args[@]}" "$@"
