"""The dashboard page in a real headless browser against an api double that answers the analytics
routes (metrics, sessions, users) with their agreed contracts, so the page's rendering of each panel
and the requests it sends are checked before every route exists in the api itself. The real api and
stack are in tests/e2e/test_dashboard.py, which checks the same panels against what the api serves."""

from __future__ import annotations

import datetime as dt
import threading
import time
from zoneinfo import ZoneInfo

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from helicone_api.dashboard import dashboard_router, load_static
from helicone_api.insights import TimeseriesQuery
from pydantic import ValidationError
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.browser import headless_chromium, series_pixels
from tests.support.net import free_port

KEY = "sk-helicone-dashboard-test-key"
BUCKETS = ["2026-01-01T10:00:00Z", "2026-01-01T11:00:00Z", "2026-01-01T12:00:00Z"]
REQ_A = "6f1b8e6e-3f1a-4c55-9a43-0d8b43e5b5a1"
REQ_B = "0b7c1a52-52a4-4d3b-8d7e-3a1f0e6c9d10"


def request_row(rid: str, user: str, model: str, path: str, latency: int) -> dict:
    return {"request_id": rid, "created_at": BUCKETS[0], "latency_ms": latency, "time_to_first_token_ms": 40, "status": 200,
            "provider": "openai", "model": model, "path": "/v1/chat/completions", "user_id": user,
            "session": {"id": "s-1", "path": path, "name": "Trip"}, "properties": {"env": "test"},
            "usage": {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}, "cost_usd": 0.0000042,
            "scores": {"accuracy": 0.5} if rid == REQ_B else {}, "error": None}


ROWS = [request_row(REQ_A, "alice", "gpt-4o-mini", "/plan", 120), request_row(REQ_B, "bob", "gpt-4o", "/plan/book", 340)]


def metrics_point(bucket: str, n: int) -> dict:
    pct = {"p50": 100 * n, "p90": 150 * n, "p95": 180 * n, "p99": 200 * n}
    return {"bucket": bucket, "group": None, "requests": n, "cost_usd": 0.01 * n, "prompt_tokens": 40 * n,
            "completion_tokens": 60 * n, "errors": 0, "error_rate": 0.0, "latency_ms": pct, "ttft_ms": pct}


