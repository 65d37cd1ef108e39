"""Stored prompts through the gateway: the in-process gateway, a real prompts gRPC server on
Postgres and the fake provider on local ports."""

from __future__ import annotations

import contextlib
import json
import time

import grpc
import httpx
import pytest
from helicone.prompts.v1 import prompts_pb2 as pb
from helicone.prompts.v1 import prompts_pb2_grpc
from helicone_core import db, events
from helicone_gateway import prompts as gateway_prompts
from helicone_gateway.app import create_app
from helicone_gateway.settings import GatewaySettings
from helicone_prompts.server import PromptsServer
from helicone_prompts.settings import PromptsSettings

from tests.support.fake_upstream import create_app as create_fake_upstream
from tests.support.inloop import serve

TEMPLATE = {"model": "gpt-4o-mini", "temperature": "{{hc:temp:number}}",
            "messages": [{"role": "system", "content": "You triage {{hc:product:string}} tickets."},
                         {"role": "user", "content": "Ticket: {{ticket}}"}]}
INPUTS = {"temp": 0.1, "product": "Acme", "ticket": "login \"fails\""}


class Keys:
    """The gateway's key directory, knowing the one real key the prompts service knows too."""

    loaded = True

    def __init__(self, key: str, org: str) -> None:
        self.key, self.org = key, org

    async def start(self):
        pass

    async def stop(self):
        pass

    async def ping(self, timeout):
        return True

    def lookup(self, key):
        return self.org if key == self.key else None


class Setup:
    def __init__(self, client, fake, built, server, key, gateway):
        self.client, self.fake, self.built, self.server, self.key, self.gateway = client, fake, built, server, key, gateway
        self.headers = {"Helicone-Auth": f"Bearer {key}", "Authorization": "Bearer sk-provider"}

    async def prompts(self, call, request):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.server.bound_port}") as channel:
            stub = prompts_pb2_grpc.PromptServiceStub(channel)
            return await getattr(stub, call)(request, metadata=(("authorization", f"Bearer {self.key}"),))

    def sent(self) -> dict:
        return self.fake.state.received[-1]["body"]


@contextlib.asynccontextmanager
async def started(fresh_db_dsn, tmp_path, **gateway_settings):
    pool = await db.connect_pool(fresh_db_dsn, max_size=1)
    await db.migrate(pool)
    created = await db.create_key(pool, await db.create_org(pool, "acme"), "t")
    await pool.close()
    server = PromptsServer(PromptsSettings(postgres_dsn=fresh_db_dsn, grpc_port=0, data_dir=tmp_path / "p", _env_file=None))
    await server.start()
    fake = create_fake_upstream()
    try:
        async with serve(fake) as upstream:
            app = create_app(GatewaySettings(
                data_dir=tmp_path / "g", _env_file=None, kafka_bootstrap="127.0.0.1:1", openai_url=upstream,
                anthropic_url=upstream, prompts_target=f"127.0.0.1:{server.bound_port}", **gateway_settings))
            gw = app.state.gateway
            gw.keys = Keys(created.key, created.org_id)
            await gw.start()
            built = []
            gw.publisher.submit = lambda builder, size=0: built.append(builder())
            try:
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
                    yield Setup(client, fake, built, server, created.key, gw)
            finally:
                await gw.stop()
    finally:
        await server.stop()


@pytest.fixture
async def setup(fresh_db_dsn, tmp_path):
    async with started(fresh_db_dsn, tmp_path) as s:
        await s.prompts("CreatePromptVersion", pb.CreatePromptVersionRequest(
            prompt_id="triage", template_json=json.dumps(TEMPLATE), environments=["production"]))
        yield s


