"""The dashboard in a real headless browser against the running stack: traffic sent through the gateway
with the official SDKs shows up in the request table, filters narrow it, the table pages past its
first page (so do the session and user lists), a request opens with both bodies and its scores, and each analytics
panel either draws its data (over the chosen range of whole days of the browser's zone, up to now) or, while the api
does not serve its route, says "not available"."""

from __future__ import annotations

import datetime as dt
import time
import uuid
import zoneinfo
from dataclasses import dataclass

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.e2e.test_request_path import claude, oai
from tests.support.browser import headless_chromium, series_pixels

pytestmark = pytest.mark.e2e

WAIT = 30
PAGE_ROWS = 100  # dashboard.js REQUEST_LIMIT: the rows of one page of the request table
LIST_ROWS = 50  # dashboard.js LIST_LIMIT: the rows of one page of the sessions and users lists
MAX_SESSION_REQUESTS = 5000  # helicone_api.insights: the requests a session's tree holds
PANELS_WITH_CHARTS = {"timeseries": ("chart-requests", "chart-cost", "chart-tokens", "chart-latency"), "models": ("chart-models",)}


@dataclass
class Sent:
    alice: str  # user ids, unique to this run
    bob: str
    session: str
    alice_ids: list[str]  # request ids, oldest first
    bob_ids: list[str]
    scored: str  # an alice request with the score "accuracy" = 0.75
    prompt: str  # the scored request's user message

    @property
    def all_ids(self) -> set[str]:
        return set(self.alice_ids) | set(self.bob_ids)


@pytest.fixture(scope="module")
def sent(stack) -> Sent:
    run = uuid.uuid4().hex[:8]
    alice, bob, session = f"dash-alice-{run}", f"dash-bob-{run}", f"dash-sess-{run}"
    alice_ids = []
    for path, words in (("/plan", "plan a trip"), ("/plan/book", "book the flight now")):
        client = oai(stack, **{"Helicone-User-Id": alice, "Helicone-Session-Id": session, "Helicone-Session-Path": path,
                               "Helicone-Session-Name": "Dashboard trip"})
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": words}])
        alice_ids.append(raw.headers["helicone-id"])
    raw = claude(stack, **{"Helicone-User-Id": bob}).messages.with_raw_response.create(
        model="claude-3-5-haiku-20241022", max_tokens=32, messages=[{"role": "user", "content": "hello from bob"}])
    bob_ids = [raw.headers["helicone-id"]]
    for rid in alice_ids + bob_ids:
        stack.wait_for_request(rid)
    with stack.api_client() as api:
        r = api.put(f"/v1/request/{alice_ids[1]}/score/accuracy", json={"value": 0.75})
        assert r.status_code == 200, r.text
    return Sent(alice, bob, session, alice_ids, bob_ids, alice_ids[1], "book the flight now")


@pytest.fixture(scope="module")
def page(stack, sent, tmp_path_factory):
    """The dashboard, opened and given the key as a user would."""
    with headless_chromium(tmp_path_factory.mktemp("chromium")) as driver:
        driver.get(stack.api + "/")
        assert not driver.find_element(By.ID, "main").is_displayed()  # nothing to show before a key
        key = driver.find_element(By.ID, "api-key")
        assert driver.find_element(By.CSS_SELECTOR, "label[for=api-key]").text == "Helicone API key"
        key.send_keys(stack.key)
        driver.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
        wait(driver, lambda d: panel_state(d, "requests") in ("ready", "empty", "error"))
        yield driver


def async_logs(stack, n: int, at: float, usage: tuple[int, int] = (3, 2), served: bool = True, **meta: str) -> list[str]:
    """n requests logged through POST /custom/v1/log, 10 ms apart from `at` (Unix seconds), with these
    Helicone-* headers and (prompt, completion) tokens; their ids, once the api serves each (`served`)."""
    ids = []
    with stack.api_client() as api:
        for i in range(n):
            t = at + i / 100
            payload = {
                "providerRequest": {"url": "https://api.openai.com/v1/chat/completions", "meta": meta,
                                    "json": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"logged {i}"}]}},
                "providerResponse": {"status": 200, "json": {"model": "gpt-4o-mini", "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1]},
                                                             "choices": [{"message": {"role": "assistant", "content": "ok"}}]}},
                "timing": {"startTime": {"seconds": int(t), "milliseconds": int(t * 1000) % 1000},
                           "endTime": {"seconds": int(t) + 1, "milliseconds": int(t * 1000) % 1000}},
            }
            r = api.post("/custom/v1/log", json=payload)
            assert r.status_code == 200, r.text
            ids.append(r.json()["request_id"])
    for rid in ids if served else ():
        stack.wait_for_request(rid)
    return ids


