"""The PromptService against a real grpc.aio server and a real Postgres."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helicone.prompts.v1 import prompts_pb2 as pb
from helicone.prompts.v1 import prompts_pb2_grpc
from helicone_core import db
from helicone_prompts.server import SERVICE_NAME, PromptsServer
from helicone_prompts.settings import PromptsSettings

from tests.support.fault_proxy import postgres_proxy

TEMPLATE = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Summarise {{topic}} for {{ audience }}"}]})
TYPED = json.dumps({"model": "gpt-4o-mini", "temperature": "{{hc:temp:number}}",
                    "messages": [{"role": "user", "content": "Tell me about {{hc:topic:string}}"}]})


@dataclass
class Env:
    stub: prompts_pb2_grpc.PromptServiceStub
    channel: grpc.aio.Channel
    server: PromptsServer
    org: str
    auth: tuple  # metadata with the org's key
    other_auth: tuple  # a key of another org
    dsn: str

    async def create(self, prompt_id="summary", template=TEMPLATE, **kw) -> pb.PromptVersion:
        return await self.stub.CreatePromptVersion(
            pb.CreatePromptVersionRequest(prompt_id=prompt_id, template_json=template, **kw), metadata=self.auth)


def bearer(key: str) -> tuple:
    return (("authorization", f"Bearer {key}"),)


async def start_server(dsn: str, tmp_path, **settings) -> PromptsServer:
    server = PromptsServer(PromptsSettings(postgres_dsn=dsn, grpc_port=0, data_dir=tmp_path, _env_file=None, **settings))
    await server.start()
    return server


@pytest.fixture
async def env(fresh_db_dsn, tmp_path):
    pool = await db.connect_pool(fresh_db_dsn, max_size=2)
    await db.migrate(pool)
    key = await db.create_key(pool, await db.create_org(pool, "acme"), "t")
    other = await db.create_key(pool, await db.create_org(pool, "globex"), "t")
    await pool.close()
    server = await start_server(fresh_db_dsn, tmp_path)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.bound_port}")
    yield Env(prompts_pb2_grpc.PromptServiceStub(channel), channel, server, key.org_id, bearer(key.key), bearer(other.key),
              fresh_db_dsn)
    await channel.close()
    await server.stop()


async def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code(), err.value.details()


async def test_versions_get_list_render(env):
    v1 = await env.create(template=TEMPLATE, message="first")
    v2 = await env.create(template=json.dumps({**json.loads(TEMPLATE), "model": "gpt-4o", "temperature": 0}))
    assert (v1.version, v2.version) == (1, 2)
    assert v1.org_id == env.org and v1.model == "gpt-4o-mini" and v1.message == "first"  # model taken from the template
    assert list(v1.variables) == ["topic", "audience"]
    assert [(v.name, v.type) for v in v1.typed_variables] == [("topic", "string"), ("audience", "string")]
    assert list(v1.changed_fields) == ["messages", "model"] and list(v2.changed_fields) == ["model", "temperature"]
    s = env.stub
    assert (await s.GetPrompt(pb.GetPromptRequest(prompt_id="summary"), metadata=env.auth)).version == 2
    assert "gpt-4o-mini" in (await s.GetPrompt(pb.GetPromptRequest(prompt_id="summary", version=1), metadata=env.auth)).template_json
    await env.create("other", "{}")
    listed = await s.ListPrompts(pb.ListPromptsRequest(), metadata=env.auth)
    assert [(p.prompt_id, p.version) for p in listed.prompts] == [("other", 1), ("summary", 2)]
    versions = await s.ListVersions(pb.ListVersionsRequest(prompt_id="summary"), metadata=env.auth)
    assert [(v.version, list(v.changed_fields)) for v in versions.versions] == [(2, ["model", "temperature"]), (1, ["messages", "model"])]
    rendered = await s.RenderPrompt(pb.RenderPromptRequest(prompt_id="summary", inputs={"topic": "AI", "audience": "kids"}),
                                    metadata=env.auth)
    assert json.loads(rendered.rendered_json)["messages"][0]["content"] == "Summarise AI for kids"
    assert rendered.prompt.version == 2


async def test_typed_inputs_and_their_errors_name_the_variable(env):
    await env.create("typed", TYPED)
    s = env.stub
    out = await s.RenderPrompt(pb.RenderPromptRequest(prompt_id="typed", inputs_json=json.dumps({"temp": 0.3, "topic": "owls"})),
                               metadata=env.auth)
    assert json.loads(out.rendered_json)["temperature"] == 0.3
    out = await s.RenderPrompt(pb.RenderPromptRequest(prompt_id="typed", inputs={"temp": "1", "topic": "owls"}), metadata=env.auth)
    assert json.loads(out.rendered_json)["temperature"] == 1
    code, details = await code_of(s.RenderPrompt(pb.RenderPromptRequest(prompt_id="typed", inputs={"temp": "hot", "topic": "x"}),
                                                 metadata=env.auth))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'temp' must be a number" in details
    code, details = await code_of(s.RenderPrompt(pb.RenderPromptRequest(prompt_id="typed", inputs={"temp": "1"}), metadata=env.auth))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "missing inputs: topic" in details
    code, details = await code_of(s.RenderPrompt(pb.RenderPromptRequest(prompt_id="typed", inputs_json="[1]"), metadata=env.auth))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "inputs_json" in details


async def test_environments_label_rollback_and_archive(env):
    s = env.stub
    await env.create(environments=["production"])
    await env.create(template=TEMPLATE.replace("Summarise", "Explain"))
    await env.create(template=TEMPLATE.replace("Summarise", "Shorten"))

    async def production() -> int:
        return (await s.GetPrompt(pb.GetPromptRequest(prompt_id="summary", environment="production"), metadata=env.auth)).version

    assert await production() == 1
    labelled = await s.SetEnvironment(pb.SetEnvironmentRequest(prompt_id="summary", environment="production", version=2),
                                      metadata=env.auth)
    assert labelled.version == 2 and list(labelled.environments) == ["production"]
    await s.SetEnvironment(pb.SetEnvironmentRequest(prompt_id="summary", environment="production", version=3), metadata=env.auth)
    await s.SetEnvironment(pb.SetEnvironmentRequest(prompt_id="summary", environment="staging", version=3), metadata=env.auth)
    rendered = await s.RenderPrompt(pb.RenderPromptRequest(prompt_id="summary", environment="production",
                                                           inputs={"topic": "a", "audience": "b"}), metadata=env.auth)
    assert json.loads(rendered.rendered_json)["messages"][0]["content"].startswith("Shorten")
    assert sorted((await s.GetPrompt(pb.GetPromptRequest(prompt_id="summary", version=3), metadata=env.auth)).environments) == [
        "production", "staging"]
    # rollback walks back through what the environment was labelled with
    assert (await s.RollbackEnvironment(pb.RollbackEnvironmentRequest(prompt_id="summary", environment="production"),
                                        metadata=env.auth)).version == 2
    assert (await s.RollbackEnvironment(pb.RollbackEnvironmentRequest(prompt_id="summary", environment="production"),
                                        metadata=env.auth)).version == 1
    assert await production() == 1
    code, details = await code_of(s.RollbackEnvironment(
        pb.RollbackEnvironmentRequest(prompt_id="summary", environment="production"), metadata=env.auth))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "no earlier version" in details
    code, details = await code_of(s.GetPrompt(pb.GetPromptRequest(prompt_id="summary", environment="dev"), metadata=env.auth))
    assert code == grpc.StatusCode.NOT_FOUND and "environment 'dev'" in details
    code, _ = await code_of(s.SetEnvironment(pb.SetEnvironmentRequest(prompt_id="summary", environment="production", version=9),
                                             metadata=env.auth))
    assert code == grpc.StatusCode.NOT_FOUND

    archived = await s.ArchivePrompt(pb.ArchivePromptRequest(prompt_id="summary"), metadata=env.auth)
    assert archived.versions == 3
    for call in (s.GetPrompt(pb.GetPromptRequest(prompt_id="summary"), metadata=env.auth),
                 env.create(),
                 s.SetEnvironment(pb.SetEnvironmentRequest(prompt_id="summary", environment="production", version=2), metadata=env.auth)):
        code, details = await code_of(call)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "archived" in details
    assert not (await s.ListPrompts(pb.ListPromptsRequest(), metadata=env.auth)).prompts
    listed = await s.ListPrompts(pb.ListPromptsRequest(include_archived=True), metadata=env.auth)
    assert [(p.prompt_id, p.archived) for p in listed.prompts] == [("summary", True)]


async def test_new_prompt_already_exists(env):
    await env.create(new_prompt=True)
    code, details = await code_of(env.create(new_prompt=True))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "'summary'" in details


@pytest.mark.parametrize("kw, code, words", [
    (dict(prompt_id="bad id!"), grpc.StatusCode.INVALID_ARGUMENT, "prompt_id"),
    (dict(template="{not json"), grpc.StatusCode.INVALID_ARGUMENT, "not valid JSON"),
    (dict(template='{"a": "{{hc:n:date}}"}'), grpc.StatusCode.INVALID_ARGUMENT, "variable 'n'"),
    (dict(environments=["Prod uction"]), grpc.StatusCode.INVALID_ARGUMENT, "environments"),
])
async def test_invalid_requests(env, kw, code, words):
    got, details = await code_of(env.create(**kw))
    assert got == code and words in details


async def test_org_comes_from_the_key_in_metadata(env):
    await env.create()
    s = env.stub
    code, details = await code_of(s.GetPrompt(pb.GetPromptRequest(prompt_id="summary")))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "authorization" in details
    code, _ = await code_of(s.GetPrompt(pb.GetPromptRequest(prompt_id="summary"), metadata=bearer("sk-helicone-nope")))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    # another org's key sees nothing of this org's prompts, and cannot name this org
    code, _ = await code_of(s.GetPrompt(pb.GetPromptRequest(prompt_id="summary"), metadata=env.other_auth))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = await code_of(s.GetPrompt(pb.GetPromptRequest(org_id=env.org, prompt_id="summary"), metadata=env.other_auth))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert not (await s.ListPrompts(pb.ListPromptsRequest(), metadata=env.other_auth)).prompts
    # the same name in another org is another prompt
    assert (await s.CreatePromptVersion(pb.CreatePromptVersionRequest(prompt_id="summary", template_json="{}"),
                                        metadata=env.other_auth)).version == 1


async def test_two_authorization_entries_are_refused(env):
    # the api reads the first Authorization header, this service read the last: one credential, or refused
    await env.create()
    for metadata in (env.other_auth + env.auth, env.auth + env.other_auth, env.auth + bearer("sk-helicone-nope")):
        code, details = await code_of(env.stub.GetPrompt(pb.GetPromptRequest(prompt_id="summary"), metadata=metadata))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "authorization" in details


async def test_deadline_is_honoured_and_the_query_cancelled(env):
    await env.create()
    import asyncpg

    locker = await asyncpg.connect(env.dsn)
    try:
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE prompt_versions IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        code, _ = await code_of(env.stub.GetPrompt(pb.GetPromptRequest(prompt_id="summary"), metadata=env.auth, timeout=0.5))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - started < 3
        # the server gave up too: no query of its own is left waiting on the lock
        deadline = time.monotonic() + 3
        while await locker.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'") and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert await locker.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'") == 0
        await tx.rollback()
    finally:
        await locker.close()
    assert (await env.stub.GetPrompt(pb.GetPromptRequest(prompt_id="summary"), metadata=env.auth, timeout=5)).version == 1


async def test_metrics_per_method_and_code(env):
    await env.create()
    await code_of(env.stub.GetPrompt(pb.GetPromptRequest(prompt_id="ghost"), metadata=env.auth))
    wanted = ['helicone_prompts_rpc_total{code="OK",method="CreatePromptVersion"} 1.0',
              'helicone_prompts_rpc_total{code="NOT_FOUND",method="GetPrompt"} 1.0',
              'helicone_prompts_rpc_seconds_count{method="GetPrompt"} 1.0']
    # grpc.aio sends an aborted call's status before the handler unwinds: the count may land just after
    deadline = time.monotonic() + 5
    while not all(w in (text := env.server.metrics.render()[0].decode()) for w in wanted) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for w in wanted:
        assert w in text


async def test_server_reflection_lists_the_services(env):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    def services() -> list[str]:
        with grpc.insecure_channel(f"127.0.0.1:{env.server.bound_port}") as channel:  # sync client: in a thread
            database = ProtoReflectionDescriptorDatabase(channel)
            names = list(database.get_services())
            method = database.FindFileContainingSymbol(SERVICE_NAME).service[0].method
            return names + [m.name for m in method]

    found = await asyncio.to_thread(services)
    assert SERVICE_NAME in found and "grpc.health.v1.Health" in found and "RollbackEnvironment" in found


async def test_grpc_health_follows_postgres(fresh_db_dsn, tmp_path):
    pool = await db.connect_pool(fresh_db_dsn, max_size=1)
    await db.migrate(pool)
    key = await db.create_key(pool, await db.create_org(pool, "acme"), "t")
    await pool.close()
    proxy, via = await postgres_proxy(fresh_db_dsn)
    server = await start_server(via, tmp_path, health_check_interval=0.2, readiness_timeout=0.5)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.bound_port}")
    health = health_pb2_grpc.HealthStub(channel)

    async def status_becomes(want, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [(await health.Check(health_pb2.HealthCheckRequest(service=n))).status for n in ("", SERVICE_NAME)]
            if got == [want, want]:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"health never became {want}")

    try:
        await status_becomes(health_pb2.HealthCheckResponse.SERVING)
        proxy.cut()
        await status_becomes(health_pb2.HealthCheckResponse.NOT_SERVING)
        # the key is known from memory; the prompt store is not reachable: UNAVAILABLE, quickly
        started = time.monotonic()
        code, details = await code_of(prompts_pb2_grpc.PromptServiceStub(channel).ListPrompts(
            pb.ListPromptsRequest(), metadata=bearer(key.key), timeout=8))
        assert code == grpc.StatusCode.UNAVAILABLE and "Postgres" in details and time.monotonic() - started < 7
        proxy.restore()
        await status_becomes(health_pb2.HealthCheckResponse.SERVING)
    finally:
        await channel.close()
        await server.stop()
        await proxy.stop()


async def test_prompts_written_before_migration_5_still_serve(fresh_db_dsn, tmp_path):
    import asyncpg

    conn = await asyncpg.connect(fresh_db_dsn)
    await conn.execute("CREATE TABLE schema_migrations (version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
    for version, sql in enumerate(db.MIGRATIONS[:4], start=1):
        await conn.execute(sql)
        await conn.execute("INSERT INTO schema_migrations(version) VALUES ($1)", version)
    await conn.close()
    pool = await db.connect_pool(fresh_db_dsn, max_size=1)
    key = await db.create_key(pool, await db.create_org(pool, "old"), "t")
    await pool.execute("INSERT INTO prompt_versions(org_id, prompt_id, version, template, model, variables) "
                       "VALUES ($1, 'legacy', 1, $2::jsonb, 'm', '{topic,audience}')", __import__("uuid").UUID(key.org_id), TEMPLATE)
    await pool.close()
    server = await start_server(fresh_db_dsn, tmp_path)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.bound_port}") as channel:
            stub = prompts_pb2_grpc.PromptServiceStub(channel)
            got = await stub.GetPrompt(pb.GetPromptRequest(prompt_id="legacy"), metadata=bearer(key.key))
            assert [(v.name, v.type) for v in got.typed_variables] == [("topic", "string"), ("audience", "string")]
            assert (await stub.CreatePromptVersion(pb.CreatePromptVersionRequest(prompt_id="legacy", template_json=TEMPLATE),
                                                   metadata=bearer(key.key))).version == 2
    finally:
        await server.stop()


async def test_watch_streams_the_orgs_prompt_changes(env):
    s = env.stub
    watch = s.WatchPrompts(pb.WatchPromptsRequest(), metadata=env.auth)
    other = s.WatchPrompts(pb.WatchPromptsRequest(), metadata=env.other_auth)

    async def next_change(call) -> str:
        return (await asyncio.wait_for(call.read(), 5)).prompt_id

    assert await next_change(watch) == "" and await next_change(other) == ""  # subscribed: "anything may have changed"
    # made once both are subscribed: a change made just before may still be told after the first message (under load)
    await env.create()
    assert await next_change(watch) == "summary"
    await s.CreatePromptVersion(pb.CreatePromptVersionRequest(prompt_id="summary", template_json=TEMPLATE), metadata=env.other_auth)
    await env.create("second", "{}")
    assert await next_change(watch) == "second"  # the other org's change is not in this org's stream
    await s.SetEnvironment(pb.SetEnvironmentRequest(prompt_id="summary", environment="production", version=1), metadata=env.auth)
    assert await next_change(watch) == "summary"
    await s.ArchivePrompt(pb.ArchivePromptRequest(prompt_id="second"), metadata=env.auth)
    assert await next_change(watch) == "second"
    assert await next_change(other) == "summary"
    code, _ = await code_of(s.WatchPrompts(pb.WatchPromptsRequest()).read())
    assert code == grpc.StatusCode.UNAUTHENTICATED
    started = time.monotonic()
    await env.server.stop()  # open watches end at once, not after the grace period
    assert time.monotonic() - started < 3
    assert await asyncio.wait_for(watch.read(), 5) == grpc.aio.EOF


@pytest.mark.parametrize("kw, words", [
    (dict(template='{"temperature": NaN}'), "template"),
    (dict(template='{"temperature": Infinity}'), "template"),
    (dict(template='{"temperature": 1e400}'), "template"),
    (dict(template='{"messages": [{"role": "user", "content": "a\\u0000b"}]}'), "template"),
    (dict(message="nul\x00here"), "message"),
    (dict(template='{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"), "template"),
])
async def test_unstorable_values_are_invalid_argument_not_unknown(env, kw, words):
    got, details = await code_of(env.create(**kw))
    assert got == grpc.StatusCode.INVALID_ARGUMENT, (got, details)
    assert words in details
    # nothing was stored: the prompt does not exist
    code, _ = await code_of(env.stub.GetPrompt(pb.GetPromptRequest(prompt_id="summary"), metadata=env.auth))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_a_placeholder_with_a_newline_inside_is_a_variable_and_renders(env):
    template = json.dumps({"messages": [{"role": "user", "content": "About {{\n  topic\n}}"}]})
    created = await env.create("multiline", template)
    assert list(created.variables) == ["topic"]
    out = await env.stub.RenderPrompt(pb.RenderPromptRequest(prompt_id="multiline", inputs={"topic": "owls"}), metadata=env.auth)
    assert json.loads(out.rendered_json)["messages"][0]["content"] == "About owls"


async def test_an_out_of_range_number_input_is_invalid_argument(env):
    await env.create("typed", TYPED)
    code, details = await code_of(env.stub.RenderPrompt(pb.RenderPromptRequest(
        prompt_id="typed", inputs_json='{"temp": 1' + "0" * 400 + ', "topic": "owls"}'), metadata=env.auth))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'temp'" in details, (code, details)
    # a long integer given as text keeps its value
    out = await env.stub.RenderPrompt(pb.RenderPromptRequest(
        prompt_id="typed", inputs={"temp": "12345678901234567890", "topic": "owls"}), metadata=env.auth)
    assert json.loads(out.rendered_json)["temperature"] == 12345678901234567890


async def test_a_lone_surrogate_input_is_invalid_argument_naming_it(env):
    """inputs_json may hold "\\ud800" (valid JSON); the render then could not be sent (UNKNOWN, which the api
    reports as the prompts service being unavailable)."""
    await env.create()
    code, details = await code_of(env.stub.RenderPrompt(pb.RenderPromptRequest(
        prompt_id="summary", inputs_json='{"topic": "\\ud800", "audience": "x"}'), metadata=env.auth))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "input 'topic' contains a lone surrogate" in details, (code, details)


async def test_a_render_too_large_to_answer_is_invalid_argument(env):
    """A small template using one input many times: 100 uses of a 40 kB input rendered past what a gRPC
    answer may carry, and the caller got RESOURCE_EXHAUSTED (the api: "prompts service unavailable")."""
    await env.create("many", json.dumps({"messages": [{"role": "user", "content": "{{topic}}" * 100}]}))
    code, details = await code_of(env.stub.RenderPrompt(pb.RenderPromptRequest(
        prompt_id="many", inputs={"topic": "x" * 40_000}), metadata=env.auth))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "more than the limit" in details, (code, details)
    out = await env.stub.RenderPrompt(pb.RenderPromptRequest(prompt_id="many", inputs={"topic": "x" * 1000}), metadata=env.auth)
    assert len(json.loads(out.rendered_json)["messages"][0]["content"]) == 100_000


async def test_deeply_nested_inputs_json_is_invalid_argument(env):
    await env.create()
    code, details = await code_of(env.stub.RenderPrompt(pb.RenderPromptRequest(
        prompt_id="summary", inputs_json='{"topic": ' + "[" * 100_000 + "]" * 100_000 + "}"), metadata=env.auth))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "inputs_json" in details, (code, details[:200])


async def test_a_watch_ends_once_its_key_is_revoked(env, monkeypatch):
    """A revoked key's open stream would otherwise tell its holder of the org's prompt changes for good."""
    from helicone_prompts import server as prompts_server

    monkeypatch.setattr(prompts_server, "WATCH_KEY_CHECK_SECONDS", 0.2)
    pool = await db.connect_pool(env.dsn, max_size=1)
    try:
        key = await db.create_key(pool, env.org, "watcher")
        for _ in range(100):  # the key directory learns of the new key by LISTEN/NOTIFY
            if env.server.keys.lookup(key.key) == env.org:
                break
            await asyncio.sleep(0.05)
        watch = env.stub.WatchPrompts(pb.WatchPromptsRequest(), metadata=bearer(key.key))
        assert (await asyncio.wait_for(watch.read(), 5)).prompt_id == ""
        await db.revoke_key(pool, key.id)
        code, details = await code_of(asyncio.wait_for(watch.read(), 10))  # with no change to the org's prompts
        assert code == grpc.StatusCode.UNAUTHENTICATED and "revoked" in details
        watch = env.stub.WatchPrompts(pb.WatchPromptsRequest(), metadata=env.auth)  # a key still valid keeps its stream
        assert (await asyncio.wait_for(watch.read(), 5)).prompt_id == ""
        await asyncio.sleep(0.6)
        await env.create("after")
        assert (await asyncio.wait_for(watch.read(), 5)).prompt_id == "after"
    finally:
        await pool.close()


async def test_an_archive_waits_for_a_version_being_created_under_the_prompts_lock(env):
    """CreatePromptVersion checks that the prompt is not archived under the prompt's advisory lock; an
    ArchivePrompt that does not take it can land between that check and the insert, leaving a version
    added to an archived prompt and the archive's version count short."""
    await env.create("locked")
    pool = await db.connect_pool(env.dsn, max_size=1)
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"{env.org}/locked")  # a create under way
            archive = asyncio.ensure_future(env.stub.ArchivePrompt(pb.ArchivePromptRequest(prompt_id="locked"), metadata=env.auth))
            await asyncio.sleep(0.5)
            assert not archive.done()
        assert (await asyncio.wait_for(archive, 5)).versions == 1
    finally:
        await pool.close()


