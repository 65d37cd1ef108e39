"""The dashboard/query API."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from helicone_core import db
from helicone_core.analytics import make_analytics_store
from helicone_core.bodies import BodyCutShort, BodyTooLarge, make_body_store, store_error
from helicone_core.cost import CostRegistry
from helicone_core.key_directory import KeyDirectory
from helicone_core.metrics import OPS_PATHS, Check, ServiceMetrics, add_ops_routes, build_version, readiness
from helicone_core.webhooks import DELIVERY_RESULTS, WebhookSender
from starlette.exceptions import HTTPException as StarletteHTTPException

from .admin import ADMIN_PATHS, admin_router
from .alert_evaluator import EVALUATION_RESULTS, AlertEvaluator
from .alerts import alerts_router
from .dashboard import dashboard_router, load_static, public_paths
from .explorer import RequestDetail, explorer_router, requests_json
from .filters import FILTER_FORMS
from .guard import HTTP_ERROR_TYPE, MISSING_KEY, ORG_STATE_KEY, RequestGuard
from .helicone_rest import helicone_rest_router
from .insights import insights_router
from .keys import keys_router
from .log_publisher import LogPublisher
from .log_routes import logs_router
from .models import ERRORS, ErrorBody, RequestId, keep_example_nulls
from .otlp import OTLP_PATHS
from .prompts import PromptsClient, prompts_router
from .properties import properties_router
from .provider_keys import provider_keys_router
from .queries import body_to_json, detail_sql
from .request_webhooks import request_webhooks_router
from .scores import scores_router
from .settings import ApiSettings

log = logging.getLogger("helicone.api")


class ApiState:
    def __init__(self, settings: ApiSettings, analytics=None, bodies=None) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics("api", settings.region)
        self.analytics = analytics or make_analytics_store(settings)
        self.bodies = bodies or make_body_store(settings)
        self.pool = None
        self.keys = KeyDirectory(
            settings.postgres_dsn.get_secret_value(), settings.resolved_key_snapshot_file("api"), self.metrics,
            resync_interval=settings.key_resync_interval,
        )
        self.prompts = PromptsClient(settings.prompts_target, settings.prompts_timeout)
        self.publisher = LogPublisher(settings, self.metrics)  # async logs (log_routes.py)
        self.costs = CostRegistry.load(settings.cost_registry_file)
        self.m_spans = self.metrics.counter("helicone_api_otlp_spans_total", "OTLP spans received, by what became of them",
                                            ("result",))
        self.m_queries = self.metrics.counter("helicone_api_queries_total", "Queries served", ("endpoint", "result"))
        self.m_query_seconds = self.metrics.histogram("helicone_api_query_seconds", "Query time", ("endpoint",))
        self.webhooks = WebhookSender(allow_loopback=settings.alert_webhook_allow_loopback,
                                      timeout=settings.alert_webhook_timeout, attempts=settings.alert_webhook_attempts)
        self.m_alert_evaluations = self.metrics.counter(
            "helicone_api_alert_evaluations_total", "Alert rule evaluations, by outcome", ("result",))
        self.m_alert_notifications = self.metrics.counter(
            "helicone_api_alert_notifications_total", "Alert notifications to webhooks, by delivery result", ("result",))
        for result in EVALUATION_RESULTS:
            self.m_alert_evaluations.labels(result)
        for result in DELIVERY_RESULTS:
            self.m_alert_notifications.labels(result)
        self.alerts = AlertEvaluator(self, settings.alert_interval)

    async def start(self) -> None:
        await self.bodies.start()
        await self.analytics.init_schema()
        self.pool = await db.connect_pool(self.settings.postgres_dsn.get_secret_value(), max_size=5)
        await db.migrate(self.pool)
        await self.keys.start()
        await self.prompts.start()
        await self.webhooks.start()
        if self.settings.alert_interval > 0:
            self.alerts.start()
        await self.publisher.start()

    async def stop(self) -> None:
        await self.alerts.stop()
        await self.publisher.stop()
        await self.webhooks.close()
        await self.prompts.stop()
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
        }, optional={"kafka": self.publisher.ping(self.settings.readiness_timeout)})  # only the log intake needs it


def _field(loc: tuple) -> str:
    """A validation error's place: `filter.user_id`, `filter.left.request.model`, `request_id` (a path
    parameter); the tag of the filter's form (flat or tree) right after `filter` is not part of it."""
    loc = tuple(p for p in loc if p not in ("body", "path"))
    if len(loc) > 1 and loc[0] == "filter" and loc[1] in FILTER_FORMS:
        loc = loc[:1] + loc[2:]
    return ".".join(str(p) for p in loc)


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

    app = FastAPI(title="helicone-api", version=build_version(), lifespan=lifespan, responses=ERRORS)
    app.state.api = state
    fastapi_openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            keep_example_nulls(fastapi_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    add_ops_routes(app, state.metrics, state.ready)
    docs = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url} - {None}
    static = load_static()
    app.add_middleware(RequestGuard, state=state, public_paths=OPS_PATHS | docs | public_paths(static) | ADMIN_PATHS,
                       otlp_paths=OTLP_PATHS)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [{"field": _field(e["loc"]), "message": e["msg"]} for e in exc.errors()]
        return JSONResponse({"error": {"type": "invalid_request", "message": "invalid request", "details": problems}}, status_code=422)

    @app.exception_handler(StarletteHTTPException)  # FastAPI's HTTPException and the router's 404/405
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": {"type": HTTP_ERROR_TYPE, "message": exc.detail}}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %r", request.method, request.scope.get("path"))  # request.url may not parse
        return JSONResponse({"error": {"type": "internal_error", "message": "internal error; see the api logs"}}, status_code=500)

    async def org_id(request: Request) -> str:
        """The org of the caller's key, which RequestGuard checked before any body byte was read."""
        org = request.scope.get("state", {}).get(ORG_STATE_KEY)
        if org is None:  # only a route the guard treats as public could get here: fail closed
            raise HTTPException(401, MISSING_KEY, {"WWW-Authenticate": "Bearer"})
        return org

    @app.get("/v1/request/{request_id}", response_model=RequestDetail, tags=["requests"],
             responses={404: {"model": ErrorBody, "description": "no request of the caller's org has this id"}})
    async def get_request(request_id: RequestId, org: str = Depends(org_id)) -> dict:
        with state.m_query_seconds.labels("detail").time():
            sql, params = detail_sql(org, str(request_id))
            rows = await state.analytics.query(sql, params)
        if not rows:
            state.m_queries.labels("detail", "not_found").inc()
            raise HTTPException(404, f"request {request_id} not found")
        row = rows[0]
        async def body(key: str) -> tuple[bytes | None, str | None]:
            """(the body, None), or (None, why it cannot be read): the store failing costs the body, not the answer."""
            if not key:
                return None, None  # a row without a key has no stored body
            try:
                data = await state.bodies.get(key)
            except ValueError:
                return None, "the row's body reference is not valid"
            except (BodyCutShort, BodyTooLarge) as exc:
                return None, str(exc)
            except Exception as exc:  # noqa: BLE001 - the store is down or refuses (S3 throttling, credentials, bucket)
                log.warning("body %r of request %s could not be read: %r", key, request_id, exc)
                return None, f"the body store could not be read ({store_error(exc)})"
            return (None, "not found in the body store") if data is None else (data, None)

        (req_body, req_error), (resp_body, resp_error), [out] = await asyncio.gather(
            body(row["request_body_key"]), body(row["response_body_key"]), requests_json(state.analytics, org, [row]),
        )
        out["request_body"], out["request_body_encoding"] = body_to_json(req_body, row["request_content_type"])
        out["response_body"], out["response_body_encoding"] = body_to_json(resp_body, row["response_content_type"])
        out["request_body_error"], out["response_body_error"] = req_error, resp_error
        state.m_queries.labels("detail", "ok").inc()
        return out

    app.include_router(explorer_router(state, org_id))
    app.include_router(scores_router(state, org_id))
    app.include_router(properties_router(state, org_id))
    app.include_router(keys_router(state, org_id))
    app.include_router(provider_keys_router(state, org_id))
    app.include_router(prompts_router(state, org_id))
    app.include_router(alerts_router(state, org_id))
    app.include_router(request_webhooks_router(state, org_id))
    app.include_router(insights_router(state, org_id))
    app.include_router(helicone_rest_router(state, org_id))
    app.include_router(dashboard_router(static))
    app.include_router(logs_router(state, org_id))
    app.include_router(admin_router(state))
    return app
