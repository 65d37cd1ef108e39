"""The ClickHouse HTTP stand-in (tests/support/chdb_http.py) that the clickhouse-connect backend's
tests and bench/ingest_throughput.py's "server" rows run against: an insert's rows are data, never
searched for a FORMAT clause (it scanned every byte of every insert with a regular expression,
about 6 us of the stand-in's CPU per event in the ingest bench, 50-53 -> 45-46, and took a FORMAT at the end of the rows
for the statement's)."""

import uuid

import httpx

from tests.support.chdb_http import response_format, start


def test_the_format_clause_of_a_query_ends_the_statement():
    assert response_format("SELECT 1\nFORMAT JSONEachRow", False) == "JSONEachRow"
    assert response_format("  select 1 format TSV  \n", False) == "TSV"
    assert response_format("SELECT 'FORMAT JSON' AS s", False) is None


def test_an_insert_is_read_up_to_its_first_line_only():
    rows = '{"s": ["a", "b"]}\n' * 1000 + "FORMAT TabSeparated"
    assert response_format("INSERT INTO t FORMAT JSONColumns\n" + rows, False) == "JSONColumns"
    assert response_format("insert into t values (1)\n" + rows, False) is None
    # the query in the URL and the rows in the body
    assert response_format("INSERT INTO t FORMAT JSONEachRow", True) == "JSONEachRow"


def test_a_served_insert_whose_rows_end_like_a_format_clause(clickhouse_http_url):
    table = f"default.fmt_{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=clickhouse_http_url, timeout=30) as http:
        assert http.post("/", content=f"CREATE TABLE {table} (s String) ENGINE = MergeTree ORDER BY s").status_code == 200
        # clickhouse-connect's raw_insert form: the whole statement in the body, its rows after the first line
        r = http.post("/", content=f"INSERT INTO {table} FORMAT TabSeparated\nfirst\nlast FORMAT JSON\n")
        assert r.status_code == 200, r.text
        assert r.headers["X-ClickHouse-Format"] == "TabSeparated"
        r = http.post("/", params={"query": f"SELECT s FROM {table} ORDER BY s FORMAT JSONCompactColumns"})
        assert r.json() == [["first", "last FORMAT JSON"]]


def test_on_sigusr1_the_stand_in_reports_its_requests_in_flight_and_its_stacks(tmp_path):
    """What a stuck test's report (tests/support/hang_report.py) gets from the stand-in: the SQL each
    request runs, for how long and at which stage, and every thread's stack."""
    import contextlib
    import os
    import signal
    import threading
    import time

    log = tmp_path / "stderr.txt"
    with log.open("wb") as err:
        proc, url = start(tmp_path / "ch", stderr=err)
    try:
        slow = ("SELECT sleepEachRow(1) FROM numbers(30) SETTINGS max_block_size = 1, "
                "function_sleep_max_microseconds_per_block = 60000000 FORMAT TSV")

        def run_slow() -> None:
            with contextlib.suppress(httpx.HTTPError):  # it ends when the stand-in is killed
                httpx.post(url, content=slow, timeout=120)

        threading.Thread(target=run_slow, daemon=True).start()
        deadline = time.monotonic() + 20
        while "running in chDB" not in log.read_text(errors="replace") and time.monotonic() < deadline:
            os.kill(proc.pid, signal.SIGUSR1)
            time.sleep(0.5)
        text = log.read_text(errors="replace")
        assert proc.poll() is None, text  # it reported, and goes on serving
        assert "request(s) in flight" in text and "running in chDB for" in text and "sleepEachRow(1)" in text, text
        assert "Thread 0x" in text and "chdb_http.py" in text and "in _serve" in text, text  # the stacks
        assert httpx.get(url + "/ping", timeout=5).status_code == 200
    finally:
        proc.kill()
        proc.wait(10)