async def test_headers_render_the_prompt_into_an_openai_request_and_the_log(setup):
    s = setup
    r = await s.client.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "more"}]},
                            headers={**s.headers, "Helicone-Prompt-Id": "triage", "Helicone-Prompt-Environment": "production",
                                     "Helicone-Prompt-Inputs": json.dumps(INPUTS)})
    assert r.status_code == 200, r.text
    assert s.sent() == {"model": "gpt-4o-mini", "temperature": 0.1, "messages": [
        {"role": "system", "content": "You triage Acme tickets."}, {"role": "user", "content": 'Ticket: login "fails"'},
        {"role": "user", "content": "more"}]}
    [ev] = s.built
    assert (ev.prompt_id, ev.prompt_version, ev.prompt_environment) == ("triage", 1, "production")
    assert json.loads(ev.prompt_inputs_json) == INPUTS
    assert json.loads(ev.inline.request_body)["temperature"] == 0.1  # the log holds what the provider got


async def test_body_form_renders_an_anthropic_request(setup):
    s = setup
    body = {"prompt_id": "triage", "version_id": 1, "inputs": INPUTS, "model": "claude-3-5-haiku-latest", "max_tokens": 64,
            "messages": []}
    r = await s.client.post("/v1/messages", json=body, headers={**s.headers, "anthropic-version": "2023-06-01"})
    assert r.status_code == 200, r.text
    assert s.sent() == {"model": "claude-3-5-haiku-latest", "max_tokens": 64, "temperature": 0.1,
                        "system": "You triage Acme tickets.", "messages": [{"role": "user", "content": 'Ticket: login "fails"'}]}
    [ev] = s.built
    assert (ev.prompt_id, ev.prompt_version, ev.prompt_environment, ev.provider) == ("triage", 1, "", "anthropic")


@pytest.mark.parametrize("headers, body, status, words", [
    ({"Helicone-Prompt-Id": "triage", "Helicone-Prompt-Inputs": json.dumps({**INPUTS, "temp": "warm"})}, None, 400,
     "'temp' must be a number"),
    ({"Helicone-Prompt-Id": "triage", "Helicone-Prompt-Inputs": json.dumps({"temp": 1, "product": "x"})}, None, 400,
     "missing inputs: ticket"),
    ({"Helicone-Prompt-Id": "ghost"}, None, 404, "'ghost' not found"),
    ({"Helicone-Prompt-Id": "triage", "Helicone-Prompt-Environment": "staging"}, None, 404, "environment 'staging'"),
    ({"Helicone-Prompt-Id": "triage", "Helicone-Prompt-Inputs": "[1]"}, None, 400, "Helicone-Prompt-Inputs must be a JSON object"),
    ({"Helicone-Prompt-Id": "triage", "Helicone-Prompt-Version": "1", "Helicone-Prompt-Environment": "production"}, None, 400,
     "not both"),
    ({"Helicone-Prompt-Version": "x"}, None, 400, "Helicone-Prompt-Version"),
    ({}, {"prompt_id": "triage", "version_id": "one", "messages": []}, 400, "version_id must be a positive version number"),
    ({}, {"prompt_id": "bad id!", "messages": []}, 400, "body field prompt_id must be"),
])
async def test_bad_prompt_requests_are_refused_before_any_upstream_call(setup, headers, body, status, words):
    s = setup
    r = await s.client.post("/v1/chat/completions", json=body or {"model": "gpt-4o-mini", "messages": []},
                            headers={**s.headers, **headers})
    assert r.status_code == status and words in r.json()["error"]["message"], r.text
    assert s.fake.state.received == []


async def test_requests_without_a_prompt_are_forwarded_untouched(setup, monkeypatch):
    s = setup

    async def never(*_a, **_k):
        raise AssertionError("prompt work on a request that names no prompt")

    raw = b'{"model":"gpt-4o-mini",  "messages":[{"role":"user","content":"what is a \\"prompt_id\\"?"}]}'
    monkeypatch.setattr(s.gateway.prompts, "version", never)
    r = await s.client.post("/v1/chat/completions", content=raw, headers={**s.headers, "content-type": "application/json"})
    assert r.status_code == 200
    assert json.loads(s.built[0].inline.request_body) == json.loads(raw) and s.built[0].inline.request_body == raw
    assert s.built[0].prompt_id == ""
    monkeypatch.setattr(gateway_prompts.PromptResolver, "apply", never)
    r = await s.client.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []}, headers=s.headers)
    assert r.status_code == 200