def contract_api(calls: list[tuple[str, str, dict | None, dict]]) -> FastAPI:
    """The api's routes as the page uses them; `calls` records (method, path, json body, query) of each /v1 call."""
    app = FastAPI()
    app.include_router(dashboard_router(load_static()))

    @app.middleware("http")
    async def auth_and_record(request: Request, call_next):
        if request.url.path.startswith("/v1/"):
            if request.headers.get("authorization") != f"Bearer {KEY}":
                return JSONResponse({"error": {"type": "http_error", "message": "invalid or revoked Helicone API key"}}, 401)
            body = await request.json() if request.method == "POST" else None
            calls.append((request.method, request.url.path, body, dict(request.query_params)))
        return await call_next(request)

    @app.post("/v1/request/query")
    async def query(request: Request):
        f = (await request.json())["filter"]
        return {"data": [r for r in ROWS if f.get("user_id") in (None, r["user_id"])], "limit": 100, "offset": 0}

    @app.get("/v1/request/{rid}")
    async def detail(rid: str):
        row = next(r for r in ROWS if r["request_id"] == rid)
        if rid == REQ_A:  # its request body could not be read, its response body (binary: audio) was cut at the logged limit
            return {**row, "body_truncated": True, "request_body": None, "request_body_error": "not found in the body store",
                    "response_body": "//79/A==", "response_body_encoding": "base64", "response_body_error": None}
        return {**row, "request_body": {"model": row["model"], "messages": [{"role": "user", "content": "plan a trip"}]},
                "response_body": {"choices": [{"message": {"content": "Here is your plan"}}]}, "body_truncated": False}

    @app.post("/v1/metrics/timeseries")
    async def timeseries(request: Request):
        try:
            TimeseriesQuery.model_validate(await request.json())  # the api's own check: a zone it knows, few buckets
        except ValidationError as exc:
            return JSONResponse({"error": {"type": "invalid_request", "message": "invalid request", "details": [
                {"field": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors()]}}, 422)
        return {"data": [metrics_point(b, n) for n, b in enumerate(BUCKETS, 1)]}

    @app.post("/v1/metrics/breakdown")
    async def breakdown():
        return {"data": [{"key": "gpt-4o", "requests": 3, "cost_usd": 0.03, "prompt_tokens": 30, "completion_tokens": 50,
                          "error_rate": 0.0, "p95_latency_ms": 400},
                         {"key": "gpt-4o-mini", "requests": 5, "cost_usd": 0.001, "prompt_tokens": 50, "completion_tokens": 70,
                          "error_rate": 0.2, "p95_latency_ms": 150}]}

    @app.get("/v1/metrics/summary")
    async def summary():
        return {"requests": 8, "cost_usd": 0.031, "prompt_tokens": 80, "completion_tokens": 120, "error_rate": 0.125,
                "users": 2, "sessions": 1, "avg_latency_ms": 230, "p95_latency_ms": 380}

    @app.post("/v1/session/query")
    async def sessions():
        return {"data": [{"session_id": "s-1", "session_name": "Trip", "requests": 2, "cost_usd": 0.0000084, "total_tokens": 20,
                          "duration_ms": 900, "first_seen": BUCKETS[0], "last_seen": BUCKETS[1], "errors": 0}]}

    @app.get("/v1/session/{sid}")
    async def session(sid: str):
        child = {"path": "/plan/book", "name": "book", "requests": [ROWS[1]], "children": [], "cost_usd": 0.0000042, "duration_ms": 340}
        tree = {"path": "/plan", "name": "plan", "requests": [ROWS[0]], "children": [child], "cost_usd": 0.0000084, "duration_ms": 900}
        return {"session_id": sid, "session_name": "Trip", "tree": tree}

    @app.post("/v1/user/query")
    async def users():
        return {"data": [{"user_id": u, "requests": 1, "cost_usd": 0.0000042, "total_tokens": 10, "active_days": 1,
                          "first_seen": BUCKETS[0], "last_seen": BUCKETS[0]} for u in ("alice", "bob")]}

    return app


@pytest.fixture(scope="module")
def served():
    calls: list = []
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(contract_api(calls), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="dashboard-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the api double did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", calls
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def page(served, tmp_path_factory):
    base, _calls = served
    with headless_chromium(tmp_path_factory.mktemp("chromium")) as driver:
        driver.get(base + "/")
        driver.find_element(By.ID, "api-key").send_keys(KEY)
        driver.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
        yield driver


def wait(driver, until):
    return WebDriverWait(driver, 20, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,)).until(until)


def settled(driver, name: str) -> str:
    state = lambda d: d.find_element(By.ID, f"panel-{name}").get_attribute("data-state")  # noqa: E731
    wait(driver, lambda d: state(d) not in ("idle", "loading"))
    return state(driver)


@pytest.mark.parametrize("panel", ["summary", "timeseries", "models", "requests", "sessions", "users"])
def test_every_panel_renders_its_contract(page, panel):
    assert settled(page, panel) == "ready", page.find_element(By.CSS_SELECTOR, f"#panel-{panel} .panel-status").text


def test_an_api_without_webhooks_says_so_and_offers_no_form(page):
    """This double serves no /v1/webhooks (an older api): the panel says "not available", with no form to fill."""
    assert settled(page, "webhooks") == "unavailable"
    assert page.find_element(By.CSS_SELECTOR, "#panel-webhooks .panel-status").text.startswith("Not available")
    assert not page.find_element(By.ID, "webhook-form").is_displayed()


def test_charts_draw_every_series(page):
    settled(page, "timeseries"), settled(page, "models")
    for chart in ("chart-requests", "chart-cost", "chart-tokens", "chart-latency", "chart-models"):
        assert series_pixels(page, chart) > 0, chart
    assert page.find_element(By.ID, "chart-requests").get_attribute("data-points") == "3"
    rows = [r.text for r in page.find_elements(By.CSS_SELECTOR, "#models-table tbody tr")]
    assert rows[0].startswith("gpt-4o 3 $0.030000") and rows[1].startswith("gpt-4o-mini 5") and "20.0%" in rows[1]


def test_summary_tiles(page):
    settled(page, "summary")
    tiles = {t.find_element(By.TAG_NAME, "dt").text: t.find_element(By.TAG_NAME, "dd").text
             for t in page.find_elements(By.CSS_SELECTOR, "#summary > div")}
    assert tiles == {"Requests": "8", "Cost": "$0.031000", "Tokens": "200", "Error rate": "12.5%", "Users": "2", "Sessions": "1",
                     "Avg latency (ms)": "230", "p95 latency (ms)": "380"}


def test_session_tree(page):
    settled(page, "sessions")
    page.find_element(By.CSS_SELECTOR, "#sessions-table button[aria-label='Show session tree s-1']").click()
    wait(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#session-tree li.tree-request")) == 2)
    nested = page.find_element(By.CSS_SELECTOR, "#session-tree li.tree-node li.tree-node")
    assert nested.text.startswith("book") and "gpt-4o · 200 · 340 ms" in nested.text
    assert page.find_element(By.ID, "session-tree").get_attribute("role") == "tree"
    nested.find_element(By.CSS_SELECTOR, f"button[aria-label='Open request {REQ_B}']").click()  # a request of the tree opens
    wait(page, lambda d: settled(d, "detail") == "ready" and d.find_element(By.ID, "detail-id").text == REQ_B)
    assert "Here is your plan" in page.find_element(By.ID, "detail-response-body").text
    assert [s.text for s in page.find_elements(By.CSS_SELECTOR, "#detail-scores li.score")] == ["accuracy: 0.5"]


def test_a_request_says_when_its_bodies_were_cut_or_could_not_be_read(page):
    """The api says why a body is null (request_body_error) and that the bodies were cut (body_truncated): the
    detail showed "(not stored)" for a body the store could not give, and a cut body as if whole; and a binary
    body (base64) was shown as its base64 text alone."""
    settled(page, "requests")
    page.find_element(By.CSS_SELECTOR, f"#requests-table button[data-request-id='{REQ_A}']").click()
    wait(page, lambda d: settled(d, "detail") == "ready" and d.find_element(By.ID, "detail-id").text == REQ_A)
    assert page.find_element(By.ID, "detail-request-body").text == "(not available: not found in the body store)"
    # a binary body (response_body_encoding "base64") is said to be one, with its size, not shown as if text
    assert page.find_element(By.ID, "detail-response-body").text == "(binary, 4 bytes, as base64)\n//79/A=="
    meta = {m.find_element(By.TAG_NAME, "dt").text: m.find_element(By.TAG_NAME, "dd").text
            for m in page.find_elements(By.CSS_SELECTOR, "#detail-meta > div")}
    assert meta["Bodies"].startswith("cut at the logged body limit"), meta
    page.find_element(By.CSS_SELECTOR, f"#requests-table button[data-request-id='{REQ_B}']").click()
    wait(page, lambda d: settled(d, "detail") == "ready" and d.find_element(By.ID, "detail-id").text == REQ_B)
    assert "Bodies" not in [m.text for m in page.find_elements(By.CSS_SELECTOR, "#detail-meta dt")]


def test_user_opens_their_requests(page):
    settled(page, "users")
    page.find_element(By.CSS_SELECTOR, "#users-table button[aria-label='Show requests of user bob']").click()
    wait(page, lambda d: [b.get_attribute("data-request-id") for b in d.find_elements(By.CSS_SELECTOR, "button.open-request")] == [REQ_B])
    assert page.find_element(By.NAME, "user_id").get_attribute("value") == "bob"


def test_requests_follow_the_contracts(page, served):
    _base, calls = served
    for panel in ("summary", "timeseries", "models", "sessions", "users"):
        settled(page, panel)
    by_path = {(m, p): (body, query) for m, p, body, query in calls}
    ts, _ = by_path[("POST", "/v1/metrics/timeseries")]
    assert set(ts) == {"start", "end", "bucket", "timezone"} and ts["bucket"] == "hour" and ts["timezone"]
    bd, _ = by_path[("POST", "/v1/metrics/breakdown")]
    assert set(bd) == {"start", "end", "by"} and bd["by"] == "model"
    _, q = by_path[("GET", "/v1/metrics/summary")]
    assert set(q) == {"start", "end"} and q["start"] < q["end"]
    for path in ("/v1/session/query", "/v1/user/query"):  # a page of 50 asks for one more (whether another follows)
        lq, _ = by_path[("POST", path)]
        assert lq == {"filter": {"start": q["start"], "end": q["end"]}, "limit": 51, "offset": 0}, lq
    rq, _ = by_path[("POST", "/v1/request/query")]
    assert set(rq) == {"filter", "limit", "offset", "sort"} and rq["sort"] == "created_at_desc"


# a minute past a quarter hour, an hour and a UTC midnight: where rounding the range's end up cuts most off its start
NOW = "2026-01-08T00:01:00.000Z"
GRAIN_HOURS = {1: 0.25, 24: 1, 168: 24, 720: 24}  # the projections' grain a range's ends lie on (dashboard.js range())


@pytest.mark.parametrize("hours", sorted(GRAIN_HOURS))
def test_a_time_range_covers_the_whole_span_it_names(page, hours):
    """"Last hour" shows every request of the last hour (it ended on the next quarter hour and started an hour
    before that: at 00:01 a request from 23:10 was left out; "Last 7 days" lost up to a day), its ends still on
    the grain the api's projections hold."""
    got = page.execute_script("""
        const sel = document.getElementById("range"), was = sel.value, realNow = Date.now;
        Date.now = () => Date.parse(arguments[0]);
        try { sel.value = arguments[1]; return range(); } finally { Date.now = realNow; sel.value = was; }""", NOW, str(hours))
    now, start, end = (dt.datetime.fromisoformat(t.replace("Z", "+00:00")) for t in (NOW, got["start"], got["end"]))
    assert start <= now - dt.timedelta(hours=hours) and end >= now, got
    grain = int(GRAIN_HOURS[hours] * 3600)
    assert all(int(t.timestamp()) % grain == 0 for t in (start, end)), got


def test_forgetting_the_key_drops_what_it_showed(page):
    """"Forget key" (and a refused key) leave none of the org's data in the page: the request and session that were
    open stayed in the DOM, and showed again under the next key entered, whichever org that key is of."""
    settled(page, "requests"), settled(page, "sessions")
    page.find_element(By.CSS_SELECTOR, f"#requests-table button[data-request-id='{REQ_B}']").click()
    wait(page, lambda d: settled(d, "detail") == "ready" and d.find_element(By.ID, "detail-id").text == REQ_B)
    page.find_element(By.CSS_SELECTOR, "#sessions-table button[aria-label='Show session tree s-1']").click()
    wait(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#session-tree li.tree-request")) == 2)
    page.find_element(By.ID, "forget-key").click()
    left = page.execute_script("return document.getElementById('main').textContent")
    for shown in ("Here is your plan", "plan a trip", REQ_B, "alice", "gpt-4o", "Trip"):
        assert shown not in left, shown
    page.find_element(By.ID, "api-key").send_keys(KEY)
    page.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    settled(page, "requests")
    assert not page.find_element(By.ID, "panel-detail").is_displayed()
    assert not page.find_element(By.ID, "session-tree-box").is_displayed()


def test_a_browser_in_a_time_zone_without_a_name_still_draws_the_series(served, tmp_path, monkeypatch):
    """A machine whose TZ is a POSIX rule ("XYZ+3") has no IANA zone: the browser says "Etc/Unknown", which the
    api refuses (422), and "Over time" was an error instead of charts."""
    base, calls = served
    monkeypatch.setenv("TZ", "XYZ+3")
    with headless_chromium(tmp_path) as driver:
        driver.get(base + "/")
        assert driver.execute_script("return Intl.DateTimeFormat().resolvedOptions().timeZone") == "Etc/Unknown"
        driver.find_element(By.ID, "api-key").send_keys(KEY)
        driver.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
        assert settled(driver, "timeseries") == "ready", driver.find_element(By.CSS_SELECTOR, "#panel-timeseries .panel-status").text
        assert series_pixels(driver, "chart-requests") > 0
        west = driver.execute_script("return new Date().getTimezoneOffset()")  # minutes, as the charts' axes show time
    zone = [b for _m, path, b, _q in calls if path == "/v1/metrics/timeseries"][-1]["timezone"]
    assert ZoneInfo(zone).utcoffset(dt.datetime.now()) == -dt.timedelta(minutes=west), zone


# what a caller may log as a user id, model, score name or session name: the page renders it with its own row builders
HOSTILE_ROWS = """
    const [user, model, name] = arguments;
    const added = [
        [document.querySelector("#requests-table tbody"), requestRow({...arguments[3], user_id: user, model, scores: {[name]: 1}})],
        [document.querySelector("#users-table tbody"), userRow({user_id: user, requests: 1, cost_usd: 0.0000042, total_tokens: 10,
                                                                active_days: 1, last_seen: arguments[4]})],
        [document.querySelector("#sessions-table tbody"), sessionRow({session_id: "s-9", session_name: name, requests: 1,
                                                                      cost_usd: 0.0000042, total_tokens: 10, duration_ms: 340})],
        [document.getElementById("panel-sessions"), treeItem({name, cost_usd: 0.0000042, duration_ms: 340, requests: [], children: []})],
    ];
    for (const [box, node] of added) box.append(node);
    return added.map(([, node]) => node);"""


def render_hostile(page, user: str, model: str, name: str) -> list:
    settled(page, "requests"), settled(page, "users"), settled(page, "sessions")
    return page.execute_script(HOSTILE_ROWS, user, model, name, ROWS[0], BUCKETS[0])


def remove(page, nodes: list) -> None:
    page.execute_script("for (const n of arguments[0]) n.remove();", nodes)


def test_a_logged_value_of_any_length_stays_inside_its_table(page):
    """A 10 kB user id (or model) without a space made its table 90 000 px wide: the page scrolled sideways and the
    request's status, cost and "Open" button were a screen-width scroll away per screen. It wraps in its cell, now,
    the cell scrolls past a few lines, and no number of the row breaks."""
    nodes = render_hostile(page, "u" * 10_000, "m" * 3_000, "n" * 5_000)
    try:
        page_width, view_width = page.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert page_width <= view_width
        for table in ("requests-table", "users-table", "sessions-table"):
            width, panel = page.execute_script(
                "const t = document.getElementById(arguments[0]); return [t.offsetWidth, t.closest('.panel').clientWidth]", table)
            assert width <= panel, table
        request, user, session, tree = nodes
        for tr in (request, user, session):
            assert tr.size["height"] < 200, tr.text[:80]
        # each number of the row is on one line
        lines = page.execute_script("""
            return [...arguments[0].cells].filter((td) => /^[0-9$.,]+$/.test(td.textContent)).map((td) => {
                const r = document.createRange(); r.selectNodeContents(td); return [td.textContent, r.getClientRects().length]; })""",
                                    request)
        assert lines == [["200", 1], ["120", 1], ["10", 1], ["$0.0000042", 1]], lines
        assert tree.size["width"] <= view_width
    finally:
        remove(page, nodes)


def test_a_logged_value_cannot_hide_or_reorder_characters(page):
    """A user id "\u202eecila" (a right-to-left override) showed as "alice", another user's id; the override in a
    session name turned the cost and duration after it around ("sm 043 ,2400000.0$"), and a zero-width space made
    "gpt\u200b-4o" read as "gpt-4o". Each such character shows as its code point, now."""
    nodes = render_hostile(page, "\u202eecila", "gpt\u200b-4o", "trip\u202e")
    try:
        request, user, session, tree = nodes
        assert "⟨U+202E⟩ecila" in request.text and "gpt⟨U+200B⟩-4o" in request.text and "trip⟨U+202E⟩=1" in request.text
        assert user.text.startswith("⟨U+202E⟩ecila 1 ")
        assert "trip⟨U+202E⟩ (s-9)" in session.text
        assert tree.text == "trip⟨U+202E⟩ — $0.0000042, 340 ms"
        shown = page.execute_script("return arguments[0].map((n) => n.textContent).join('')", nodes)
        assert "\u202e" not in shown and "\u200b" not in shown
    finally:
        remove(page, nodes)
