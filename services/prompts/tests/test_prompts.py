import json

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helicone.prompts.v1 import prompts_pb2 as pb
from helicone.prompts.v1 import prompts_pb2_grpc
from helicone_core import db
from helicone_prompts import templates
from helicone_prompts.server import SERVICE_NAME, PromptsServer
from helicone_prompts.settings import PromptsSettings

TEMPLATE = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Summarise {{topic}} for {{ audience }}"}]})


def test_template_variables_and_render_escape_values():
    assert templates.variables(TEMPLATE) == ["topic", "audience"]
    out = json.loads(templates.render(TEMPLATE, {"topic": 'the "Q3" report\n', "audience": "execs"}))
    assert out["messages"][0]["content"] == 'Summarise the "Q3" report\n for execs'
    with pytest.raises(templates.TemplateError, match="missing inputs: audience"):
        templates.render(TEMPLATE, {"topic": "x"})
    with pytest.raises(templates.TemplateError, match="JSON object"):
        templates.validate("[1]")


@pytest.fixture
async def prompts(fresh_db_dsn):
    server = PromptsServer(PromptsSettings(postgres_dsn=fresh_db_dsn, grpc_port=0, _env_file=None))
    await server.start()
    org = await db.create_org(server.pool, "acme")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.bound_port}")
    yield prompts_pb2_grpc.PromptServiceStub(channel), channel, org
    await channel.close()
    await server.stop()


async def test_versions_get_list_render(prompts):
    stub, _, org = prompts
    v1 = await stub.CreatePromptVersion(pb.CreatePromptVersionRequest(org_id=org, prompt_id="summary", template_json=TEMPLATE, model="gpt-4o-mini"))
    v2 = await stub.CreatePromptVersion(pb.CreatePromptVersionRequest(org_id=org, prompt_id="summary", template_json=TEMPLATE.replace("Summarise", "Explain")))
    assert (v1.version, v2.version) == (1, 2)
    assert list(v1.variables) == ["topic", "audience"]
    assert (await stub.GetPrompt(pb.GetPromptRequest(org_id=org, prompt_id="summary"))).version == 2
    assert "Summarise" in (await stub.GetPrompt(pb.GetPromptRequest(org_id=org, prompt_id="summary", version=1))).template_json
    await stub.CreatePromptVersion(pb.CreatePromptVersionRequest(org_id=org, prompt_id="other", template_json="{}"))
    listed = await stub.ListPrompts(pb.ListPromptsRequest(org_id=org))
    assert [(p.prompt_id, p.version) for p in listed.prompts] == [("other", 1), ("summary", 2)]
    rendered = await stub.RenderPrompt(pb.RenderPromptRequest(org_id=org, prompt_id="summary", inputs={"topic": "AI", "audience": "kids"}))
    assert json.loads(rendered.rendered_json)["messages"][0]["content"] == "Explain AI for kids"


@pytest.mark.parametrize("request_, code", [
    (pb.CreatePromptVersionRequest(org_id="nope", prompt_id="p", template_json="{}"), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.CreatePromptVersionRequest(prompt_id="bad id!", template_json="{}"), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.CreatePromptVersionRequest(prompt_id="p", template_json="{not json"), grpc.StatusCode.INVALID_ARGUMENT),
])
async def test_invalid_requests(prompts, request_, code):
    stub, _, org = prompts
    if request_.org_id != "nope":
        request_.org_id = org
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreatePromptVersion(request_)
    assert err.value.code() == code


async def test_missing_prompt_and_missing_inputs(prompts):
    stub, _, org = prompts
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetPrompt(pb.GetPromptRequest(org_id=org, prompt_id="ghost"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    await stub.CreatePromptVersion(pb.CreatePromptVersionRequest(org_id=org, prompt_id="t", template_json=TEMPLATE))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RenderPrompt(pb.RenderPromptRequest(org_id=org, prompt_id="t", inputs={"topic": "x"}))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "audience" in err.value.details()


async def test_grpc_health(prompts):
    _, channel, _ = prompts
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE_NAME):
        resp = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
