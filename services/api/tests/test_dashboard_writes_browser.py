"""What the dashboard writes, in a real headless browser against the real api (on a real Postgres and chDB, served
by uvicorn): a per-request webhook created (its signing key shown once), listed and deleted, and a custom property
put on a request from its detail, then read by the api's filters; what the api refuses shows next to the field it
names, and what a caller logged or typed shows as text."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import uuid
from dataclasses import dataclass

import asyncpg
import httpx
import pytest
import uvicorn
from helicone_api.app import create_app
from helicone_api.settings import ApiSettings
from helicone_core.request_webhooks import MAX_WEBHOOKS_PER_ORG, org_webhooks
from selenium.webdriver.common.by import By

from services.api.tests.test_api import T0, add_request, wait_for_keys
from services.api.tests.test_dashboard_browser import settled, wait
from tests.support.browser import headless_chromium
from tests.support.keys import keys_before_start
from tests.support.net import free_port

HOSTILE = "<img src=x onerror=\"document.title='pwned'\">\u202eecila"


@dataclass
class Live:
    base: str
    key: str
    org: str
    state: object  # the api's ApiState
    run: object  # runs a coroutine on the api's event loop, returns its result

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.key}"}, timeout=10)

    def add_request(self, **kw) -> str:
        """A request logged a minute ago: inside the page's "Last 24 hours"."""
        ago = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1) - T0) / dt.timedelta(minutes=1)
        return self.run(add_request(self.state, self.org, minutes=ago, **kw))


