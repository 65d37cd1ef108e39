"""The gateway's gRPC client side of stored prompts (prompts.py): channels to the prompts service
and how its status codes are read. Imported only when a prompts service is configured
(HELICONE_PROMPTS_TARGET), so a gateway without one never loads gRPC."""

from __future__ import annotations

import json

import grpc
from helicone.prompts.v1 import prompts_pb2, prompts_pb2_grpc

__all__ = ["HTTP_STATUS", "RETRY_POLICY", "TRANSIENT", "WATCH_ENDS", "grpc", "open_channels", "prompts_pb2", "stub"]

# Transient answers: a cached version serves instead, an uncached prompt gets a 503.
TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
                       grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                       grpc.StatusCode.UNAUTHENTICATED})  # a key the prompts service has not seen yet
# The answer to a request whose prompt the service refused for good (anything else: 400).
HTTP_STATUS = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.FAILED_PRECONDITION: 409, grpc.StatusCode.PERMISSION_DENIED: 403}
# Codes that end an org's change stream (the next fetch for the org opens it again).
WATCH_ENDS = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNIMPLEMENTED})
RETRY_POLICY = json.dumps({"methodConfig": [{
    "name": [{"service": prompts_pb2.DESCRIPTOR.services_by_name["PromptService"].full_name}],
    "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.05s", "maxBackoff": "0.5s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"]},
}]})


def open_channels(target: str, count: int) -> list[grpc.aio.Channel]:
    options = [("grpc.enable_retries", 1), ("grpc.service_config", RETRY_POLICY),
               ("grpc.use_local_subchannel_pool", 1)]  # one connection per channel: a real pool
    return [grpc.aio.insecure_channel(target, options=options) for _ in range(count)]


def stub(channel: grpc.aio.Channel) -> prompts_pb2_grpc.PromptServiceStub:
    return prompts_pb2_grpc.PromptServiceStub(channel)