async def test_promoted_version_is_used_once_the_cache_expires_and_cached_prompts_survive_an_outage(fresh_db_dsn, tmp_path):
    async with started(fresh_db_dsn, tmp_path, prompt_cache_ttl=0.3, prompts_timeout=1.0) as s:
        await s.prompts("CreatePromptVersion", pb.CreatePromptVersionRequest(
            prompt_id="triage", template_json=json.dumps(TEMPLATE), environments=["production"]))
        await s.prompts("CreatePromptVersion", pb.CreatePromptVersionRequest(prompt_id="other", template_json=json.dumps(TEMPLATE)))
        headers = {**s.headers, "Helicone-Prompt-Id": "triage", "Helicone-Prompt-Environment": "production",
                   "Helicone-Prompt-Inputs": json.dumps(INPUTS)}
        chat = {"model": "gpt-4o-mini", "messages": []}

        async def system_prompt() -> str:
            r = await s.client.post("/v1/chat/completions", json=chat, headers=headers)
            assert r.status_code == 200, r.text
            return s.sent()["messages"][0]["content"]

        assert await system_prompt() == "You triage Acme tickets."
        v2 = dict(TEMPLATE, messages=[{"role": "system", "content": "You route {{hc:product:string}} tickets."}, TEMPLATE["messages"][1]])
        await s.prompts("CreatePromptVersion", pb.CreatePromptVersionRequest(prompt_id="triage", template_json=json.dumps(v2)))
        await s.prompts("SetEnvironment", pb.SetEnvironmentRequest(prompt_id="triage", environment="production", version=2))
        import asyncio

        await asyncio.sleep(0.4)  # past the cache TTL
        assert await system_prompt() == "You route Acme tickets."
        assert s.built[-1].prompt_version == 2

        await s.server.stop()  # the prompts service goes away
        await asyncio.sleep(0.4)
        assert await system_prompt() == "You route Acme tickets."  # the cached version keeps serving
        calls = len(s.fake.state.received)
        r = await s.client.post("/v1/chat/completions", json=chat, headers={**headers, "Helicone-Prompt-Id": "other",
                                                                             "Helicone-Prompt-Environment": "production"})
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert "prompts service unavailable" in r.json()["error"]["message"] and "'other'" in r.json()["error"]["message"]
        assert len(s.fake.state.received) == calls  # nothing went upstream
        metrics = s.gateway.metrics.render()[0].decode()
        assert 'helicone_gateway_prompt_lookups_total{result="stale"} 1.0' in metrics
        assert 'helicone_gateway_prompt_lookups_total{result="unavailable"} 1.0' in metrics


async def test_a_promotion_reaches_the_cache_through_the_change_stream_before_the_ttl(fresh_db_dsn, tmp_path):
    import asyncio
    import time

    async with started(fresh_db_dsn, tmp_path, prompt_cache_ttl=3600) as s:
        await s.prompts("CreatePromptVersion", pb.CreatePromptVersionRequest(
            prompt_id="triage", template_json=json.dumps(TEMPLATE), environments=["production"]))
        headers = {**s.headers, "Helicone-Prompt-Id": "triage", "Helicone-Prompt-Environment": "production",
                   "Helicone-Prompt-Inputs": json.dumps(INPUTS)}

        async def version() -> int:
            r = await s.client.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []}, headers=headers)
            assert r.status_code == 200, r.text
            return s.built[-1].prompt_version

        assert await version() == 1
        assert await version() == 1  # a cache hit: the TTL is an hour
        await asyncio.sleep(0.5)  # the gateway's watch for this org is open
        await s.prompts("CreatePromptVersion", pb.CreatePromptVersionRequest(prompt_id="triage", template_json=json.dumps(TEMPLATE)))
        await s.prompts("SetEnvironment", pb.SetEnvironmentRequest(prompt_id="triage", environment="production", version=2))
        deadline = time.monotonic() + 5
        while await version() != 2:
            assert time.monotonic() < deadline, "the promotion never reached the gateway's cache"
            await asyncio.sleep(0.05)
        metrics = s.gateway.metrics.render()[0].decode()
        [count] = [float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith("helicone_gateway_prompt_cache_invalidations_total ")]
        assert count >= 1


