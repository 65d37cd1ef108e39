# Helicone-class LLM gateway: one-box development and CI entry points.
PY ?= .venv/bin/python
DATA_DIR ?= .helicone-data
# pytest-xdist workers: most tests wait on servers, sockets and timers, so three take about 30 % less time than two,
# even on two cores (1,953 tests on a 2-core box: 528 s with three, 749 s with two, in one hour)
TEST_WORKERS ?= 3
export PY DATA_DIR

.PHONY: setup up down status demo test test-unit test-e2e proto proto-check lint bench chaos clean

setup:            ## create .venv and install every package (pinned by constraints.txt)
	@bash scripts/setup.sh

up: setup         ## run the whole stack (UPSTREAM=fake: offline; DETACH=1: in the background; ARGS="--gateway-port 9000")
	@bash scripts/up.sh $(ARGS)

down:             ## stop what `make up` started on DATA_DIR (graceful; waits and reports)
	@$(PY) -m helicone_runner down --data-dir "$(DATA_DIR)" $(ARGS)

status:           ## each service's URL and health, the broker and Postgres (exit 3: not running)
	@$(PY) -m helicone_runner status --data-dir "$(DATA_DIR)"

demo:             ## a few requests (one streaming) through the running stack, then where to find them
	@$(PY) -m helicone_runner demo --data-dir "$(DATA_DIR)" $(ARGS)

test: setup proto-check lint  ## everything CI runs
	$(PY) -m pytest -q -n $(TEST_WORKERS)

test-unit: setup  ## every test not marked e2e
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not e2e"

test-e2e: setup   ## every test marked e2e (tests/e2e, the README's blocks, the chart booted as processes): with test-unit, all of make test
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m e2e

proto: setup      ## regenerate libs/protos/src from protos/
	$(PY) scripts/gen_protos.py

proto-check: setup  ## fail if the generated code is stale
	$(PY) scripts/gen_protos.py --check

lint: setup
	.venv/bin/ruff check .

bench: setup      ## gateway overhead (plus cache-hit and rate-limit rows); a gateway alone with 1 and 2 workers; ours vs Portkey vs LiteLLM (installed into .bench/ the first time); ingest events/s per worker; dashboard queries at 10M and 100M rows
	$(PY) bench/gateway_overhead.py
	$(PY) bench/gateway_alone.py --workers 1,2
	$(PY) bench/rivals.py $(RIVALS_ARGS)
	$(PY) bench/ingest_throughput.py
	$(PY) bench/dashboard_queries.py --data-dir .bench/dashboard

chaos: setup      ## fault scenarios at scale (sent/answered/logged/lost/duplicated/p99) and a 1M-event broker soak
	$(PY) bench/chaos.py

clean:
	rm -rf .venv $(DATA_DIR)