@pytest.fixture(scope="module")
def live(pg_dsn, tmp_path_factory):
    """The api on its own event loop and thread (the browser's calls block the test's thread)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="dashboard-writes-api", daemon=True)
    thread.start()

    def run(coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    async def fresh_database() -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        admin = await asyncpg.connect(pg_dsn)
        await admin.execute(f"CREATE DATABASE {name}")
        await admin.close()
        return pg_dsn.replace("/postgres?", f"/{name}?")

    dsn = run(fresh_database())
    [created] = run(keys_before_start(dsn, "acme"))
    data = tmp_path_factory.mktemp("api")
    settings = ApiSettings(
        data_dir=data,
        body_store="local",
        postgres_dsn=dsn,
        analytics_backend="chdb",
        chdb_path=data / "chdb",
        clickhouse_database="t_" + uuid.uuid4().hex[:10],
        alert_interval=0,
        _env_file=None,
    )
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    serving = asyncio.run_coroutine_threadsafe(server.serve(), loop)
    for _ in range(3000):
        if server.started or serving.done():
            break
        threading.Event().wait(0.01)
    if not server.started:
        serving.result(1)  # why it did not start
        raise AssertionError("the api did not start")
    run(wait_for_keys(app.state.api, created.key))
    yield Live(f"http://127.0.0.1:{port}", created.key, created.org_id, app.state.api, run)
    server.should_exit = True
    serving.result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture(scope="module")
def page(live, tmp_path_factory):
    with headless_chromium(tmp_path_factory.mktemp("chromium")) as driver:
        driver.get(live.base + "/")
        driver.find_element(By.ID, "api-key").send_keys(live.key)
        driver.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
        yield driver


@pytest.fixture
def no_webhooks(live):
    """Each test starts and ends with no webhook (the page's list shows what the api has)."""
    yield
    with live.client() as api:
        for w in api.get("/v1/webhooks").json()["data"]:
            api.delete(f"/v1/webhooks/{w['id']}")


def field_error(page, input_id: str) -> str:
    """The error shown next to an input (the element its aria-describedby names), "" when none is."""
    described = page.find_element(By.ID, input_id).get_attribute("aria-describedby")
    return page.find_element(By.ID, described).text


def fill(page, values: dict[str, str]) -> None:
    """Sets inputs by id as a paste would (send_keys cannot type every character a caller may)."""
    page.execute_script("for (const [id, v] of Object.entries(arguments[0])) document.getElementById(id).value = v;", values)


def webhook_rows(page) -> list[str]:
    return [r.get_attribute("data-webhook-id") for r in page.find_elements(By.CSS_SELECTOR, "#webhooks-table tbody tr")]


def reload_webhooks(page) -> None:
    page.refresh()  # the key stays in the tab's sessionStorage: the page loads again with it
    settled(page, "webhooks")


def test_a_webhook_is_created_its_key_shown_once_listed_and_deleted_after_a_confirmation(live, page, no_webhooks):
    reload_webhooks(page)
    assert page.find_element(By.ID, "panel-webhooks").get_attribute("data-state") == "empty"
    page.find_element(By.ID, "webhook-destination").send_keys("https://hooks.example.com/helicone")
    rate = page.find_element(By.ID, "webhook-sample-rate")
    rate.clear(), rate.send_keys("25")
    page.find_element(By.ID, "webhook-filters").send_keys("Environment=production\nteam = search")
    page.find_element(By.NAME, "include_data").click()  # off
    page.find_element(By.CSS_SELECTOR, "#webhook-form button[type=submit]").click()

    box = wait(page, lambda d: d.find_element(By.ID, "webhook-key").is_displayed() and d.find_element(By.ID, "webhook-key"))
    [stored] = live.run(org_webhooks(live.state.pool, live.org))  # the key that signs the deliveries is the one shown
    assert page.find_element(By.ID, "webhook-key-value").text == stored.hmac_key
    assert "will not be shown again" in box.text and "hooks.example.com/helicone" in box.text
    wait(page, lambda d: settled(d, "webhooks") == "ready" and len(webhook_rows(d)) == 1)
    assert webhook_rows(page) == [str(stored.id)]
    cells = [c.text for c in page.find_elements(By.CSS_SELECTOR, "#webhooks-table tbody td")]
    assert cells[:4] == ["https://hooks.example.com/helicone", "25%", "environment=production\nteam=search", "no"], cells
    assert page.find_element(By.ID, "webhook-destination").get_attribute("value") == ""  # the form is ready for the next

    page.find_element(By.ID, "webhook-key-done").click()  # dismissed: the key is nowhere in the page any more
    assert stored.hmac_key not in page.page_source
    reload_webhooks(page)  # nor listed again
    assert webhook_rows(page) == [str(stored.id)] and stored.hmac_key not in page.page_source

    page.find_element(By.CSS_SELECTOR, f"button.delete-webhook[data-webhook-id='{stored.id}']").click()
    assert "Delete this webhook?" in page.find_element(By.CSS_SELECTOR, "#webhooks-table tbody tr").text
    page.find_element(By.CSS_SELECTOR, "#webhooks-table button.cancel-delete").click()  # "Cancel" deletes nothing
    with live.client() as api:
        assert [w["id"] for w in api.get("/v1/webhooks").json()["data"]] == [str(stored.id)]
    page.find_element(By.CSS_SELECTOR, f"button.delete-webhook[data-webhook-id='{stored.id}']").click()
    page.find_element(By.CSS_SELECTOR, "#webhooks-table button.confirm-delete").click()
    wait(page, lambda d: settled(d, "webhooks") == "empty" and webhook_rows(d) == [])
    with live.client() as api:
        assert api.get("/v1/webhooks").json() == {"data": []}


def test_filter_names_an_object_has_already_are_filters_like_any_other(live, page, no_webhooks):
    """The filters were gathered in a plain {}: a property named constructor was refused as "given twice" and one
    named __proto__ vanished from what was sent. Every name the api takes is a filter like any other."""
    reload_webhooks(page)
    fill(page, {"webhook-destination": "https://hooks.example.com/names",
                "webhook-filters": "constructor=a\n__proto__=b\ntoString=c"})
    page.find_element(By.CSS_SELECTOR, "#webhook-form button[type=submit]").click()
    wait(page, lambda d: d.find_element(By.ID, "webhook-key").is_displayed())
    [stored] = live.run(org_webhooks(live.state.pool, live.org))
    assert dict(stored.property_filters) == {"constructor": "a", "__proto__": "b", "tostring": "c"}
    page.find_element(By.ID, "webhook-key-done").click()


def test_a_forgotten_api_key_takes_the_shown_signing_key_with_it(live, page, no_webhooks):
    reload_webhooks(page)
    fill(page, {"webhook-destination": "https://hooks.example.com/forget"})
    page.find_element(By.CSS_SELECTOR, "#webhook-form button[type=submit]").click()
    wait(page, lambda d: d.find_element(By.ID, "webhook-key").is_displayed())
    [stored] = live.run(org_webhooks(live.state.pool, live.org))
    page.find_element(By.ID, "forget-key").click()
    assert stored.hmac_key not in page.page_source
    page.find_element(By.ID, "api-key").send_keys(live.key)
    page.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    assert settled(page, "webhooks") == "ready" and not page.find_element(By.ID, "webhook-key").is_displayed()


def test_what_the_api_refuses_shows_next_to_the_field_it_names(live, page, no_webhooks):
    """A 422 names its field: the page shows its message under that field (and marks it); a 409 (the org's 100
    webhooks) under the form. Nothing is created, and what was typed stays to be corrected."""
    reload_webhooks(page)
    fill(page, {"webhook-destination": "http://10.0.0.5/hook"})
    page.find_element(By.CSS_SELECTOR, "#webhook-form button[type=submit]").click()
    wait(page, lambda d: field_error(d, "webhook-destination"))
    assert "private" in field_error(page, "webhook-destination")
    assert page.find_element(By.ID, "webhook-destination").get_attribute("aria-invalid") == "true"
    assert field_error(page, "webhook-sample-rate") == field_error(page, "webhook-filters") == ""
    assert page.find_element(By.CSS_SELECTOR, "#webhook-form .form-error").text == "Not saved: see the field marked."
    assert page.find_element(By.ID, "webhook-destination").get_attribute("value") == "http://10.0.0.5/hook"
    assert live.run(org_webhooks(live.state.pool, live.org)) == [] and webhook_rows(page) == []

    fill(page, {"webhook-destination": "https://hooks.example.com/h", "webhook-sample-rate": "101"})
    page.find_element(By.CSS_SELECTOR, "#webhook-form button[type=submit]").click()
    wait(page, lambda d: "less than or equal to 100" in field_error(d, "webhook-sample-rate"))
    assert (
        field_error(page, "webhook-destination") == ""
        and page.find_element(By.ID, "webhook-destination").get_attribute("aria-invalid") is None
    )
    # names differing only in case are one property (the api stores them lower-case): the page says so before sending
    fill(page, {"webhook-sample-rate": "100", "webhook-filters": "Env=a\nenv=b"})
    page.find_element(By.CSS_SELECTOR, "#webhook-form button[type=submit]").click()
    wait(page, lambda d: "env is given twice" in field_error(d, "webhook-filters"))
    assert live.run(org_webhooks(live.state.pool, live.org)) == [] and webhook_rows(page) == []

    with live.client() as api:
        for i in range(MAX_WEBHOOKS_PER_ORG):
            assert api.post("/v1/webhooks", json={"destination": f"https://hooks.example.com/{i}"}).status_code == 201
    fill(page, {"webhook-filters": ""})
    page.find_element(By.CSS_SELECTOR, "#webhook-form button[type=submit]").click()
    error = page.find_element(By.CSS_SELECTOR, "#webhook-form .form-error")
    wait(page, lambda d: f"at most {MAX_WEBHOOKS_PER_ORG} webhooks" in error.text)
    assert not page.find_element(By.ID, "webhook-key").is_displayed()


def properties_shown(page) -> dict[str, str]:
    items = page.find_elements(By.CSS_SELECTOR, "#detail-properties li.property")
    return dict(tuple(v.text for v in li.find_elements(By.CSS_SELECTOR, ".value")) for li in items)


def open_detail(page, rid: str) -> None:
    page.find_element(By.CSS_SELECTOR, "#request-filters button[type=submit]").click()  # the table with the new request
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, f"button.open-request[data-request-id='{rid}']"))
    # the table may be drawn again between finding the button and clicking it (a stale element): found again then
    wait(page, lambda d: d.find_element(By.CSS_SELECTOR, f"button.open-request[data-request-id='{rid}']").click() or True)
    wait(page, lambda d: settled(d, "detail") == "ready" and d.find_element(By.ID, "detail-id").text == rid)