async def test_a_rendered_prompt_is_cached_by_its_rendered_body_and_a_promotion_misses(fresh_db_dsn, tmp_path):
    import asyncio

    async with started(fresh_db_dsn, tmp_path, prompt_cache_ttl=0.3) as s:
        await s.prompts("CreatePromptVersion", pb.CreatePromptVersionRequest(
            prompt_id="triage", template_json=json.dumps(TEMPLATE), environments=["production"]))
        headers = {**s.headers, "Helicone-Prompt-Id": "triage", "Helicone-Prompt-Environment": "production",
                   "Helicone-Prompt-Inputs": json.dumps(INPUTS), "Helicone-Cache-Enabled": "true"}

        async def call(**extra) -> httpx.Response:
            sent = {k: v for k, v in {**headers, **extra}.items() if v is not None}
            r = await s.client.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []}, headers=sent)
            assert r.status_code == 200, r.text
            await s.gateway.cache.flush()  # the save runs after the answer, off the request's task
            return r

        assert (await call()).headers["helicone-cache"] == "MISS"
        calls = len(s.fake.state.received)
        hit = await call()
        assert hit.headers["helicone-cache"] == "HIT" and len(s.fake.state.received) == calls  # the provider is not called
        ev = s.built[-1]
        assert ev.cache_hit and (ev.prompt_id, ev.prompt_version, ev.prompt_environment) == ("triage", 1, "production")
        assert json.loads(ev.prompt_inputs_json) == INPUTS
        # the same version by number renders the same body: one cache entry for both ways of naming it
        assert (await call(**{"Helicone-Prompt-Environment": None, "Helicone-Prompt-Version": "1"})).headers["helicone-cache"] == "HIT"
        # other inputs render another body: another entry
        assert (await call(**{"Helicone-Prompt-Inputs": json.dumps(dict(INPUTS, product="Globex"))})).headers["helicone-cache"] == "MISS"

        v2 = dict(TEMPLATE, messages=[{"role": "system", "content": "You route {{hc:product:string}} tickets."}, TEMPLATE["messages"][1]])
        await s.prompts("CreatePromptVersion", pb.CreatePromptVersionRequest(prompt_id="triage", template_json=json.dumps(v2)))
        await s.prompts("SetEnvironment", pb.SetEnvironmentRequest(prompt_id="triage", environment="production", version=2))
        await asyncio.sleep(0.4)  # past the prompt cache's TTL
        r = await call()
        assert r.headers["helicone-cache"] == "MISS"  # the promoted version never gets version 1's answer
        assert s.sent()["messages"][0]["content"] == "You route Acme tickets." and s.built[-1].prompt_version == 2
        assert not s.built[-1].cache_hit


@pytest.mark.parametrize("headers, body, words", [
    ({"Helicone-Prompt-Id": "triage", "Helicone-Prompt-Version": "99999999999"}, None, "Helicone-Prompt-Version"),
    ({"Helicone-Prompt-Id": "triage", "Helicone-Prompt-Version": "²".encode()}, None, "Helicone-Prompt-Version"),
    ({}, {"prompt_id": "triage", "version_id": 2**31, "inputs": INPUTS, "messages": []}, "version_id"),
    ({}, {"prompt_id": "triage", "version_id": "²", "inputs": INPUTS, "messages": []}, "version_id"),
])
async def test_versions_out_of_range_or_in_other_digits_are_a_400(setup, headers, body, words):
    s = setup
    r = await s.client.post("/v1/chat/completions", json=body or {"model": "gpt-4o-mini", "messages": []},
                            headers={**s.headers, "Helicone-Prompt-Inputs": json.dumps(INPUTS), **headers} if headers else s.headers)
    assert r.status_code == 400 and words in r.json()["error"]["message"], (r.status_code, r.text)
    assert s.fake.state.received == []


async def test_an_out_of_range_number_input_is_a_400(setup):
    s = setup
    inputs = '{"temp": 1' + "0" * 400 + ', "product": "Acme", "ticket": "t"}'
    r = await s.client.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []},
                            headers={**s.headers, "Helicone-Prompt-Id": "triage", "Helicone-Prompt-Inputs": inputs})
    assert r.status_code == 400 and "'temp'" in r.json()["error"]["message"], (r.status_code, r.text)
    assert s.fake.state.received == []