def choose_range(driver, hours: int) -> None:
    """Picks a time range as a user would; every panel reloads."""
    Select(driver.find_element(By.ID, "range")).select_by_value(str(hours))
    for name in ("summary", "timeseries", "models", "requests", "sessions", "users"):
        settled(driver, name)


def wait(driver, until, timeout: float = WAIT):
    return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)).until(until)


def panel_state(driver, name: str) -> str:
    return driver.find_element(By.ID, f"panel-{name}").get_attribute("data-state")


def panel_status(driver, name: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, f"#panel-{name} .panel-status").get_attribute("textContent")


def settled(driver, name: str) -> str:
    """The panel's state once its load finished."""
    wait(driver, lambda d: panel_state(d, name) not in ("idle", "loading"))
    return panel_state(driver, name)


def table_request_ids(driver) -> list[str]:
    """Read in one script call: the table may be re-rendered between two WebDriver calls."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#requests-table button.open-request')].map(b => b.dataset.requestId)")


def table_rows(driver, table: str) -> list[str]:
    return [r.text for r in driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")]


def apply_filters(driver, **values: str) -> None:
    form = driver.find_element(By.ID, "request-filters")
    for name in ("model", "provider", "user_id", "session_id", "status", "property"):
        field = form.find_element(By.NAME, name)
        field.clear()
        if values.get(name):
            field.send_keys(values[name])
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()  # the panel is "loading" once the click returns
    settled(driver, "requests")


def served(stack, method: str, path: str, **kwargs) -> bool:
    """Whether this api serves the route: 200, or 404 while it does not (anything else fails the test)."""
    with stack.api_client() as api:
        r = api.request(method, path, **kwargs)
    assert r.status_code in (200, 404), f"{method} {path}: {r.status_code} {r.text}"
    return r.status_code == 200


def window() -> dict:
    end = dt.datetime.now(dt.timezone.utc)
    return {"start": (end - dt.timedelta(hours=24)).isoformat(), "end": end.isoformat()}


def expect_not_available(driver, name: str) -> None:
    assert settled(driver, name) == "unavailable", panel_status(driver, name)
    assert "Not available" in panel_status(driver, name)
    for chart in PANELS_WITH_CHARTS.get(name, ()):
        assert series_pixels(driver, chart) == -1


# ---- the request table and detail (routes the api serves) -------------------------------------


def test_request_table_lists_the_requests_sent(page, sent):
    wait(page, lambda d: sent.all_ids <= set(table_request_ids(d)))
    assert panel_state(page, "requests") == "ready"
    row = next(r for r in page.find_elements(By.CSS_SELECTOR, "#requests-table tbody tr") if sent.bob in r.text)
    assert "claude-3-5-haiku" in row.text and "200" in row.text


def test_filters_narrow_the_table(page, sent):
    apply_filters(page, user_id=sent.alice)
    wait(page, lambda d: set(table_request_ids(d)) == set(sent.alice_ids))
    apply_filters(page, user_id=sent.alice, property="nothing=here")
    wait(page, lambda d: panel_state(d, "requests") == "empty" and table_request_ids(d) == [])
    apply_filters(page, model="claude-3-5-haiku-20241022", user_id=sent.bob)
    wait(page, lambda d: table_request_ids(d) == sent.bob_ids)
    apply_filters(page, session_id=sent.session)
    wait(page, lambda d: set(table_request_ids(d)) == set(sent.alice_ids))
    apply_filters(page, property="no equals sign")
    wait(page, lambda d: panel_state(d, "requests") == "error")
    assert "key=value" in panel_status(page, "requests")


def test_request_detail_shows_both_bodies_and_scores(page, sent):
    apply_filters(page, user_id=sent.alice)
    wait(page, lambda d: sent.scored in table_request_ids(d))
    wait(page, lambda d: set(table_request_ids(d)) == set(sent.alice_ids))
    row = page.find_element(By.CSS_SELECTOR, f"button.open-request[data-request-id='{sent.scored}']").find_element(By.XPATH, "../..")
    assert "accuracy=0.75" in row.text
    page.find_element(By.CSS_SELECTOR, f"button.open-request[data-request-id='{sent.scored}']").click()
    wait(page, lambda d: settled(d, "detail") == "ready" and d.find_element(By.ID, "detail-id").text == sent.scored)
    request_body = page.find_element(By.ID, "detail-request-body").text
    response_body = page.find_element(By.ID, "detail-response-body").text
    assert sent.prompt in request_body and '"model": "gpt-4o-mini"' in request_body
    assert "Hello from the fake upstream model" in response_body
    assert [s.text for s in page.find_elements(By.CSS_SELECTOR, "#detail-scores li.score")] == ["accuracy: 0.75"]
    meta = page.find_element(By.ID, "detail-meta").text
    assert sent.alice in meta and "/plan/book" in meta


# ---- analytics panels: drawn when the api serves their route, "not available" while it does not ----


def test_timeseries_panel(page, stack, sent):
    if not served(stack, "POST", "/v1/metrics/timeseries", json={**window(), "bucket": "hour", "timezone": "UTC"}):
        return expect_not_available(page, "timeseries")
    assert settled(page, "timeseries") == "ready", panel_status(page, "timeseries")
    for chart in PANELS_WITH_CHARTS["timeseries"]:
        assert int(page.find_element(By.ID, chart).get_attribute("data-points")) > 0, chart
        assert series_pixels(page, chart) > 0, f"{chart} drew no series"


def test_models_panel(page, stack, sent):
    if not served(stack, "POST", "/v1/metrics/breakdown", json={**window(), "by": "model"}):
        return expect_not_available(page, "models")
    assert settled(page, "models") == "ready", panel_status(page, "models")
    assert series_pixels(page, "chart-models") > 0, "no bars drawn"
    rows = table_rows(page, "models-table")
    assert any(r.startswith("gpt-4o-mini") for r in rows) and any(r.startswith("claude-3-5-haiku") for r in rows), rows


def test_summary_panel(page, stack, sent):
    if not served(stack, "GET", "/v1/metrics/summary", params=window()):
        return expect_not_available(page, "summary")
    assert settled(page, "summary") == "ready", panel_status(page, "summary")
    tiles = {t.find_element(By.TAG_NAME, "dt").text: t.find_element(By.TAG_NAME, "dd").text
             for t in page.find_elements(By.CSS_SELECTOR, "#summary > div")}
    assert int(tiles["Requests"].replace(",", "")) >= len(sent.all_ids) and int(tiles["Users"].replace(",", "")) >= 2


def test_sessions_panel(page, stack, sent):
    if not served(stack, "POST", "/v1/session/query", json={"limit": 1, "offset": 0}):
        return expect_not_available(page, "sessions")
    assert settled(page, "sessions") == "ready", panel_status(page, "sessions")
    page.find_element(By.CSS_SELECTOR, f"#sessions-table button[aria-label='Show session tree {sent.session}']").click()
    wait(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#session-tree li.tree-request")) == len(sent.alice_ids))
    # /plan/book is a child of /plan: two levels of nodes
    assert len(page.find_elements(By.CSS_SELECTOR, "#session-tree li.tree-node li.tree-node")) >= 1


def test_users_panel(page, stack, sent):
    if not served(stack, "POST", "/v1/user/query", json={"limit": 1, "offset": 0}):
        return expect_not_available(page, "users")
    assert settled(page, "users") == "ready", panel_status(page, "users")
    rows = table_rows(page, "users-table")
    assert any(r.startswith(sent.alice) for r in rows) and any(r.startswith(sent.bob) for r in rows), rows
    page.find_element(By.CSS_SELECTOR, f"#users-table button[aria-label='Show requests of user {sent.bob}']").click()
    wait(page, lambda d: table_request_ids(d) == sent.bob_ids)


def test_the_request_table_pages_past_its_first_page(page, stack):
    user = f"dash-many-{uuid.uuid4().hex[:8]}"
    ids = async_logs(stack, PAGE_ROWS + 5, time.time() - 120, **{"Helicone-User-Id": user})
    apply_filters(page, user_id=user)
    wait(page, lambda d: len(table_request_ids(d)) == PAGE_ROWS)
    assert set(table_request_ids(page)) == set(ids[5:])  # newest first
    more = page.find_element(By.ID, "requests-more")
    assert more.is_displayed() and more.text == "Load more"
    more.click()
    wait(page, lambda d: len(table_request_ids(d)) == len(ids) and panel_state(d, "requests") == "ready")
    shown = table_request_ids(page)
    assert shown == ids[::-1], "each row once, newest first"
    assert not more.is_displayed(), "no page follows the last one"
    apply_filters(page, user_id=f"dash-nobody-{uuid.uuid4().hex[:8]}")
    assert panel_state(page, "requests") == "empty" and not more.is_displayed()


def test_sessions_and_users_cover_the_chosen_range(page, stack, sent):
    run = uuid.uuid4().hex[:8]
    user, session = f"dash-old-{run}", f"dash-old-sess-{run}"
    async_logs(stack, 1, time.time() - 3 * 86400, **{"Helicone-User-Id": user, "Helicone-Session-Id": session})
    try:
        choose_range(page, 720)
        assert any(r.startswith(user) for r in table_rows(page, "users-table"))
        assert any(session in r for r in table_rows(page, "sessions-table"))
        choose_range(page, 24)  # three days ago is not in the last 24 hours
        users, sessions = table_rows(page, "users-table"), table_rows(page, "sessions-table")
        assert not any(r.startswith(user) for r in users), users
        assert not any(session in r for r in sessions), sessions
        assert any(r.startswith(sent.alice) for r in users) and any(sent.session in r for r in sessions)
    finally:
        choose_range(page, 24)


def test_a_cost_under_a_cent_never_reads_zero(page, stack):
    user = f"dash-cheap-{uuid.uuid4().hex[:8]}"
    [rid] = async_logs(stack, 1, time.time() - 60, usage=(1, 0), **{"Helicone-User-Id": user})  # 1 gpt-4o-mini token: $0.00000015
    apply_filters(page, user_id=user)
    wait(page, lambda d: table_request_ids(d) == [rid])
    cost = page.find_element(By.CSS_SELECTOR, "#requests-table tbody tr td:nth-child(7)").text
    assert cost == "$0.00000015"
    page.find_element(By.CSS_SELECTOR, f"button.open-request[data-request-id='{rid}']").click()
    wait(page, lambda d: settled(d, "detail") == "ready" and d.find_element(By.ID, "detail-id").text == rid)
    assert "Cost\n$0.00000015" in page.find_element(By.ID, "detail-meta").text


def list_ids(driver, table: str) -> list[str]:
    """The session ids or user ids the list shows (its rows' first cells), read in one script call."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#' + arguments[0] + ' tbody tr td:first-child')].map(td => td.textContent)", table)