def save_property(page, key: str, value: str) -> None:
    fill(page, {"property-key": key, "property-value": value})
    page.find_element(By.CSS_SELECTOR, "#property-form button[type=submit]").click()


def test_a_property_added_on_a_request_shows_in_its_detail_and_filters_the_requests(live, page):
    rid = live.add_request(props={"env": "dev"}, user="prop-alice")
    other = live.add_request(props={"env": "dev"}, user="prop-bob")
    open_detail(page, rid)
    assert properties_shown(page) == {"env": "dev"}

    save_property(page, "Feature", "search")
    wait(page, lambda d: properties_shown(d) == {"env": "dev", "feature": "search"})  # as the api stored it
    assert page.find_element(By.CSS_SELECTOR, "#property-form .form-status").text == "Saved feature = search"
    page.find_element(By.CSS_SELECTOR, "#detail-properties button[aria-label='Edit property env']").click()
    assert page.find_element(By.ID, "property-value").get_attribute("value") == "dev"
    save_property(page, "env", "prod")
    wait(page, lambda d: properties_shown(d) == {"env": "prod", "feature": "search"})

    with live.client() as api:  # the api's filters read what the page put
        for props in ({"feature": "search"}, {"env": "prod"}):
            r = api.post("/v1/request/query", json={"filter": {"properties": props}})
            assert [d["request_id"] for d in r.json()["data"]] == [rid], r.text
        r = api.post("/v1/request/query", json={"filter": {"properties": {"env": "dev"}}})
        assert [d["request_id"] for d in r.json()["data"]] == [other]
    prop = page.find_element(By.NAME, "property")  # and so does the page's own filter
    prop.clear(), prop.send_keys("feature=search")
    page.find_element(By.CSS_SELECTOR, "#request-filters button[type=submit]").click()
    wait(
        page,
        lambda d: [b.get_attribute("data-request-id") for b in d.find_elements(By.CSS_SELECTOR, "button.open-request")] == [rid],
    )
    prop.clear()