async def test_a_placeholder_written_over_lines_renders(setup):
    s = setup
    template = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Ticket: {{\n  ticket\n}}"}]}
    await s.prompts("CreatePromptVersion", pb.CreatePromptVersionRequest(prompt_id="multiline", template_json=json.dumps(template)))
    r = await s.client.post("/v1/chat/completions", json={"messages": []},
                            headers={**s.headers, "Helicone-Prompt-Id": "multiline", "Helicone-Prompt-Inputs": '{"ticket": "t1"}'})
    assert r.status_code == 200, (r.status_code, r.text)
    assert s.sent()["messages"] == [{"role": "user", "content": "Ticket: t1"}]


async def test_a_change_announced_while_a_fetch_is_in_flight_is_not_cached_as_fresh(tmp_path):
    """The prompts service read version 1, then version 2 was promoted and its change reached the
    gateway before the GetPrompt answer did: the answer may be used once, but must not be cached
    as fresh for the whole TTL."""
    import asyncio
    import itertools

    from helicone_core.metrics import ServiceMetrics
    from helicone_gateway import prompt_rpc

    release = asyncio.Event()
    asked: list[int] = []

    class Stub:
        async def GetPrompt(self, request, metadata, timeout):
            asked.append(1)
            if len(asked) == 1:
                await release.wait()  # the read happened; the answer is on its way
                return pb.PromptVersion(prompt_id="triage", version=1, template_json="{}")
            return pb.PromptVersion(prompt_id="triage", version=2, template_json="{}")

    resolver = gateway_prompts.PromptResolver(GatewaySettings(data_dir=tmp_path, _env_file=None, prompt_cache_ttl=3600),
                                              ServiceMetrics("gateway", ""))
    resolver._rpc, resolver._stubs = prompt_rpc, itertools.cycle([Stub()])
    never = asyncio.get_running_loop().create_future()
    resolver._watches["org"] = asyncio.ensure_future(never)  # the org's change stream is open
    req = gateway_prompts.PromptRequest("triage", environment="production")
    try:
        first = asyncio.ensure_future(resolver.version("k", "org", req))
        while not asked:
            await asyncio.sleep(0)
        resolver._expire("org", "triage", time.monotonic())  # what the change stream does on "triage"
        release.set()
        assert (await first).version == 1
        assert (await resolver.version("k", "org", req)).version == 2
    finally:
        never.cancel()


def silent_resolver(tmp_path, refuse: set[str] | None = None) -> gateway_prompts.PromptResolver:
    """A resolver of at most 2 entries whose prompts service gives version 1 of every prompt but those in
    `refuse` (archived: FAILED_PRECONDITION), and whose change streams stay open and silent."""
    import asyncio
    import itertools

    from helicone_core.metrics import ServiceMetrics
    from helicone_gateway import prompt_rpc

    class Stub:
        async def GetPrompt(self, request, metadata, timeout):
            if refuse and request.prompt_id in refuse:
                raise grpc.aio.AioRpcError(grpc.StatusCode.FAILED_PRECONDITION, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                           f"prompt {request.prompt_id!r} is archived")
            return pb.PromptVersion(prompt_id=request.prompt_id, version=1, template_json="{}")

        def WatchPrompts(self, request, metadata):
            async def never():
                await asyncio.get_running_loop().create_future()
                yield
            return never()

    resolver = gateway_prompts.PromptResolver(
        GatewaySettings(data_dir=tmp_path, _env_file=None, prompt_cache_max_entries=2), ServiceMetrics("gateway", ""))
    resolver._rpc, resolver._stubs = prompt_rpc, itertools.cycle([Stub()])
    return resolver


