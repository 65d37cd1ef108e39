"""grpc.aio PromptService backed by Postgres, plus the standard gRPC health service."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import uuid

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from helicone.prompts.v1 import prompts_pb2, prompts_pb2_grpc
from helicone_core import db
from helicone_core.metrics import Check, ServiceMetrics, readiness

from . import templates
from .settings import PromptsSettings

log = logging.getLogger("helicone.prompts")
SERVICE_NAME = prompts_pb2.DESCRIPTOR.services_by_name["PromptService"].full_name
PROMPT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def _version(row) -> prompts_pb2.PromptVersion:
    pv = prompts_pb2.PromptVersion(
        org_id=str(row["org_id"]),
        prompt_id=row["prompt_id"],
        version=row["version"],
        template_json=json.dumps(json.loads(row["template"])) if isinstance(row["template"], str) else json.dumps(row["template"]),
        model=row["model"],
        variables=list(row["variables"]),
    )
    pv.created_at.FromDatetime(row["created_at"].astimezone(dt.timezone.utc))
    return pv


class PromptService(prompts_pb2_grpc.PromptServiceServicer):
    def __init__(self, pool, settings: PromptsSettings, metrics: ServiceMetrics) -> None:
        self.pool = pool
        self.settings = settings
        self.m_calls = metrics.counter("helicone_prompts_rpc_total", "RPCs served", ("method", "code"))

    async def _org(self, org_id: str, context) -> uuid.UUID:
        try:
            return uuid.UUID(org_id)
        except ValueError:
            await self._abort(context, "org", grpc.StatusCode.INVALID_ARGUMENT, "org_id must be a UUID")

    async def _abort(self, context, method: str, code: grpc.StatusCode, message: str):
        self.m_calls.labels(method, code.name).inc()
        await context.abort(code, message)

    async def _prompt_id(self, prompt_id: str, context, method: str) -> str:
        if not PROMPT_ID.match(prompt_id):
            await self._abort(context, method, grpc.StatusCode.INVALID_ARGUMENT,
                              "prompt_id must be 1-128 characters of letters, digits, '_', '-', '.'")
        return prompt_id

    async def CreatePromptVersion(self, request, context):
        org = await self._org(request.org_id, context)
        prompt_id = await self._prompt_id(request.prompt_id, context, "CreatePromptVersion")
        if len(request.template_json.encode()) > self.settings.max_template_bytes:
            await self._abort(context, "CreatePromptVersion", grpc.StatusCode.INVALID_ARGUMENT, "template is too large")
        try:
            templates.validate(request.template_json)
        except templates.TemplateError as exc:
            await self._abort(context, "CreatePromptVersion", grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                if not await conn.fetchval("SELECT 1 FROM orgs WHERE id = $1", org):
                    await self._abort(context, "CreatePromptVersion", grpc.StatusCode.NOT_FOUND, "unknown org")
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"{org}/{prompt_id}")
                row = await conn.fetchrow(
                    """INSERT INTO prompt_versions(org_id, prompt_id, version, template, model, variables)
                       SELECT $1, $2, coalesce(max(version), 0) + 1, $3::jsonb, $4, $5
                       FROM prompt_versions WHERE org_id = $1 AND prompt_id = $2
                       RETURNING *""",
                    org, prompt_id, request.template_json, request.model, templates.variables(request.template_json),
                )
        self.m_calls.labels("CreatePromptVersion", "OK").inc()
        return _version(row)

    async def _get(self, org: uuid.UUID, prompt_id: str, version: int):
        if version > 0:
            return await self.pool.fetchrow(
                "SELECT * FROM prompt_versions WHERE org_id=$1 AND prompt_id=$2 AND version=$3", org, prompt_id, version
            )
        return await self.pool.fetchrow(
            "SELECT * FROM prompt_versions WHERE org_id=$1 AND prompt_id=$2 ORDER BY version DESC LIMIT 1", org, prompt_id
        )

    async def GetPrompt(self, request, context):
        org = await self._org(request.org_id, context)
        prompt_id = await self._prompt_id(request.prompt_id, context, "GetPrompt")
        row = await self._get(org, prompt_id, request.version)
        if row is None:
            await self._abort(context, "GetPrompt", grpc.StatusCode.NOT_FOUND, f"prompt {prompt_id!r} version {request.version or 'latest'} not found")
        self.m_calls.labels("GetPrompt", "OK").inc()
        return _version(row)

    async def ListPrompts(self, request, context):
        org = await self._org(request.org_id, context)
        rows = await self.pool.fetch(
            """SELECT DISTINCT ON (prompt_id) * FROM prompt_versions WHERE org_id=$1
               ORDER BY prompt_id, version DESC""",
            org,
        )
        self.m_calls.labels("ListPrompts", "OK").inc()
        return prompts_pb2.ListPromptsResponse(prompts=[_version(r) for r in rows])

    async def RenderPrompt(self, request, context):
        org = await self._org(request.org_id, context)
        prompt_id = await self._prompt_id(request.prompt_id, context, "RenderPrompt")
        row = await self._get(org, prompt_id, request.version)
        if row is None:
            await self._abort(context, "RenderPrompt", grpc.StatusCode.NOT_FOUND, f"prompt {prompt_id!r} not found")
        pv = _version(row)
        try:
            rendered = templates.render(pv.template_json, dict(request.inputs))
        except (templates.TemplateError, ValueError) as exc:
            await self._abort(context, "RenderPrompt", grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        self.m_calls.labels("RenderPrompt", "OK").inc()
        return prompts_pb2.RenderPromptResponse(prompt=pv, rendered_json=rendered)


class PromptsServer:
    def __init__(self, settings: PromptsSettings) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics("prompts", settings.region)
        self.pool = None
        self.server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        self.bound_port = 0

    async def start(self) -> None:
        self.pool = await db.connect_pool(self.settings.postgres_dsn.get_secret_value(), max_size=5)
        await db.migrate(self.pool)
        self.server = grpc.aio.server()
        prompts_pb2_grpc.add_PromptServiceServicer_to_server(PromptService(self.pool, self.settings, self.metrics), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.bound_port = self.server.add_insecure_port(f"{self.settings.host}:{self.settings.grpc_port}")
        await self.server.start()
        for name in ("", SERVICE_NAME):
            await _maybe_await(self.health.set(name, health_pb2.HealthCheckResponse.SERVING))
        log.info("prompts gRPC listening on %s:%s", self.settings.host, self.bound_port)

    async def stop(self) -> None:
        if self.server is not None:
            for name in ("", SERVICE_NAME):
                await _maybe_await(self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING))
            await self.server.stop(grace=5)
        if self.pool is not None:
            await self.pool.close()

    async def ready(self) -> dict[str, Check]:
        return await readiness(self.settings.readiness_timeout,
                               required={"grpc": self.server is not None, "postgres": db.ping(self.pool)})


async def _maybe_await(value):
    if hasattr(value, "__await__"):
        await value