def test_sessions_and_users_page_past_their_first_page(page, stack):
    run = uuid.uuid4().hex[:8]
    mine = [f"dash-page-{run}-{i:02}" for i in range(LIST_ROWS + 5)]
    logged = [rid for i, name in enumerate(mine) for rid in async_logs(
        stack, 1, time.time() - 120 + i / 10, served=False, **{"Helicone-User-Id": name, "Helicone-Session-Id": name})]
    for rid in logged:
        stack.wait_for_request(rid)
    try:
        choose_range(page, 168)  # the lists reload
        for table, more in (("sessions-table", "sessions-more"), ("users-table", "users-more")):
            assert len(list_ids(page, table)) == LIST_ROWS, table
            button = page.find_element(By.ID, more)
            assert button.is_displayed() and button.text == "Load more", table
            while button.is_displayed():
                shown = len(list_ids(page, table))
                button.click()
                wait(page, lambda d: len(list_ids(d, table)) > shown and settled(d, table.split("-")[0]) == "ready")  # noqa: B023
            ids = list_ids(page, table)
            assert len(ids) == len(set(ids)), f"{table}: a row shown twice"
            assert set(mine) <= set(ids), f"{table}: rows past the first page missing"
            assert [i for i in ids if i in mine] == mine[::-1], f"{table}: last seen first"
    finally:
        choose_range(page, 24)


