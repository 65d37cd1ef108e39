"""The pure helpers of bench/rivals.py: /proc parsing, idle arithmetic, quantiles, the metrics
filter and the README table."""

import argparse

import pytest

from bench import rivals


def stat_line(pid: int, comm: str, ppid: int, utime: int, stime: int) -> str:
    # fields 3.. of proc(5): state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
    return f"{pid} ({comm}) S {ppid} 1 1 0 -1 4194560 10 0 0 0 {utime} {stime} 0 0 20 0 1 0 100 1000 50"


def test_parse_stat_counts_fields_after_the_last_parenthesis():
    assert rivals.parse_stat(stat_line(42, "node", 7, 120, 30)) == (7, 150)
    # a command name with spaces and parentheses must not shift the fields
    assert rivals.parse_stat(stat_line(43, "uv (worker) 1) S 9", 8, 5, 6)) == (8, 11)


def test_descendants_walks_the_whole_tree_below_existing_roots_only():
    parents = {1: 0, 10: 1, 11: 10, 12: 11, 13: 10, 20: 1, 21: 20}
    assert rivals.descendants(parents, [10]) == {10, 11, 12, 13}
    assert rivals.descendants(parents, [11, 20]) == {11, 12, 20, 21}
    assert rivals.descendants(parents, [999]) == set()  # an exited process


def test_cpu_by_part_counts_each_process_once_in_its_smallest_part():
    # pid -> (parent, ticks): a runner (10) with its broker (11) and a worker (12); a gateway (20); this bench (1)
    table = {1: (0, 7), 10: (1, 100), 11: (10, 40), 12: (10, 5), 20: (1, 300), 21: (20, 1)}
    parts = {"gateway": [20], "all-in-one": [10], "broker": [11], "gone": [99], "client": []}
    before = rivals.ticks_by_part(table, parts, me=1)
    assert before == {"gateway": 301, "all-in-one": 105, "broker": 40, "gone": 0, "client": 7}
    later = {**table, 11: (10, 60), 20: (1, 500), 1: (0, 9)}
    after = rivals.ticks_by_part(later, parts, me=1)
    assert rivals.cpu_per_request(before, after, requests=100, hz=100) == (
        "gateway 20000 µs, all-in-one 0 µs, broker 2000 µs, gone 0 µs, client 200 µs")


def test_busy_cores_counts_new_processes_and_ignores_ended_ones():
    before = {10: 1000, 11: 500, 12: 70}
    after = {10: 1050, 11: 500, 13: 25}  # 12 ended, 13 started
    assert rivals.busy_cores(before, after, seconds=0.5, hz=100) == pytest.approx((50 + 25) / 100 / 0.5)
    assert rivals.busy_cores(before, before, seconds=1.0, hz=100) == 0.0
    assert rivals.busy_cores({10: 5}, {10: 9}, seconds=0.0) == 0.0


def test_quantile_is_nearest_rank():
    values = [float(v) for v in range(100, 0, -1)]  # 1..100, unsorted
    assert rivals.quantile(values, 0.5) == 50.0
    assert rivals.quantile(values, 0.99) == 99.0
    assert rivals.quantile(values, 1.0) == 100.0
    assert rivals.quantile([3.0], 0.99) == 3.0
    assert rivals.quantile([], 0.5) == 0.0


def test_metric_series_keeps_the_asked_families_without_comments_or_creation_stamps():
    text = "\n".join([
        "# HELP helicone_gateway_journal_events Events in the journal",
        "helicone_gateway_journal_events 12.0",
        "helicone_gateway_journal_trimmed_segments_total 4.0",
        "helicone_gateway_journal_trimmed_segments_created 1.7e+09",
        'helicone_gateway_events_spooled_total{reason="broker_down"} 3.0',
        'helicone_gateway_events_published_total{path="direct"} 99.0',
    ])
    assert rivals.metric_series(text, rivals.SPOOL_METRICS) == {
        "helicone_gateway_journal_events": 12.0,
        "helicone_gateway_journal_trimmed_segments_total": 4.0,
        'helicone_gateway_events_spooled_total{reason="broker_down"}': 3.0,
    }


def test_the_spooled_cell_sums_the_reasons_and_tells_an_unused_counter_from_a_missing_one():
    declared = "# HELP helicone_gateway_events_spooled_total x\n# TYPE helicone_gateway_events_spooled_total counter\n"
    assert rivals.spooled_cell(declared) == "0"
    assert rivals.spooled_cell(declared + 'helicone_gateway_events_spooled_total{reason="held"} 2.0\n'
                               'helicone_gateway_events_spooled_total{reason="broker_down"} 3.0\n'
                               'helicone_gateway_events_spooled_created{reason="held"} 1.7e9\n') == "5"
    assert rivals.spooled_cell("helicone_gateway_journal_events 4.0\n") == "n/a¹"


def test_markdown_table_aligns_names_left_and_numbers_right():
    table = rivals.markdown_table(["system", "rps", "p99 ms"], [["ours", "2,358", "2.56"], ["Portkey", "1,105", "5.24"]])
    assert table.splitlines() == [
        "| system | rps | p99 ms |",
        "|:---|---:|---:|",
        "| ours | 2,358 | 2.56 |",
        "| Portkey | 1,105 | 5.24 |",
    ]
    with pytest.raises(ValueError, match="3 cells"):
        rivals.markdown_table(["system", "rps", "p99 ms"], [["ours", "2,358"]])