async def test_an_orgs_change_stream_closes_once_nothing_of_the_org_is_cached(tmp_path):
    """One WatchPrompts stream per org whose prompts are cached: once the cache bound evicted the last of
    an org's entries, its stream goes (it used to stay open for every org ever seen)."""
    import asyncio

    resolver = silent_resolver(tmp_path)
    try:
        await resolver.version("k", "org-a", gateway_prompts.PromptRequest("p1"))
        await resolver.version("k", "org-a", gateway_prompts.PromptRequest("p2"))
        await resolver.version("k", "org-b", gateway_prompts.PromptRequest("p1"))  # evicts org-a's p1, not all of org-a
        assert set(resolver._watches) == {"org-a", "org-b"}
        stream_a = resolver._watches["org-a"]
        await resolver.version("k", "org-c", gateway_prompts.PromptRequest("p1"))  # evicts org-a's last entry
        assert set(resolver._watches) == {"org-b", "org-c"}
        await asyncio.sleep(0)
        assert stream_a.cancelled()
    finally:
        await resolver.stop()


async def test_a_prompt_forgotten_after_a_refusal_still_lets_its_orgs_change_stream_close(tmp_path):
    """A cached prompt that the service then refused (archived: 409, gone: 404) left the cache but was still
    counted as the org's: the org's change stream then stayed open for good, the bound evicting all it held."""
    import asyncio

    refuse: set[str] = set()
    resolver = silent_resolver(tmp_path, refuse)
    try:
        await resolver.version("k", "org-a", gateway_prompts.PromptRequest("p1"))
        await resolver.version("k", "org-a", gateway_prompts.PromptRequest("p2"))
        refuse.add("p1")
        resolver._expire("org-a", "p1", time.monotonic())  # its archive, announced on the change stream
        with pytest.raises(gateway_prompts.PromptError) as refused:
            await resolver.version("k", "org-a", gateway_prompts.PromptRequest("p1"))
        assert refused.value.status == 409
        stream_a = resolver._watches["org-a"]
        await resolver.version("k", "org-b", gateway_prompts.PromptRequest("q1"))
        await resolver.version("k", "org-c", gateway_prompts.PromptRequest("q1"))  # evicts p2, org-a's last entry
        assert set(resolver._watches) == {"org-b", "org-c"} and "org-a" not in resolver._org_entries
        await asyncio.sleep(0)
        assert stream_a.cancelled()
    finally:
        await resolver.stop()


async def test_while_the_prompts_service_hangs_a_cached_prompt_serves_without_waiting_each_time(fresh_db_dsn, tmp_path):
    """A prompts service that accepts connections but never answers (hung, or a black-holed network):
    the first request past the TTL waits out the deadline and serves the cached version; the ones
    right after it must not each wait the deadline again."""
    import asyncio
    import socket

    async with started(fresh_db_dsn, tmp_path, prompt_cache_ttl=2.0, prompts_timeout=1.0) as s:
        await s.prompts("CreatePromptVersion", pb.CreatePromptVersionRequest(
            prompt_id="triage", template_json=json.dumps(TEMPLATE), environments=["production"]))
        headers = {**s.headers, "Helicone-Prompt-Id": "triage", "Helicone-Prompt-Environment": "production",
                   "Helicone-Prompt-Inputs": json.dumps(INPUTS)}

        async def timed() -> float:
            began = time.monotonic()
            r = await s.client.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []}, headers=headers)
            assert r.status_code == 200, r.text
            return time.monotonic() - began

        await timed()  # cached
        port = s.server.bound_port
        await s.server.stop()
        hung = socket.socket()  # accepts, never speaks HTTP/2
        hung.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        hung.bind(("127.0.0.1", port))
        hung.listen(16)
        try:
            await asyncio.sleep(2.1)  # past the TTL
            took = [await timed() for _ in range(4)]
            assert took[0] < 1.8, took
            assert max(took[1:]) < 0.5, took  # each of these waited the whole prompts_timeout
        finally:
            hung.close()


async def test_system_content_parts_reach_anthropic_as_text_not_as_json(setup):
    s = setup
    template = {"messages": [{"role": "system", "content": [{"type": "text", "text": "You triage {{hc:product:string}} tickets."}]},
                             {"role": "user", "content": "{{ticket}}"}]}
    await s.prompts("CreatePromptVersion", pb.CreatePromptVersionRequest(prompt_id="parts", template_json=json.dumps(template)))
    body = {"prompt_id": "parts", "inputs": {"product": "Acme", "ticket": "t"}, "model": "claude-3-5-haiku-latest",
            "max_tokens": 64, "messages": []}
    r = await s.client.post("/v1/messages", json=body, headers={**s.headers, "anthropic-version": "2023-06-01"})
    assert r.status_code == 200, r.text
    assert s.sent()["system"] in ("You triage Acme tickets.", [{"type": "text", "text": "You triage Acme tickets."}]), s.sent()


