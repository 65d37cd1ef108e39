"""REST facade over the prompts gRPC service (create versions, list, get, label environments,
roll back, archive, render previews), plus analytics per prompt version from the request log.

The caller's own Helicone key goes along as gRPC metadata: the prompts service scopes every call
to that key's org itself."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import grpc
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from helicone.prompts.v1 import prompts_pb2 as pb
from helicone.prompts.v1 import prompts_pb2_grpc
from helicone_core import prompt_templates as templates
from helicone_core.db import bearer_token
from helicone_core.log_headers import MAX_MODEL
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .filters import AnyFilter, CursorText, filter_sql
from .models import Answer, RequestFilter, documented, error_responses
from .queries import no_feedback, prompt_analytics_json, prompt_analytics_sql, prompt_scores_json, prompt_scores_sql

PromptId = Annotated[str, Path(pattern=templates.PROMPT_ID.pattern, description=f"the prompt's id: {templates.PROMPT_ID_FORM}")]
Environment = Annotated[str, Path(pattern=templates.ENVIRONMENT.pattern, description=templates.ENVIRONMENT_FORM)]
# gRPC status -> HTTP status for the caller, with the service's message
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,  # the key was revoked between this api's check and the service's
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
}
# gRPC status -> HTTP status when the service failed: only these are worth retrying shortly (503, Retry-After)
FAILURE_STATUS = {
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.CANCELLED: 503,
    grpc.StatusCode.UNIMPLEMENTED: 501,  # a prompts service older than this api
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}  # anything else (INTERNAL, UNKNOWN, DATA_LOSS, RESOURCE_EXHAUSTED: an answer over the size limit) is a 502
# List pages (the service also stops a page before 3 MiB, so a page may be shorter while more follow)
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="at most this many per page; a page of large templates "
                                                             "may hold fewer while more follow")]
Cursor = Annotated[CursorText | None, Query(description="the next_cursor of the previous page of this same list")]
BAD_CURSOR = "must be the next_cursor of a previous page of this same list (the same path and include_archived)"


def _unstorable(value: Any, path: str) -> str | None:
    """Where `value` holds text Postgres cannot store (NUL, a lone surrogate): the prompts service keeps
    templates as jsonb and messages as text, so such text is a 422 here, never a failed insert."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return f"{where} contains a NUL character (\\u0000), which cannot be stored"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return f"{where} contains a lone surrogate, which cannot be stored as UTF-8"
        elif isinstance(item, dict):
            for k, v in item.items():
                stack += [(k, f"{where} (a key)"), (v, f"{where}.{k}")]
        elif isinstance(item, list):
            stack += [(v, f"{where}[{i}]") for i, v in enumerate(item)]
    return None


class NewVersion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: dict[str, Any] = Field(description="the request body: messages, model, parameters, tools, response_format, "
                                                 "with {{name}} / {{hc:name:type}} placeholders in string values")
    model: str = Field("", max_length=MAX_MODEL, description="defaults to the template's model")
    message: str = Field("", max_length=2000, description="what changed")
    environments: list[Annotated[str, Field(pattern=templates.ENVIRONMENT.pattern)]] = Field(
        default_factory=list, max_length=16, description="label the new version for these environments at once")
    new_prompt: bool = Field(False, description="create a new prompt: 409 when the id is taken")

    @model_validator(mode="after")
    def _storable(self) -> NewVersion:
        problem = _unstorable({"template": self.template, "model": self.model, "message": self.message}, "")
        if problem:
            raise ValueError(problem.lstrip("."))
        return self


# Versions are int32 in the prompts proto: a larger number is a 422, never a failed call.
MAX_VERSION = 2**31 - 1


class EnvironmentLabel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=MAX_VERSION)


class RenderPreview(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(0, ge=0, le=MAX_VERSION, description="0: latest (or the environment's)")
    environment: Annotated[str, Field(pattern=templates.ENVIRONMENT.pattern)] | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)


class PromptAnalyticsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filter: AnyFilter = Field(default_factory=RequestFilter)


class PromptVariable(Answer):
    name: str
    type: Literal[templates.TYPES] = Field(description="`{{hc:name:type}}`'s type; string for a plain `{{name}}`")  # type: ignore[valid-type]


VERSION_EXAMPLE = {
    "prompt_id": "support", "version": 2,
    "template": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "{{question}}"}],
                 "max_tokens": "{{hc:limit:number}}"},
    "model": "gpt-4o-mini", "variables": [{"name": "question", "type": "string"}, {"name": "limit", "type": "number"}],
    "environments": ["production"], "message": "a token limit", "changed_fields": ["max_tokens"], "archived": False,
    "created_at": "2026-03-01T12:00:00.123456+00:00",
}


class PromptVersion(Answer):
    """One version of a prompt, as version_json gives it."""

    model_config = ConfigDict(json_schema_extra={"examples": [VERSION_EXAMPLE]})

    prompt_id: str
    version: int
    template: dict[str, Any] = Field(description="the request body, with its placeholders")
    model: str
    variables: list[PromptVariable] = Field(description="in order of first use")
    environments: list[str] = Field(description="the environments this version is labelled for")
    message: str = Field(description="what changed, from the author")
    changed_fields: list[str] = Field(description="top-level template fields that differ from the previous version")
    archived: bool
    created_at: str | None


class PromptVersionPage(Answer):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [VERSION_EXAMPLE], "next_cursor": "djI"}]})

    data: list[PromptVersion]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: this is the last page")


class ArchivedPrompt(Answer):
    model_config = ConfigDict(json_schema_extra={"examples": [{"prompt_id": "support", "archived": True, "versions": 2}]})

    prompt_id: str
    archived: Literal[True]
    versions: int = Field(description="how many versions the prompt has")


class RenderedPrompt(Answer):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "prompt": VERSION_EXAMPLE, "rendered": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi?"}],
                                                "max_tokens": 100}}]})

    prompt: PromptVersion = Field(description="the version rendered")
    rendered: dict[str, Any] = Field(description="the request body it renders to with these inputs")


class LatencySummary(Answer):
    avg: float
    p95: float


class ScoreSummary(Answer):
    avg: float
    count: int = Field(description="requests with this score")


class FeedbackSummary(Answer):
    up: int
    down: int
    count: int
    ratio: float | None = Field(description="the thumbs-up share; null without feedback")


class VersionAnalytics(Answer):
    version: int
    requests: int
    cost_usd: float
    cost_unknown_requests: int = Field(description="requests of models not in the cost registry (not in cost_usd)")
    latency_ms: LatencySummary
    errors: int
    error_rate: float = Field(description="status >= 400 or no response, over requests")
    scores: dict[str, ScoreSummary] = Field(description="score name -> its mean and count (the feedback score is `feedback`)")
    feedback: FeedbackSummary


class PromptAnalytics(Answer):
    model_config = ConfigDict(json_schema_extra={"examples": [{"prompt_id": "support", "data": [{
        "version": 2, "requests": 40, "cost_usd": 0.12, "cost_unknown_requests": 0, "latency_ms": {"avg": 820.5, "p95": 1900.0},
        "errors": 2, "error_rate": 0.05, "scores": {"accuracy": {"avg": 0.85, "count": 12}},
        "feedback": {"up": 9, "down": 1, "count": 10, "ratio": 0.9}}]}]})

    prompt_id: str
    data: list[VersionAnalytics] = Field(description="per version the requests rendered from it, newest version first")


def version_json(v: pb.PromptVersion) -> dict:
    return {
        "prompt_id": v.prompt_id,
        "version": v.version,
        "template": json.loads(v.template_json),
        "model": v.model,
        "variables": [{"name": x.name, "type": x.type} for x in v.typed_variables],
        "environments": list(v.environments),
        "message": v.message,
        "changed_fields": list(v.changed_fields),
        "archived": v.archived,
        "created_at": v.created_at.ToDatetime(tzinfo=dt.timezone.utc).isoformat() if v.HasField("created_at") else None,
    }