def big_template(n: int) -> str:
    """A template of about 250 kB (under max_template_bytes): 17 of them pass gRPC's 4 MiB message limit."""
    return json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "system", "content": f"{n} " + "x" * 250_000}]})


async def all_pages(call, request) -> tuple[list, int]:
    """Every item of a listing, following next_page_token; and how many pages it took."""
    items, pages = [], 0
    while True:
        page = await call(request)
        pages += 1
        items += list(page.prompts if isinstance(page, pb.ListPromptsResponse) else page.versions)
        if not page.next_page_token:
            return items, pages
        request.page_token = page.next_page_token


async def test_listings_larger_than_a_grpc_message_are_paged_not_refused(env):
    """18 versions (and 18 prompts) of a 250 kB template: the whole list in one answer was over the 4 MiB a
    gRPC client receives, so the caller got RESOURCE_EXHAUSTED for that list, every time."""
    for n in range(18):
        await env.create("big", big_template(n))
        await env.create(f"big-{n:02d}", big_template(n))
    versions, pages = await all_pages(lambda r: env.stub.ListVersions(r, metadata=env.auth), pb.ListVersionsRequest(prompt_id="big"))
    assert [v.version for v in versions] == list(range(18, 0, -1)) and pages > 1
    assert json.loads(versions[0].template_json)["messages"][0]["content"].startswith("17 ")  # the templates come along
    prompts, pages = await all_pages(lambda r: env.stub.ListPrompts(r, metadata=env.auth), pb.ListPromptsRequest())
    assert [p.prompt_id for p in prompts] == ["big"] + [f"big-{n:02d}" for n in range(18)] and pages > 1