async def test_a_deeply_nested_body_is_forwarded_untouched_or_refused_never_a_500(setup):
    s = setup
    deep = "[" * 100_000 + "]" * 100_000
    raw = ('{"model": "gpt-4o-mini", "messages": [], "metadata": {"prompt_id": "mine"}, "x": ' + deep + "}").encode()
    s.gateway.publisher.submit = lambda builder, size=0: None  # only the request path here, not the log's building
    r = await s.client.post("/v1/chat/completions", content=raw, headers={**s.headers, "content-type": "application/json"})
    # names no stored prompt: forwarded as sent (the fake provider cannot parse it either, and says so)
    assert "helicone-id" in r.headers and r.text == "Internal Server Error", (r.status_code, r.headers, r.text[:200])
    r = await s.client.post("/v1/chat/completions", content=raw,
                            headers={**s.headers, "content-type": "application/json", "Helicone-Prompt-Id": "triage"})
    assert r.status_code == 400, (r.status_code, r.text[:200])


async def test_deeply_nested_prompt_inputs_are_a_400(setup):
    s = setup
    deep = '{"ticket": ' + "[" * 3000 + "]" * 3000 + "}"
    r = await s.client.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []},
                            headers={**s.headers, "Helicone-Prompt-Id": "triage", "Helicone-Prompt-Inputs": deep})
    assert r.status_code == 400 and "Helicone-Prompt-Inputs" in r.json()["error"]["message"], (r.status_code, r.text[:200])
    assert s.fake.state.received == []


async def test_prompt_inputs_past_the_logged_body_limit_are_left_out_and_the_request_is_logged(setup):
    """Inputs are logged as sent, like bodies, but bodies are cut at max_logged_body_bytes and the inputs were not:
    a request with more than 4 MiB of them made an event Kafka refuses, dropped (its log lost) or, journaled, held
    back every event after it. Inputs larger than the bodies' limit are left out; the request body, cut at that
    limit and flagged, holds what was sent."""
    from helicone_core import kafka

    s = setup
    limit = s.gateway.settings.max_logged_body_bytes
    small = {**INPUTS, "ticket": "x" * 1000}
    large = {**INPUTS, "ticket": "x" * (kafka.MAX_RECORD_BYTES + 1024)}
    for inputs in (small, large):
        body = {"prompt_id": "triage", "version_id": 1, "inputs": inputs, "messages": []}
        r = await s.client.post("/v1/chat/completions", json=body, headers=s.headers)
        assert r.status_code == 200, r.text
    kept, left_out = s.built
    assert json.loads(kept.prompt_inputs_json) == small
    assert (left_out.prompt_id, left_out.prompt_version, left_out.prompt_inputs_json) == ("triage", 1, "")
    assert left_out.inline.request_truncated and len(left_out.inline.request_body) <= limit
    assert len(events.encode(left_out)) < kafka.MAX_RECORD_BYTES


@pytest.mark.parametrize("form", ["headers", "body"])
async def test_omit_request_keeps_the_prompt_inputs_out_of_the_log_too(setup, form):
    """The inputs are what the caller sent (the request body as rendered is made of them): with
    Helicone-Omit-Request: true they were stored all the same, shown by GET /v1/request/{id} as `prompt.inputs`."""
    s = setup
    omit = {**s.headers, "Helicone-Omit-Request": "true"}
    if form == "headers":
        r = await s.client.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []},
                                headers={**omit, "Helicone-Prompt-Id": "triage", "Helicone-Prompt-Version": "1",
                                         "Helicone-Prompt-Inputs": json.dumps(INPUTS)})
    else:
        r = await s.client.post("/v1/chat/completions", json={"prompt_id": "triage", "version_id": 1, "inputs": INPUTS,
                                                              "messages": []}, headers=omit)
    assert r.status_code == 200, r.text
    assert s.sent()["messages"][1]["content"] == 'Ticket: login "fails"'  # rendered and sent as usual
    [ev] = s.built
    assert (ev.prompt_id, ev.prompt_version) == ("triage", 1)  # which prompt ran is still logged
    assert ev.prompt_inputs_json == "" and ev.inline.request_body == b""
    assert ev.usage.known and ev.status == 200