class PromptsClient:
    """One gRPC channel to the prompts service, opened in the api's lifespan."""

    def __init__(self, target: str, timeout: float) -> None:
        self.target, self.timeout = target, timeout
        self.channel: grpc.aio.Channel | None = None
        self.stub: prompts_pb2_grpc.PromptServiceStub | None = None

    async def start(self) -> None:
        if self.target:
            self.channel = grpc.aio.insecure_channel(self.target)
            self.stub = prompts_pb2_grpc.PromptServiceStub(self.channel)

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()

    async def call(self, request: Request, method: str, message, *, cursor: bool = False):
        """`method`'s answer; its error as the matching HTTP status (with `cursor`, INVALID_ARGUMENT is a 422 on `cursor`)."""
        if self.stub is None:
            raise HTTPException(503, "this api has no prompts service configured (HELICONE_PROMPTS_TARGET)")
        key = bearer_token(request.headers.get("authorization"))  # checked by RequestGuard already
        try:
            return await getattr(self.stub, method)(message, metadata=(("authorization", f"Bearer {key}"),), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if cursor and code == grpc.StatusCode.INVALID_ARGUMENT:  # the route checked everything else it sends
                raise RequestValidationError([{"loc": ("query", "cursor"), "msg": BAD_CURSOR, "type": "value_error"}]) from None
            if code in HTTP_STATUS:
                raise HTTPException(HTTP_STATUS[code], exc.details()) from None
            status = FAILURE_STATUS.get(code, 502)
            if status == 503:
                raise HTTPException(503, f"prompts service unavailable ({code.name}); try again shortly",
                                    {"Retry-After": "5"}) from None
            raise HTTPException(status, f"prompts service failed ({code.name}): {exc.details()}") from None


def prompts_router(state, org_id: Callable[..., Awaitable[str]]) -> APIRouter:
    router = APIRouter(prefix="/v1/prompts", tags=["prompts"], responses=error_responses({
        400: "refused by the prompts service (the message says why)", 403: "not allowed", 404: "no such prompt or version",
        409: "conflicts with the prompt's state (exists already, archived, ...)",
        501: "the prompts service does not implement this call (it is older than this api)",
        502: "the prompts service failed (the message names its gRPC code)",
        503: "the prompts service is unreachable (with Retry-After), or the key store is not loaded yet",
        504: "the prompts service did not answer in time"}))
    client: PromptsClient = state.prompts

    @router.get("", response_model=documented(PromptVersionPage))
    async def list_prompts(request: Request, include_archived: bool = Query(False), limit: Limit = DEFAULT_LIMIT,
                           cursor: Cursor = None, org: str = Depends(org_id)) -> dict:
        """The latest version of each prompt, by prompt id, a page at a time: `next_cursor` (null on the
        last page) goes back as `cursor`."""
        found = await client.call(request, "ListPrompts", pb.ListPromptsRequest(
            include_archived=include_archived, page_size=limit, page_token=cursor or ""), cursor=True)
        return {"data": [version_json(v) for v in found.prompts], "next_cursor": found.next_page_token or None}

    @router.post("/{prompt_id}/versions", status_code=201, response_model=documented(PromptVersion))
    async def create_version(request: Request, prompt_id: PromptId, body: NewVersion, org: str = Depends(org_id)) -> dict:
        created = await client.call(request, "CreatePromptVersion", pb.CreatePromptVersionRequest(
            prompt_id=prompt_id, template_json=json.dumps(body.template), model=body.model, message=body.message,
            environments=body.environments, new_prompt=body.new_prompt))
        return version_json(created)

    @router.get("/{prompt_id}/versions", response_model=documented(PromptVersionPage))
    async def list_versions(request: Request, prompt_id: PromptId, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None,
                            org: str = Depends(org_id)) -> dict:
        """Every version, newest first, with the fields each changed, a page at a time: `next_cursor` (null
        on the last page) goes back as `cursor`."""
        found = await client.call(request, "ListVersions", pb.ListVersionsRequest(
            prompt_id=prompt_id, page_size=limit, page_token=cursor or ""), cursor=True)
        return {"data": [version_json(v) for v in found.versions], "next_cursor": found.next_page_token or None}

    @router.get("/{prompt_id}", response_model=documented(PromptVersion))
    async def get_prompt(request: Request, prompt_id: PromptId, version: int = Query(0, ge=0, le=MAX_VERSION),
                         environment: str | None = Query(None, pattern=templates.ENVIRONMENT.pattern),
                         org: str = Depends(org_id)) -> dict:
        found = await client.call(request, "GetPrompt", pb.GetPromptRequest(
            prompt_id=prompt_id, version=version, environment=environment or ""))
        return version_json(found)

    @router.put("/{prompt_id}/environments/{environment}", response_model=documented(PromptVersion))
    async def set_environment(request: Request, prompt_id: PromptId, environment: Environment, body: EnvironmentLabel,
                              org: str = Depends(org_id)) -> dict:
        """Labels a version for an environment (e.g. promotes it to production)."""
        found = await client.call(request, "SetEnvironment", pb.SetEnvironmentRequest(
            prompt_id=prompt_id, environment=environment, version=body.version))
        return version_json(found)

    @router.post("/{prompt_id}/environments/{environment}/rollback", response_model=documented(PromptVersion))
    async def rollback(request: Request, prompt_id: PromptId, environment: Environment, org: str = Depends(org_id)) -> dict:
        found = await client.call(request, "RollbackEnvironment", pb.RollbackEnvironmentRequest(
            prompt_id=prompt_id, environment=environment))
        return version_json(found)

    @router.post("/{prompt_id}/archive", response_model=documented(ArchivedPrompt))
    async def archive(request: Request, prompt_id: PromptId, org: str = Depends(org_id)) -> dict:
        done = await client.call(request, "ArchivePrompt", pb.ArchivePromptRequest(prompt_id=prompt_id))
        return {"prompt_id": done.prompt_id, "archived": True, "versions": done.versions}

    @router.post("/{prompt_id}/render", response_model=documented(RenderedPrompt))
    async def render(request: Request, prompt_id: PromptId, body: RenderPreview, org: str = Depends(org_id)) -> dict:
        """A preview of the request body a version renders to with these inputs."""
        if body.version and body.environment:
            raise HTTPException(400, "give version or environment, not both")
        done = await client.call(request, "RenderPrompt", pb.RenderPromptRequest(
            prompt_id=prompt_id, version=body.version, environment=body.environment or "", inputs_json=json.dumps(body.inputs)))
        return {"prompt": version_json(done.prompt), "rendered": json.loads(done.rendered_json)}

    @router.post("/{prompt_id}/analytics", response_model=documented(PromptAnalytics))
    async def analytics(prompt_id: PromptId, q: PromptAnalyticsQuery, org: str = Depends(org_id)) -> dict:
        """Per version: requests, cost, latency and error rate of the requests rendered from it, the mean
        and count of each score and the feedback's thumbs-up share, filtered like POST /v1/request/query."""
        with state.m_query_seconds.labels("prompt_analytics").time():
            filtered = filter_sql(org, q.filter)
            sql, params = prompt_analytics_sql(filtered, prompt_id)
            rows = await state.analytics.query(sql, params)
            sql, params = prompt_scores_sql(filtered, prompt_id)
            scored = prompt_scores_json(await state.analytics.query(sql, params))
        state.m_queries.labels("prompt_analytics", "ok").inc()
        data = []
        for row in rows:
            version = prompt_analytics_json(row)
            version.update(scored.get(version["version"]) or {"scores": {}, "feedback": no_feedback()})
            data.append(version)
        return {"prompt_id": prompt_id, "data": data}

    return router