async def test_paging_returns_every_item_once_while_new_ones_are_inserted(env):
    for prompt_id in ("b", "d", "f", "h"):
        await env.create(prompt_id)
    page = await env.stub.ListPrompts(pb.ListPromptsRequest(page_size=2), metadata=env.auth)
    assert [p.prompt_id for p in page.prompts] == ["b", "d"] and page.next_page_token
    await env.create("a")  # before the cursor: an offset would show "d" again
    await env.create("e")  # after it: shown in its place
    await env.create("b")  # a new version of a prompt already shown: not shown twice
    rest, _ = await all_pages(lambda r: env.stub.ListPrompts(r, metadata=env.auth),
                              pb.ListPromptsRequest(page_size=2, page_token=page.next_page_token))
    assert [p.prompt_id for p in rest] == ["e", "f", "h"]

    for _ in range(4):
        await env.create("summary")
    page = await env.stub.ListVersions(pb.ListVersionsRequest(prompt_id="summary", page_size=2), metadata=env.auth)
    assert [v.version for v in page.versions] == [4, 3]
    await env.create("summary")  # version 5, newer than the cursor: the next pages neither shift nor repeat
    rest, _ = await all_pages(lambda r: env.stub.ListVersions(r, metadata=env.auth),
                              pb.ListVersionsRequest(prompt_id="summary", page_size=2, page_token=page.next_page_token))
    assert [v.version for v in rest] == [2, 1]
    # the last page says so, and a page size over the maximum is taken as the maximum
    page = await env.stub.ListVersions(pb.ListVersionsRequest(prompt_id="summary", page_size=2**31 - 1), metadata=env.auth)
    assert [v.version for v in page.versions] == [5, 4, 3, 2, 1] and page.next_page_token == ""


