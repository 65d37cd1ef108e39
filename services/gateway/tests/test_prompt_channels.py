"""The gateway's gRPC client of the prompts service, against a real grpc.aio server that misbehaves
on purpose: a call answered UNAVAILABLE is retried by the channel (the caller sees one answer), the
pool really is several connections, and a service that keeps failing costs at most the deadline."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from helicone.prompts.v1 import prompts_pb2 as pb
from helicone.prompts.v1 import prompts_pb2_grpc
from helicone_core.metrics import ServiceMetrics
from helicone_gateway.prompts import PromptError, PromptRequest, PromptResolver
from helicone_gateway.settings import GatewaySettings


class FlakyPrompts(prompts_pb2_grpc.PromptServiceServicer):
    """GetPrompt fails UNAVAILABLE `fail_first` times per prompt id, then answers; records each attempt's peer."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.attempts: dict[str, int] = {}
        self.peers: list[str] = []

    async def GetPrompt(self, request, context):  # noqa: N802 - the gRPC method name
        self.peers.append(context.peer())
        n = self.attempts[request.prompt_id] = self.attempts.get(request.prompt_id, 0) + 1
        if n <= self.fail_first:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return pb.PromptVersion(prompt_id=request.prompt_id, version=1, template_json='{"messages": []}')

    async def WatchPrompts(self, request, context):  # noqa: N802 - a change stream that stays quiet
        await asyncio.Event().wait()
        yield pb.PromptChanged()


@pytest.fixture
async def flaky_server(request):
    servicer = FlakyPrompts(request.param)
    server = grpc.aio.server()
    prompts_pb2_grpc.add_PromptServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(0)


async def resolver_for(target: str, **settings) -> PromptResolver:
    resolver = PromptResolver(GatewaySettings(prompts_target=target, **settings), ServiceMetrics("gateway"))
    await resolver.start()
    return resolver


@pytest.mark.parametrize("flaky_server", [1], indirect=True)
async def test_an_unavailable_answer_is_retried_by_the_channel(flaky_server):
    servicer, target = flaky_server
    resolver = await resolver_for(target)
    try:
        version = await resolver.version("sk-key", "org-1", PromptRequest("triage"))
        assert version.prompt_id == "triage" and version.version == 1
        assert servicer.attempts["triage"] == 2  # one UNAVAILABLE, then the retry answered
    finally:
        await resolver.stop()


@pytest.mark.parametrize("flaky_server", [0], indirect=True)
async def test_the_channel_pool_is_several_connections(flaky_server):
    servicer, target = flaky_server
    resolver = await resolver_for(target, prompts_channels=3)
    try:
        for i in range(6):  # distinct prompts: no cache hit, each call goes out
            await resolver.version("sk-key", "org-1", PromptRequest(f"p{i}"))
        fetch_peers = servicer.peers
        assert len(fetch_peers) == 6
        assert len(set(fetch_peers)) == 3, fetch_peers  # three client ports: three connections, used in turn
    finally:
        await resolver.stop()


@pytest.mark.parametrize("flaky_server", [100], indirect=True)
async def test_a_service_that_keeps_failing_costs_at_most_the_deadline(flaky_server):
    servicer, target = flaky_server
    resolver = await resolver_for(target, prompts_timeout=1.0)
    try:
        started = time.perf_counter()
        with pytest.raises(PromptError) as err:
            await resolver.version("sk-key", "org-1", PromptRequest("triage"))
        assert err.value.status == 503
        assert time.perf_counter() - started < 1.5
        assert servicer.attempts["triage"] == 3  # the retry policy's maxAttempts, then the gateway gives up
    finally:
        await resolver.stop()