def traced_session(stack, session: str, n: int, at: float) -> None:
    """n GenAI spans of one session exported over OTLP (a few exports), 1 ms apart from `at` (Unix seconds),
    their bodies omitted; returns once the api counts every one in the session."""
    attrs = [KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in (
        ("gen_ai.provider.name", "openai"), ("gen_ai.request.model", "gpt-4o-mini"), ("session.id", session),
        ("helicone.omit.request", "true"), ("helicone.omit.response", "true"))]
    trace = uuid.uuid4().bytes
    with stack.api_client() as api:
        for first in range(0, n, 2000):
            export = ExportTraceServiceRequest()
            spans = export.resource_spans.add().scope_spans.add().spans
            for i in range(first, min(n, first + 2000)):
                t = int((at + i / 1000) * 1e9)
                spans.add(trace_id=trace, span_id=(i + 1).to_bytes(8, "big"), name="chat", start_time_unix_nano=t,
                          end_time_unix_nano=t + 100_000_000, attributes=attrs)
            r = api.post("/v1/traces", content=export.SerializeToString(), headers={"Content-Type": "application/x-protobuf"})
            assert r.status_code == 200, r.text
        deadline = time.monotonic() + 60
        while (r := api.get(f"/v1/session/{session}")).status_code != 200 or r.json()["requests"] < n:
            assert time.monotonic() < deadline, f"session {session} did not reach the api within 60s"
            time.sleep(0.5)


