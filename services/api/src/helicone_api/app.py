"""The dashboard/query API."""

from __future__ import annotations

import asyncio
import logging
import uuid
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from helicone_core import db
from helicone_core.analytics import make_analytics_store
from helicone_core.bodies import make_body_store
from helicone_core.key_directory import KeyDirectory
from helicone_core.metrics import Check, ServiceMetrics, add_ops_routes, readiness

from .keys import keys_router
from .models import RequestQuery
from .queries import body_to_json, detail_sql, list_sql, row_to_json
from .settings import ApiSettings

log = logging.getLogger("helicone.api")


class ApiState:
    def __init__(self, settings: ApiSettings, analytics=None, bodies=None) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics("api")
        self.analytics = analytics or make_analytics_store(settings)
        self.bodies = bodies or make_body_store(settings)
        self.pool = None
        self.keys = KeyDirectory(
            settings.postgres_dsn.get_secret_value(), settings.resolved_key_snapshot_file("api"), self.metrics,
            resync_interval=settings.key_resync_interval,
        )
        self.m_queries = self.metrics.counter("helicone_api_queries_total", "Queries served", ("endpoint", "result"))
        self.m_query_seconds = self.metrics.histogram("helicone_api_query_seconds", "Query time", ("endpoint",))

    async def start(self) -> None:
        await self.bodies.start()
        await self.analytics.init_schema()
        self.pool = await db.connect_pool(self.settings.postgres_dsn.get_secret_value(), max_size=5)
        await db.migrate(self.pool)
        await self.keys.start()

    async def stop(self) -> None:
        await self.keys.stop()
        if self.pool is not None:
            await self.pool.close()
        await self.analytics.close()
        await self.bodies.close()

    async def ready(self) -> dict[str, Check]:
        return await readiness(self.settings.readiness_timeout, required={
            "postgres": db.ping(self.pool),
            "analytics": self.analytics.ping(),
            "bodies": self.bodies.ping(),
            "key_store": self.keys.loaded,
        })


def create_app(settings: ApiSettings | None = None, *, analytics=None, bodies=None) -> FastAPI:
    settings = settings or ApiSettings()
    state = ApiState(settings, analytics, bodies)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(title="helicone-api", version="0.1.0", lifespan=lifespan)
    app.state.api = state
    add_ops_routes(app, state.metrics, state.ready)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]} for e in exc.errors()
        ]
        return JSONResponse({"error": {"type": "invalid_request", "message": "invalid request", "details": problems}}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": {"type": "http_error", "message": exc.detail}}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": {"type": "internal_error", "message": "internal error; see the api logs"}}, status_code=500)

    async def org_id(request: Request) -> str:
        key = db.bearer_token(request.headers.get("authorization"))
        if not key:
            raise HTTPException(401, "send 'Authorization: Bearer <your Helicone API key>'", {"WWW-Authenticate": "Bearer"})
        try:
            org = await state.keys.resolve(key)
        except Exception as exc:  # noqa: BLE001 - Postgres unreachable
            log.warning("key store unavailable: %s", exc.__class__.__name__)
            raise HTTPException(503, "key store unavailable; try again shortly", {"Retry-After": "5"}) from None
        if org is None:
            raise HTTPException(401, "invalid or revoked Helicone API key", {"WWW-Authenticate": "Bearer"})
        return org

    @app.get("/v1/request/{request_id}")
    async def get_request(request_id: str, org: str = Depends(org_id)) -> dict:
        try:
            request_id = str(uuid.UUID(request_id))
        except ValueError:
            raise HTTPException(400, "request id must be a UUID") from None
        with state.m_query_seconds.labels("detail").time():
            sql, params = detail_sql(org, request_id)
            rows = await state.analytics.query(sql, params)
        if not rows:
            state.m_queries.labels("detail", "not_found").inc()
            raise HTTPException(404, f"request {request_id} not found")
        row = rows[0]
        req_body, resp_body = await asyncio.gather(
            state.bodies.get(row["request_body_key"]), state.bodies.get(row["response_body_key"])
        )
        out = row_to_json(row)
        out["request_body"] = body_to_json(req_body, row["request_content_type"])
        out["response_body"] = body_to_json(resp_body, row["response_content_type"])
        state.m_queries.labels("detail", "ok").inc()
        return out

    @app.post("/v1/request/query")
    async def query_requests(q: RequestQuery, org: str = Depends(org_id)) -> dict:
        with state.m_query_seconds.labels("query").time():
            sql, params = list_sql(org, q)
            rows = await state.analytics.query(sql, params)
        state.m_queries.labels("query", "ok").inc()
        return {"data": [row_to_json(r) for r in rows], "limit": q.limit, "offset": q.offset}

    app.include_router(keys_router(state, org_id))
    return app