def test_a_refused_property_shows_the_apis_message_next_to_its_field(live, page):
    rid = live.add_request(props={"env": "dev"})
    open_detail(page, rid)
    save_property(page, "bad key", "x")
    wait(page, lambda d: field_error(d, "property-key"))
    assert "cannot be sent as a Helicone-Property-<name> header" in field_error(page, "property-key")
    assert page.find_element(By.ID, "property-key").get_attribute("aria-invalid") == "true"
    assert field_error(page, "property-value") == "" and properties_shown(page) == {"env": "dev"}
    save_property(page, "note", "a\u0007b")  # a control character: the value is what is refused
    wait(page, lambda d: "control characters" in field_error(d, "property-value") and not field_error(d, "property-key"))
    save_property(page, "note", "fine")  # a save that succeeds clears the marks
    wait(page, lambda d: properties_shown(d) == {"env": "dev", "note": "fine"})
    assert (
        field_error(page, "property-value") == ""
        and page.find_element(By.ID, "property-value").get_attribute("aria-invalid") is None
    )


def test_hostile_values_show_as_text(live, page, no_webhooks):
    """A property value or webhook filter holding markup, a right-to-left override or 4 000 characters without a
    space: shown as its text (no element made, nothing run), the override as its code point, wrapped in the page."""
    rid = live.add_request(props={"env": "dev"})
    open_detail(page, rid)
    long = "x" * 4000
    save_property(page, "html", HOSTILE)
    wait(page, lambda d: "html" in properties_shown(d))
    save_property(page, "long", long)
    wait(page, lambda d: "long" in properties_shown(d))
    with live.client() as api:
        r = api.post("/v1/webhooks", json={"destination": "https://hooks.example.com/h", "property_filters": {"env": HOSTILE}})
        assert r.status_code == 201, r.text
    reload_webhooks(page)
    open_detail(page, rid)
    shown = HOSTILE.replace("\u202e", "⟨U+202E⟩")
    expected = {"env": "dev", "html": shown, "long": long}
    wait(page, lambda d: properties_shown(d) == expected)  # read again while the list is drawn (stale elements)
    assert page.find_element(By.CSS_SELECTOR, "#webhooks-table tbody td:nth-child(3)").text == f"env={shown}"
    assert page.find_elements(By.CSS_SELECTOR, "#main img") == [] and page.title == "Helicone dashboard"
    text = page.execute_script("return document.getElementById('main').textContent")
    assert "\u202e" not in text
    page_width, view_width = page.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert page_width <= view_width
    item = page.find_element(By.XPATH, "//ul[@id='detail-properties']/li[.//span[starts-with(., 'long')]]")
    assert item.size["height"] < 200
    # nothing the page did broke its Content-Security-Policy (no inline script or style, no eval) or threw
    broken = [
        e["message"] for e in page.get_log("browser") if "Content Security Policy" in e["message"] or "Uncaught" in e["message"]
    ]
    assert broken == []