def test_a_cut_session_tree_says_so(page, stack, sent):
    session = f"dash-big-{uuid.uuid4().hex[:8]}"
    traced_session(stack, session, MAX_SESSION_REQUESTS + 1, time.time() - 60)
    choose_range(page, 1)  # the list reloads: the session is its newest
    page.find_element(By.CSS_SELECTOR, f"#sessions-table button[aria-label='Show session tree {session}']").click()
    wait(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#session-tree li.tree-request")) == MAX_SESSION_REQUESTS)
    note = page.find_element(By.ID, "session-tree-status")
    assert note.is_displayed() and "5,000 of the session's 5,001 requests" in note.text, note.text
    page.execute_script("openSession(arguments[0])", sent.session)  # a whole session: nothing said
    wait(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#session-tree li.tree-request")) == len(sent.alice_ids))
    assert not note.is_displayed() and note.text == ""
    choose_range(page, 24)


def test_the_first_day_of_the_last_30_days_is_a_whole_day_of_the_browsers_zone(page, stack):
    zone = zoneinfo.ZoneInfo("America/New_York")
    first = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=720)).astimezone(zone).replace(hour=0, minute=0, second=0)
    first = first.replace(microsecond=0)  # the first day of the range there; a request in its first hour
    user = f"dash-zone-{uuid.uuid4().hex[:8]}"
    async_logs(stack, 1, first.timestamp() + 1800, **{"Helicone-User-Id": user})
    page.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": "America/New_York"})
    try:
        choose_range(page, 720)
        assert settled(page, "timeseries") == "ready", panel_status(page, "timeseries")
        buckets, requests = page.execute_script("return charts['chart-requests'].data.slice(0, 2)")
        assert buckets[0] == first.timestamp(), "the first bucket is the range's first day, not a part of one"
        assert requests[0] == 1, "the first day holds its requests"
    finally:
        page.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": ""})
        choose_range(page, 24)