@pytest.mark.parametrize("omit", [False, True])
async def test_a_refused_input_is_quoted_to_the_caller_but_not_logged_under_omit_request(setup, omit):
    """The refusal quotes the input's value (up to 40 characters) for the caller; the log's error had it too,
    so a value the caller hid with Helicone-Omit-Request: true was stored all the same."""
    s = setup
    headers = {**s.headers, "Helicone-Omit-Request": "true"} if omit else s.headers
    body = {"prompt_id": "triage", "version_id": 1, "inputs": {**INPUTS, "temp": "ssn 078-05-1120"}, "messages": []}
    r = await s.client.post("/v1/chat/completions", json=body, headers=headers)
    assert r.status_code == 400 and "078-05-1120" in r.json()["error"]["message"], r.text  # the caller sees why
    [ev] = s.built
    assert ev.status == 400 and "triage" in ev.error
    assert ("078-05-1120" in ev.error) is not omit, ev.error
    assert s.fake.state.received == []

async def test_a_lone_surrogate_in_a_prompt_request_is_forwarded_as_sent_or_a_400_never_a_500(setup):
    """JSON lets a caller write "\\ud800": in the caller's own fields it is forwarded as the escape it was
    (it was a UnicodeEncodeError: a 500); as an input the template uses it is a 400 naming the input."""
    s = setup
    raw = (b'{"prompt_id": "triage", "version_id": 1, "inputs": {"temp": 1, "product": "Acme", "ticket": "t", "unused": "\\ud800"},'
           b' "messages": [{"role": "user", "content": "more \\ud800 caf\\u00e9"}]}')
    r = await s.client.post("/v1/chat/completions", content=raw, headers={**s.headers, "content-type": "application/json"})
    assert r.status_code == 200, (r.status_code, r.text[:300])
    assert s.sent()["messages"][-1] == {"role": "user", "content": "more \ud800 café"}
    [ev] = s.built
    assert json.loads(ev.prompt_inputs_json)["unused"] == "\ud800"
    r = await s.client.post("/v1/chat/completions", content=raw.replace(b'"ticket": "t"', b'"ticket": "\\udc00"'),
                            headers={**s.headers, "content-type": "application/json"})
    assert r.status_code == 400 and "input 'ticket' contains a lone surrogate" in r.json()["error"]["message"], r.text[:300]


async def test_inputs_that_render_past_the_request_limit_are_a_413_before_any_upstream_call(fresh_db_dsn, tmp_path):
    """A template using an input 100 times multiplies it: a 2 kB input rendered a 200 kB body past
    HELICONE_MAX_REQUEST_BYTES (a larger one, or more uses, ran the shared gateway out of memory)."""
    async with started(fresh_db_dsn, tmp_path, max_request_bytes=64 * 1024) as s:
        template = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "{{ticket}}" * 100}]}
        await s.prompts("CreatePromptVersion", pb.CreatePromptVersionRequest(prompt_id="many", template_json=json.dumps(template)))
        body = {"prompt_id": "many", "inputs": {"ticket": "x" * 2000}, "messages": []}
        r = await s.client.post("/v1/chat/completions", json=body, headers=s.headers)
        assert r.status_code == 413 and "HELICONE_MAX_REQUEST_BYTES" in r.json()["error"]["message"], (r.status_code, r.text[:300])
        assert s.fake.state.received == []
        body["inputs"]["ticket"] = "x" * 100
        r = await s.client.post("/v1/chat/completions", json=body, headers=s.headers)
        assert r.status_code == 200, r.text[:300]
        assert s.sent()["messages"] == [{"role": "user", "content": "x" * 10_000}]
