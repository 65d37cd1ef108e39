"""Schemathesis over the api's own OpenAPI document: requests generated from the schema (valid ones and
deliberately invalid ones) go through the in-process ASGI app on a real Postgres and chDB, with a working
key (a real prompts service behind /v1/prompts, a real broker behind the async-log routes). No answer is a 5xx, and every answer is one the document declares: its status code, its content type
and, for JSON, its schema (errors included: {"error": {"type", "message", "details"?}})."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import asyncpg
import httpx
import jsonschema
import pytest
import schemathesis
from helicone_api.app import create_app
from helicone_api.settings import ApiSettings
from helicone_core import db
from helicone_core.kafka import PLAINTEXT, ensure_topics
from helicone_prompts.server import PromptsServer
from helicone_prompts.settings import PromptsSettings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from services.api.tests.test_api import add_request, wait_for_keys


def _success_answers(doc: dict) -> list[tuple[str, dict]]:
    """(`METHOD path status`, schema) of every 2xx JSON answer the document declares."""
    return [(f"{method.upper()} {path} {status}", content["application/json"]["schema"])
            for path, ops in doc["paths"].items() for method, op in ops.items()
            for status, answer in op["responses"].items()
            if status.startswith("2") and "application/json" in (content := answer.get("content", {}))]


def _reachable(doc: dict, schema: dict) -> list[tuple[str, dict]]:
    """(name, schema) of the schema and of every schema inside it, components followed once each."""
    out, stack, seen = [], [("answer", schema)], set()
    while stack:
        name, s = stack.pop()
        if "$ref" in s:
            ref = s["$ref"].rsplit("/", 1)[-1]
            if ref not in seen:
                seen.add(ref)
                stack.append((ref, doc["components"]["schemas"][ref]))
            continue
        out.append((name, s))
        for key, inner in s.get("properties", {}).items():
            stack.append((f"{name}.{key}", inner))
        for key in ("items", "additionalProperties"):
            if isinstance(s.get(key), dict):
                stack.append((f"{name}[]", s[key]))
        for key in ("anyOf", "oneOf", "allOf"):
            stack += [(name, inner) for inner in s.get(key, [])]
    return out


def test_every_success_answer_is_typed_in_the_openapi_document(tmp_path):
    """A client generated from the document (openapi-generator, orval) gets typed data: every 2xx JSON
    answer is an object with named fields, and every object in it is closed (additionalProperties: false, or
    a map of one type), so schemathesis and the route tests fail on a field the code adds undocumented."""
    doc = create_app(ApiSettings(_env_file=None, data_dir=tmp_path, body_store="local")).openapi()  # nothing started
    answers = _success_answers(doc)
    assert len(answers) > 30
    untyped, open_objects = [], []
    for route, schema in answers:
        top = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]] if "$ref" in schema else schema
        if not top.get("properties"):
            untyped.append(route)
            continue
        open_objects += [f"{route}: {name}" for name, s in _reachable(doc, schema)
                         if "properties" in s and s.get("additionalProperties") is not False]
    assert untyped == [], "answers the document gives as a bare object or anything"
    assert open_objects == [], "objects in answers that may hold fields the document does not name"


def test_the_examples_of_every_success_answer_match_its_schema(tmp_path):
    """Examples in the document are real answers: each one of a model in a 2xx answer passes the model's
    own schema (nulls included: a nullable field is still required)."""
    doc = create_app(ApiSettings(_env_file=None, data_dir=tmp_path, body_store="local")).openapi()
    checked, problems = 0, []
    components = {name for _, schema in _success_answers(doc) for name, _ in _reachable(doc, schema)}
    for name in sorted(components & set(doc["components"]["schemas"])):
        schema = doc["components"]["schemas"][name]
        validator = jsonschema.Draft202012Validator({**schema, "components": doc["components"]})
        for example in schema.get("examples", []):
            checked += 1
            problems += [f"{name}: {e.message} at {'.'.join(map(str, e.absolute_path))}" for e in validator.iter_errors(example)]
    assert problems == []
    assert checked >= 20


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 400  # across every operation; 10-25 s on a quiet machine


@pytest.mark.parametrize("analytics_settings", ["chdb"], indirect=True)
def test_every_answer_matches_the_openapi_document(pg_dsn, analytics_settings, tmp_path, kafka_bootstrap):
    loop = asyncio.new_event_loop()
    stack = contextlib.AsyncExitStack()

    async def start():
        name = "s_" + uuid.uuid4().hex[:12]
        admin = await asyncpg.connect(pg_dsn)
        await admin.execute(f"CREATE DATABASE {name}")
        await admin.close()
        dsn = pg_dsn.replace("/postgres?", f"/{name}?")
        prompts = PromptsServer(PromptsSettings(postgres_dsn=dsn, grpc_port=0, data_dir=tmp_path / "p", _env_file=None))
        await prompts.start()
        stack.push_async_callback(prompts.stop)
        # a real broker behind the async-log routes (/custom/v1/log, /v1/traces), as in production
        topic = "fuzz." + uuid.uuid4().hex[:8]
        await ensure_topics(kafka_bootstrap, [topic], 1, 1, security=PLAINTEXT)
        app = create_app(ApiSettings(data_dir=tmp_path, body_store="local", postgres_dsn=dsn, _env_file=None,
                                     prompts_target=f"127.0.0.1:{prompts.bound_port}", kafka_bootstrap=kafka_bootstrap,
                                     kafka_topic=topic, vault_key="A" * 43 + "=",  # the provider key vault on (its routes)
                                     **analytics_settings))
        state = app.state.api
        await state.start()
        stack.push_async_callback(state.stop)
        org = await db.create_org(state.pool, "acme")
        key = (await db.create_key(state.pool, org, "schemathesis")).key
        await wait_for_keys(state, key)
        for _ in range(300):  # and the prompts service's key directory
            if prompts.keys.lookup(key):
                break
            await asyncio.sleep(0.01)
        for i in range(3):
            await add_request(state, org, minutes=i)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")
        stack.push_async_callback(client.aclose)
        return app, key, client

    try:
        app, key, client = loop.run_until_complete(start())
        schema = schemathesis.openapi.from_dict(app.openapi())
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {"POST /v1/request/query", "POST /v1/request/export", "GET /v1/request/{request_id}"} <= {
            f"{op.method.upper()} {op.path}" for op in operations}
        cases = st.one_of(*(op.as_strategy(generation_mode=mode) for op in operations
                            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)))
        seen: dict[str, set[int]] = {}

        async def send(kwargs: dict) -> httpx.Response:
            body = {"json": kwargs["json"]} if "json" in kwargs else {"content": kwargs.get("data")}
            return await client.request(kwargs["method"], kwargs["url"], headers=kwargs.get("headers"),
                                        params=kwargs.get("params"), cookies=kwargs.get("cookies"), **body)

        started = time.monotonic()

        def run_case(case) -> None:
            kwargs = case.as_transport_kwargs(base_url="http://api", headers={"Authorization": f"Bearer {key}"})
            response = loop.run_until_complete(asyncio.wait_for(send(kwargs), 20))
            seen.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)
            case.validate_response(response, checks=CHECKS)

        @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
        @given(case=cases)
        def check(case):
            run_case(case)

        check()
        elapsed = time.monotonic() - started
        # The draw is the same every run (derandomize) only as far as the schema's processing is: on some runs no
        # valid request query came out of it. The explorer's answers are always checked with one valid and one
        # invalid request of each, through the same checks.
        by_route = {f"{op.method.upper()} {op.path}": op for op in operations}
        for route, body in (("POST /v1/request/query", {"limit": 1}), ("POST /v1/request/query", {"limit": 0}),
                            ("POST /v1/request/export", {"format": "jsonl", "limit": 1}),
                            ("POST /v1/request/export", {"format": "xml"})):
            case = by_route[route].Case(body=body, media_type="application/json")
            run_case(case)
        # the explorer's routes were reached, and past validation
        assert 200 in seen.get("POST /v1/request/query", set()), seen
        assert 422 in seen.get("POST /v1/request/query", set()), seen
        assert 200 in seen.get("POST /v1/request/export", set()), seen
        assert elapsed < 60, elapsed
    finally:
        loop.run_until_complete(stack.aclose())
        loop.close()