def test_the_charts_end_at_now(page):
    # the browser's clock one minute past a quarter hour: the "last hour" range ends at the next quarter hour,
    # whose 14 minutes still to come hold no requests yet, and are not drawn as minutes without any
    now = (int(time.time()) // 900 * 900 + 60) * 1000
    page.execute_script("window.realDateNow = Date.now; Date.now = () => arguments[0];", now)
    try:
        choose_range(page, 1)
        assert settled(page, "timeseries") == "ready", panel_status(page, "timeseries")
        for chart in PANELS_WITH_CHARTS["timeseries"]:
            buckets = page.execute_script("return charts[arguments[0]].data[0]", chart)
            assert buckets and max(buckets) <= now / 1000, (chart, max(buckets) - now / 1000)
    finally:
        page.execute_script("Date.now = window.realDateNow;")
        choose_range(page, 24)


def test_the_detail_never_shows_another_requests_data(page, sent):
    apply_filters(page, user_id=sent.alice)
    wait(page, lambda d: sent.scored in table_request_ids(d))
    page.find_element(By.CSS_SELECTOR, f"button.open-request[data-request-id='{sent.scored}']").click()
    wait(page, lambda d: settled(d, "detail") == "ready" and d.find_element(By.ID, "detail-id").text == sent.scored)
    unknown = str(uuid.uuid4())  # e.g. a request the retention already removed
    page.execute_script("openRequest(arguments[0])", unknown)
    wait(page, lambda d: d.find_element(By.ID, "detail-id").text == unknown and settled(d, "detail") == "error")
    assert f"request {unknown} not found" in panel_status(page, "detail")
    for part in ("detail-meta", "detail-scores", "detail-request-body", "detail-response-body"):
        assert page.find_element(By.ID, part).get_attribute("textContent") == "", part


def test_a_new_key_starts_from_a_clean_page(page, stack, sent):
    page.find_element(By.CSS_SELECTOR, f"button.open-request[data-request-id='{sent.alice_ids[0]}']").click()
    wait(page, lambda d: settled(d, "detail") == "ready")
    page.find_element(By.ID, "api-key").send_keys(stack.key)  # another key (of the same org here), entered while connected
    page.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    assert not page.find_element(By.ID, "panel-detail").is_displayed()
    assert page.find_element(By.ID, "detail-request-body").get_attribute("textContent") == ""
    settled(page, "requests")


def test_the_page_ran_without_script_errors_or_csp_violations(page):
    problems = [e["message"] for e in page.get_log("browser")
                if "Content Security Policy" in e["message"] or "Uncaught" in e["message"] or "TypeError" in e["message"]]
    assert problems == []


def test_the_key_stays_in_the_tab_and_a_wrong_key_is_refused(page, stack):
    assert page.execute_script("return sessionStorage.getItem('helicone-api-key')") == stack.key
    assert page.execute_script("return localStorage.length") == 0
    page.refresh()  # the same tab keeps its key: the page loads straight away
    wait(page, lambda d: settled(d, "requests") == "ready")
    page.find_element(By.ID, "forget-key").click()
    assert page.execute_script("return sessionStorage.getItem('helicone-api-key')") is None
    assert not page.find_element(By.ID, "main").is_displayed()
    page.find_element(By.ID, "api-key").send_keys("sk-helicone-not-a-real-key")
    page.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    wait(page, lambda d: "refused the key" in d.find_element(By.ID, "key-status").text)
    assert page.execute_script("return sessionStorage.getItem('helicone-api-key')") is None


def test_a_key_with_characters_no_key_has_is_refused_at_the_form(page, stack):
    sent_before = page.execute_script("return performance.getEntriesByType('resource').filter(e => e.name.includes('/v1/')).length")
    preview = stack.key[:16] + "…"  # a key's preview (as GET /v1/keys shows it), pasted as the key
    field = page.find_element(By.ID, "api-key")
    field.clear()
    field.send_keys(preview)
    page.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    status = page.find_element(By.ID, "key-status").text
    assert "characters an API key cannot have" in status, status
    assert field.get_attribute("aria-invalid") == "true"
    assert page.execute_script("return sessionStorage.getItem('helicone-api-key')") is None
    assert not page.find_element(By.ID, "main").is_displayed()
    assert page.execute_script(
        "return performance.getEntriesByType('resource').filter(e => e.name.includes('/v1/')).length") == sent_before, "nothing sent"
    field.clear()
    field.send_keys(stack.key)  # the whole key works
    page.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    assert field.get_attribute("aria-invalid") is None
    assert settled(page, "requests") == "ready", panel_status(page, "requests")
