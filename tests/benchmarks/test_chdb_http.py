"""The ClickHouse HTTP stand-in (tests/support/chdb_http.py) that the clickhouse-connect backend's
tests and bench/ingest_throughput.py's "server" rows run against: an insert's rows are data, never
searched for a FORMAT clause (it scanned every byte of every insert with a regular expression,
about 6 us of the stand-in's CPU per event in the ingest bench, 50-53 -> 45-46, and took a FORMAT at the end of the rows
for the statement's)."""

import uuid

import httpx

from tests.support.chdb_http import response_format


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