async def test_bad_page_sizes_and_tokens_are_invalid_argument_naming_the_field(env):
    await env.create("summary")
    await env.create("summary")
    await env.create("other")
    s = env.stub
    versions = await s.ListVersions(pb.ListVersionsRequest(prompt_id="summary", page_size=1), metadata=env.auth)
    prompts = await s.ListPrompts(pb.ListPromptsRequest(page_size=1), metadata=env.auth)
    for call in (s.ListPrompts(pb.ListPromptsRequest(page_size=-1), metadata=env.auth),
                 s.ListVersions(pb.ListVersionsRequest(prompt_id="summary", page_size=-1), metadata=env.auth)):
        code, details = await code_of(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_size" in details, (code, details)
    for call in (s.ListPrompts(pb.ListPromptsRequest(page_token="garbage"), metadata=env.auth),
                 s.ListPrompts(pb.ListPromptsRequest(page_token="\u00e9\U0001f600" * 3), metadata=env.auth),
                 s.ListPrompts(pb.ListPromptsRequest(page_token=versions.next_page_token), metadata=env.auth),
                 s.ListPrompts(pb.ListPromptsRequest(page_token=prompts.next_page_token, include_archived=True), metadata=env.auth),
                 s.ListVersions(pb.ListVersionsRequest(prompt_id="summary", page_token=prompts.next_page_token), metadata=env.auth),
                 s.ListVersions(pb.ListVersionsRequest(prompt_id="other", page_token=versions.next_page_token), metadata=env.auth)):
        code, details = await code_of(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in details, (code, details)
