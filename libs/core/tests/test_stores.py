import datetime as dt

import pytest
from helicone_core import events
from helicone_core.analytics import ChdbStore
from helicone_core.bodies import LocalBodyStore


async def test_local_body_store_roundtrip_and_key_safety(tmp_path):
    store = LocalBodyStore(tmp_path / "bodies")
    await store.start()
    await store.put("orgs/o/requests/r/request", b'{"a":1}', "application/json")
    assert await store.get("orgs/o/requests/r/request") == b'{"a":1}'
    assert await store.get("orgs/o/requests/missing") is None
    assert await store.ping()
    with pytest.raises(ValueError):
        await store.put("../escape", b"x", "text/plain")
    with pytest.raises(ValueError):
        await store.get("orgs/../../etc/passwd")


def _row(ev, version):
    return events.analytics_row(ev, request_key="k1", response_key="k2", request_bytes=1, response_bytes=1,
                                request_content_type="", response_content_type="", truncated=False, version=version)


async def test_replacing_merge_tree_dedupes_replayed_events(analytics_store):
    store = analytics_store
    ev = events.RequestLogged(schema_version=1, request_id=events.new_request_id(), org_id="org-1",
                              model="gpt-4o", properties={"env": "prod"})
    events.set_time(ev.request_created_at, dt.datetime.now(dt.timezone.utc))
    other = events.RequestLogged()
    other.CopyFrom(ev)
    other.request_id = events.new_request_id()
    await store.insert("request_log", [_row(ev, 1)])
    await store.insert("request_log", [_row(ev, 2), _row(other, 2)])  # replay + a new one
    rows = await store.query(
        "SELECT request_id, version FROM {db}.request_log FINAL WHERE org_id = {org:String} "
        "AND properties[{k:String}] = {v:String} ORDER BY request_id",
        {"org": "org-1", "k": "env", "v": "prod"},
    )
    assert sorted(r["request_id"] for r in rows) == sorted([ev.request_id, other.request_id])
    assert {int(r["version"]) for r in rows} == {2}
    assert await store.ping()


async def test_chdb_stores_on_one_path_share_one_engine(chdb_path):
    a, b = ChdbStore(chdb_path, "shared_db"), ChdbStore(chdb_path, "shared_db")
    try:
        await a.init_schema()
        ev = events.RequestLogged(schema_version=1, request_id=events.new_request_id(), org_id="o")
        events.set_time(ev.request_created_at, dt.datetime.now(dt.timezone.utc))
        await a.insert("request_log", [_row(ev, 1)])
        rows = await b.query("SELECT count() AS n FROM {db}.request_log SETTINGS output_format_json_quote_64bit_integers=0")
        assert rows == [{"n": 1}]
    finally:
        await a.close()
        await b.close()
