"""The dashboard page in a real headless browser against an api double that answers the analytics
routes (metrics, sessions, users) with their agreed contracts, so the page's rendering of each panel
and the requests it sends are checked before every route exists in the api itself. The real api and
stack are in tests/e2e/test_dashboard.py, which checks the same panels against what the api serves."""

from __future__ import annotations

import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from helicone_api.dashboard import dashboard_router, load_static
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
        return {**row, "request_body": {"model": row["model"], "messages": [{"role": "user", "content": "plan a trip"}]},
                "response_body": {"choices": [{"message": {"content": "Here is your plan"}}]}}

    @app.post("/v1/metrics/timeseries")
    async def timeseries():
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
    for path in ("/v1/session/query", "/v1/user/query"):
        assert by_path[("POST", path)][0] == {"limit": 50, "offset": 0}
    rq, _ = by_path[("POST", "/v1/request/query")]
    assert set(rq) == {"filter", "limit", "offset", "sort"} and rq["sort"] == "created_at_desc"