def test_machine_busy_ticks_counts_busy_states_only():
    # cpu  user nice system idle iowait irq softirq steal guest guest_nice
    stat = "cpu  100 5 40 9000 300 2 3 7 0 0\ncpu0 50 2 20 4500 150 1 1 3 0 0\n"
    assert rivals.machine_busy_ticks(stat) == 100 + 5 + 40 + 2 + 3 + 7


def test_pooled_rounds_keep_every_latency_and_the_best_rate():
    pooled = rivals.Window()
    pooled.add(rivals.Window(latencies=[0.01, 0.02], sent=2, seconds=1.0))
    pooled.add(rivals.Window(latencies=[0.03], sent=2, seconds=0.5, drain=0.5))  # drain counts: 2 / 1.0 s
    pooled.add(rivals.Window(latencies=[0.04], sent=4, seconds=0.5))
    assert pooled.latencies == [0.01, 0.02, 0.03, 0.04]
    assert pooled.best_rate == 8.0
    assert pooled.sent == 8


def test_goal_lines_give_the_sustained_ratios_and_overheads_of_ours():
    def window(latencies_ms: list[float], first_ms: list[float] | None = None) -> rivals.Window:
        return rivals.Window(latencies=[v / 1000 for v in latencies_ms], first_bytes=[v / 1000 for v in (first_ms or [])])

    names = ("direct", "ours-gw", "portkey", "litellm")
    systems = [rivals.System(n, n, "", {}, list) for n in names]
    results = {(n, "c1"): window([1.0 + i, 2.0 + i]) for i, n in enumerate(names)}
    results |= {(n, "stream-c1"): window([], [1.5 + i]) for i, n in enumerate(names)}
    lines = rivals.goal_lines(systems, results, {"direct": 5000, "ours-gw": 1500, "portkey": 600, "litellm": 80})
    assert lines == ["goals: ours-gw sustained / portkey 2.50 (goal >= 3); ours-gw sustained / litellm 18.75 (goal >= 30); "
                     "c=1 overhead +1.00 / +1.00 ms (goal <= 0.3 / 1.0); first streamed byte +1.00 ms (goal <= 0.3)"]
    assert rivals.goal_lines(systems[:2], results, {"direct": 5000, "ours-gw": 1500})[0].startswith("goals: c=1 overhead")
    # with the byte relay: what it adds first, then ours over it as well
    relay = rivals.System("relay", "relay", "", {}, list)
    results |= {("relay", "c1"): window([1.25, 2.5]), ("relay", "stream-c1"): window([], [1.75])}
    assert rivals.goal_lines([*systems[:2], relay], results, {"direct": 5000, "ours-gw": 1500, "relay": 4000}) == [
        "floor: a byte relay adds c=1 +0.25 / +0.50 ms, first streamed byte +0.25 ms (one more process hop, no HTTP work)",
        "goals: c=1 overhead +1.00 / +1.00 ms (goal <= 0.3 / 1.0); first streamed byte +1.00 ms (goal <= 0.3); "
        "over the relay +0.75 / +0.50 ms, first byte +0.75 ms"]
    # the gateway whose events no ingest reads: its overheads on a line of its own, and no sustained ratio (its
    # rate is its load time alone, as the rivals')
    solo = rivals.System("ours-gw-noingest", "solo", "", {}, list)
    results |= {("ours-gw-noingest", "c1"): window([1.5, 2.25]), ("ours-gw-noingest", "stream-c1"): window([], [1.75])}
    lines = rivals.goal_lines([*systems, solo], results,
                              {"direct": 5000, "ours-gw": 1500, "portkey": 600, "litellm": 80, "ours-gw-noingest": 4000})
    assert lines[1:] == ["ours-gw-noingest, without ingest on its cores: c=1 overhead +0.50 / +0.25 ms (goal <= 0.3 / 1.0); "
                         "first streamed byte +0.25 ms (goal <= 0.3)"]


def test_polling_the_api_keeps_one_connection_instead_of_a_new_client_per_poll():
    """logged_count is called every 20 ms while a burst drains; a new client per call loaded a TLS
    context (about 25 ms of the bench's CPU) and opened a connection each time."""
    import http.server
    import json
    import threading

    connections = []

    class Api(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def setup(self) -> None:
            super().setup()
            connections.append(self.client_address)

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            asked = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert self.path == "/v1/metrics/breakdown" and self.headers["Authorization"] == "Bearer k"
            body = json.dumps({"data": [{"key": "openai", "requests": 2}, {"key": asked["by"], "requests": 1}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = f"http://127.0.0.1:{server.server_address[1]}"
        assert [rivals.logged_count(api, "k", "run-1") for _ in range(5)] == [3] * 5
        assert len(connections) == 1
    finally:
        server.shutdown()
        server.server_close()


def test_the_client_option_takes_a_comma_list_of_distinct_known_clients():
    assert rivals.client_list("raw") == ["raw"]
    assert rivals.client_list("raw, aiohttp") == ["raw", "aiohttp"]
    for bad in ("", "raw,raw", "httpx", "raw,curl"):
        with pytest.raises(argparse.ArgumentTypeError, match="distinct clients out of raw, aiohttp"):
            rivals.client_list(bad)
