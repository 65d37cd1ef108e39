"""grpc.aio PromptService backed by Postgres, plus the standard gRPC health service (NOT_SERVING
while Postgres is unreachable), server reflection and a metrics interceptor.

Every call is scoped to the org of the caller's Helicone key (metadata `authorization: Bearer
<key>`), checked against a KeyDirectory like the gateway and the api do."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import json
import logging
import time
import uuid

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from helicone.prompts.v1 import prompts_pb2, prompts_pb2_grpc
from helicone_core import db
from helicone_core import prompt_templates as templates
from helicone_core.addresses import host_port
from helicone_core.cancellation import raise_if_cancelling, wait_for
from helicone_core.db import KeyStoreUnavailable, bearer_token
from helicone_core.jsontext import json_object
from helicone_core.key_directory import KeyDirectory
from helicone_core.metrics import Check, ServiceMetrics, readiness

from .settings import PromptsSettings

log = logging.getLogger("helicone.prompts")
SERVICE_NAME = prompts_pb2.DESCRIPTOR.services_by_name["PromptService"].full_name
AUTH_METADATA = "authorization"  # gRPC metadata keys are lower-case

VERSION_COLUMNS = """v.org_id, v.prompt_id, v.version, v.template, v.model, v.variables, v.variable_types, v.message,
    v.changed_fields, v.created_at, p.archived_at IS NOT NULL AS archived,
    ARRAY(SELECT e.environment FROM prompt_environments e
          WHERE e.org_id = v.org_id AND e.prompt_id = v.prompt_id AND e.version = v.version ORDER BY e.environment) AS environments"""
FROM_VERSIONS = "FROM prompt_versions v JOIN prompts p ON p.org_id = v.org_id AND p.prompt_id = v.prompt_id"


def _version(row) -> prompts_pb2.PromptVersion:
    template = row["template"]
    names, types = list(row["variables"]), list(row["variable_types"])
    types = types if len(types) == len(names) else ["string"] * len(names)  # rows from before migration 5
    pv = prompts_pb2.PromptVersion(
        org_id=str(row["org_id"]),
        prompt_id=row["prompt_id"],
        version=row["version"],
        template_json=json.dumps(json.loads(template) if isinstance(template, str) else template),
        model=row["model"],
        variables=names,
        typed_variables=[prompts_pb2.Variable(name=n, type=t) for n, t in zip(names, types, strict=True)],
        environments=list(row["environments"]),
        message=row["message"],
        archived=row["archived"],
        changed_fields=list(row["changed_fields"]),
    )
    pv.created_at.FromDatetime(row["created_at"].astimezone(dt.timezone.utc))
    return pv


ANYTHING = ""  # PromptChanged.prompt_id meaning "anything may have changed"
CLOSED = None  # queued to end a watch when the server stops
# An open watch asks again whether its key is still accepted at each change and at least this often: a
# revoked key's stream ends (UNAUTHENTICATED) instead of telling its holder of the org's changes for good.
WATCH_KEY_CHECK_SECONDS = 2.0
_NO_CHANGE = object()
# A RenderPrompt answer (the render and its version) stays within gRPC's default 4 MiB message, which callers receive.
MAX_RENDERED_BYTES = 3 * 1024 * 1024
# List pages: page_size 0 means the default, a larger one is taken as the maximum; a page also stops before
# LIST_PAGE_BYTES (versions carry their templates), within the 4 MiB a caller receives, like a render.
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000
LIST_PAGE_BYTES = 3 * 1024 * 1024
MAX_PAGE_TOKEN_CHARS = 1024


class PageTokenError(ValueError):
    pass


def page_token(kind: str, of, after) -> str:
    """An opaque position in one list: its kind, what it lists (include_archived, prompt_id) and the last item given."""
    return base64.urlsafe_b64encode(json.dumps([kind, of, after], separators=(",", ":")).encode()).decode().rstrip("=")


def read_page_token(token: str, kind: str, of, after_type: type):
    """The last item given before `token`; PageTokenError when it is no token of this very list."""
    try:
        if len(token) > MAX_PAGE_TOKEN_CHARS:
            raise ValueError
        got_kind, got_of, after = json.loads(base64.urlsafe_b64decode(token.encode("ascii") + b"=" * (-len(token) % 4)))
    except (ValueError, TypeError, UnicodeError, binascii.Error):
        raise PageTokenError("page_token is not a next_page_token of this service") from None
    if got_kind != kind or got_of != of or type(got_of) is not type(of) or type(after) is not after_type:
        raise PageTokenError(f"page_token belongs to another list; pass the next_page_token of the previous {kind} page "
                             "with the same request fields")
    if (after_type is int and not 1 <= after <= 2**31 - 1) or (after_type is str and not templates.PROMPT_ID.match(after)):
        raise PageTokenError("page_token is not a next_page_token of this service")
    return after


class PromptChanges:
    """Follows the prompt change feed (Postgres NOTIFY, migration 6) and fans it out to the watch
    streams of each org. While the feed is lost, and when a watcher falls behind, watchers are
    told that anything may have changed."""

    def __init__(self, dsn: str, queue_size: int = 256) -> None:
        self.dsn = dsn
        self.queue_size = queue_size
        self.watchers: dict[str, set[asyncio.Queue]] = {}
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="prompt-changes")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for queues in self.watchers.values():
            for q in queues:
                self._put(q, CLOSED)

    def subscribe(self, org: str) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(self.queue_size)
        self.watchers.setdefault(org, set()).add(q)
        return q

    def unsubscribe(self, org: str, q: asyncio.Queue) -> None:
        queues = self.watchers.get(org)
        if queues is not None:
            queues.discard(q)
            if not queues:
                del self.watchers[org]

    @staticmethod
    def _put(q: asyncio.Queue, item) -> None:
        if q.full():  # a slow watcher: what it missed collapses into "anything changed"
            while not q.empty():
                q.get_nowait()
            item = ANYTHING if item is not CLOSED else CLOSED
        q.put_nowait(item)

    def _on_notify(self, _conn, _pid, _channel, payload: str) -> None:
        org, _, prompt_id = payload.partition(":")
        for q in self.watchers.get(org, ()):
            self._put(q, prompt_id)

    async def _follow(self) -> None:
        backoff, lost_since_last = 0.2, False
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=5)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(db.PROMPT_CHANGES_CHANNEL, self._on_notify)
                if lost_since_last:  # changes made while the feed was away were not seen
                    for queues in self.watchers.values():
                        for q in queues:
                            self._put(q, ANYTHING)
                backoff, lost_since_last = 0.2, False
                while not lost.is_set() and not conn.is_closed():
                    with contextlib.suppress(TimeoutError):
                        await wait_for(lost.wait(), 5)
                    if not lost.is_set():  # a silently dead connection raises here
                        await wait_for(conn.fetchval("SELECT 1"), 5)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Postgres away: retry, watchers are told on return
                raise_if_cancelling(exc)
                log.warning("prompt change feed unavailable (%s); retrying", exc.__class__.__name__)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()
            lost_since_last = True
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every unary call by method and status code and times it by method."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.m_calls = metrics.counter("helicone_prompts_rpc_total", "RPCs served", ("method", "code"))
        self.m_seconds = metrics.histogram("helicone_prompts_rpc_seconds", "RPC time", ("method",))

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # unknown methods (UNIMPLEMENTED), health Watch and reflection streams
        method = handler_call_details.method.rsplit("/", 1)[-1]  # a registered method: bounded label
        inner = handler.unary_unary

        async def observed(request, context):
            started = time.perf_counter()
            code = "OK"
            try:
                return await inner(request, context)
            except grpc.aio.AbortError:
                code = (context.code() or grpc.StatusCode.UNKNOWN).name
                raise
            except asyncio.CancelledError:
                code = "CANCELLED"  # the caller left or its deadline passed
                raise
            except Exception:
                code = "UNKNOWN"
                raise
            finally:
                self.m_calls.labels(method, code).inc()
                self.m_seconds.labels(method).observe(time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            observed, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)


class PromptService(prompts_pb2_grpc.PromptServiceServicer):
    def __init__(self, pool, settings: PromptsSettings, keys: KeyDirectory, changes: PromptChanges) -> None:
        self.pool = pool
        self.settings = settings
        self.keys = keys
        self.changes = changes

    # ---- checks ----------------------------------------------------------------------
    @staticmethod
    def _key(context) -> str:
        """The key of the one `authorization` entry; "" with none or several (never guess which counts)."""
        given = [value for name, value in context.invocation_metadata() or () if name == AUTH_METADATA]
        return bearer_token(given[0]) if len(given) == 1 else ""

    async def _org(self, request, context) -> uuid.UUID:
        """The org of the caller's key; a set org_id field must name the same org."""
        key = self._key(context)
        if not key:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "send one metadata entry 'authorization: Bearer <your Helicone API key>'")
        try:
            org = self.keys.lookup(key)
        except KeyStoreUnavailable:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "Helicone key store unavailable; try again shortly")
        if org is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid or revoked Helicone API key")
        if request.org_id and request.org_id != org:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "org_id does not match the org of the Helicone API key")
        return uuid.UUID(org)

    @staticmethod
    async def _prompt_id(prompt_id: str, context) -> str:
        if not templates.PROMPT_ID.match(prompt_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"prompt_id must be {templates.PROMPT_ID_FORM}")
        return prompt_id

    @staticmethod
    async def _environment(environment: str, context, field: str = "environment") -> str:
        if not templates.ENVIRONMENT.match(environment):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field} {environment[:64]!r} must be {templates.ENVIRONMENT_FORM}")
        return environment

    async def _db(self, context, work):
        """Runs `work(conn)` within the caller's deadline (capped by query_timeout): DEADLINE_EXCEEDED
        when it passes (the query is cancelled), UNAVAILABLE while Postgres cannot be reached."""
        remaining = context.time_remaining()
        budget = self.settings.query_timeout if remaining is None else min(remaining, self.settings.query_timeout)
        try:
            async with asyncio.timeout(budget):
                async with self.pool.acquire() as conn:
                    return await work(conn)
        except TimeoutError:
            code = grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= budget else grpc.StatusCode.UNAVAILABLE
            await context.abort(code, f"prompt store did not answer within {budget:.2f}s")
        except (OSError, asyncpg.exceptions.ConnectionDoesNotExistError, asyncpg.exceptions.CannotConnectNowError,
                asyncpg.exceptions.InterfaceError):
            await context.abort(grpc.StatusCode.UNAVAILABLE, "prompt store (Postgres) unreachable; try again shortly")
        except asyncpg.exceptions.DataError as exc:  # a value Postgres cannot store (NUL in text, \u0000 in jsonb)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the prompt store refused a value: {exc.args[0] if exc.args else exc}")

    async def _select(self, conn, org, prompt_id: str, version: int, environment: str, context):
        """One version by number, environment label or latest; aborts NOT_FOUND / FAILED_PRECONDITION."""
        prompt = await conn.fetchrow("SELECT archived_at FROM prompts WHERE org_id=$1 AND prompt_id=$2", org, prompt_id)
        if prompt is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"prompt {prompt_id!r} not found")
        if prompt["archived_at"] is not None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"prompt {prompt_id!r} is archived")
        if environment:
            row = await conn.fetchrow(
                f"SELECT {VERSION_COLUMNS} {FROM_VERSIONS} JOIN prompt_environments e ON e.org_id = v.org_id "
                "AND e.prompt_id = v.prompt_id AND e.version = v.version WHERE v.org_id=$1 AND v.prompt_id=$2 AND e.environment=$3",
                org, prompt_id, environment)
            what = f"environment {environment!r}"
        elif version > 0:
            row = await conn.fetchrow(
                f"SELECT {VERSION_COLUMNS} {FROM_VERSIONS} WHERE v.org_id=$1 AND v.prompt_id=$2 AND v.version=$3",
                org, prompt_id, version)
            what = f"version {version}"
        else:
            row = await conn.fetchrow(
                f"SELECT {VERSION_COLUMNS} {FROM_VERSIONS} WHERE v.org_id=$1 AND v.prompt_id=$2 ORDER BY v.version DESC LIMIT 1",
                org, prompt_id)
            what = "latest version"
        if row is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"prompt {prompt_id!r} has no {what}")
        return row

    async def _selector(self, request, context) -> tuple[uuid.UUID, str, int, str]:
        org = await self._org(request, context)
        prompt_id = await self._prompt_id(request.prompt_id, context)
        if request.version < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "version must be a positive number (0: latest)")
        environment = request.environment
        if environment:
            await self._environment(environment, context)
            if request.version:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "give either version or environment, not both")
        return org, prompt_id, request.version, environment

    # ---- calls -----------------------------------------------------------------------
    async def CreatePromptVersion(self, request, context):
        org = await self._org(request, context)
        prompt_id = await self._prompt_id(request.prompt_id, context)
        if len(request.template_json.encode()) > self.settings.max_template_bytes:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"template_json is larger than {self.settings.max_template_bytes} bytes")
        environments = [await self._environment(e, context, "environments") for e in request.environments]
        for field in ("model", "message"):
            if "\x00" in getattr(request, field):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field} contains a NUL character, which cannot be stored")
        try:
            doc = templates.validate(request.template_json)
            typed = templates.typed_variables(request.template_json)
        except templates.TemplateError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        model = request.model or (doc.get("model") if isinstance(doc.get("model"), str) else "")

        async def create(conn):
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"{org}/{prompt_id}")
                prompt = await conn.fetchrow("SELECT archived_at FROM prompts WHERE org_id=$1 AND prompt_id=$2", org, prompt_id)
                if prompt is not None and request.new_prompt:
                    await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"prompt {prompt_id!r} already exists")
                if prompt is not None and prompt["archived_at"] is not None:
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"prompt {prompt_id!r} is archived")
                if prompt is None:
                    await conn.execute("INSERT INTO prompts(org_id, prompt_id) VALUES ($1, $2)", org, prompt_id)
                previous = await conn.fetchval(
                    "SELECT template FROM prompt_versions WHERE org_id=$1 AND prompt_id=$2 ORDER BY version DESC LIMIT 1",
                    org, prompt_id)
                version = await conn.fetchval(
                    """INSERT INTO prompt_versions(org_id, prompt_id, version, template, model, variables, variable_types,
                                                   message, changed_fields)
                       SELECT $1, $2, coalesce(max(version), 0) + 1, $3::jsonb, $4, $5, $6, $7, $8
                       FROM prompt_versions WHERE org_id = $1 AND prompt_id = $2
                       RETURNING version""",
                    org, prompt_id, request.template_json, model, list(typed), list(typed.values()), request.message,
                    templates.changed_fields(json.loads(previous) if previous is not None else None, doc))
                for environment in environments:
                    await self._label(conn, org, prompt_id, environment, version)
                return await conn.fetchrow(
                    f"SELECT {VERSION_COLUMNS} {FROM_VERSIONS} WHERE v.org_id=$1 AND v.prompt_id=$2 AND v.version=$3",
                    org, prompt_id, version)

        return _version(await self._db(context, create))

    async def GetPrompt(self, request, context):
        org, prompt_id, version, environment = await self._selector(request, context)
        return _version(await self._db(context, lambda conn: self._select(conn, org, prompt_id, version, environment, context)))

    @staticmethod
    async def _paging(request, context, kind: str, of, after_type: type, first) -> tuple[int, object]:
        """The page size and the position after which the page starts (`first` without a token)."""
        if request.page_size < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"page_size must be 0 (the default, {DEFAULT_PAGE_SIZE}) or a positive number (at most {MAX_PAGE_SIZE} are used)")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        if not request.page_token:
            return size, first
        try:
            return size, read_page_token(request.page_token, kind, of, after_type)
        except PageTokenError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    @staticmethod
    async def _page(conn, sql: str, *args, size: int) -> tuple[list[prompts_pb2.PromptVersion], bool]:
        """Up to `size` versions of `sql` (which returns at most size + 1 rows) within LIST_PAGE_BYTES, read
        a few rows at a time so a list of large templates is never fetched whole; and whether more follow."""
        page, used = [], 0
        async with conn.transaction(readonly=True):
            async for row in conn.cursor(sql, *args, prefetch=min(size + 1, 16)):
                if len(page) == size:
                    return page, True
                pv = _version(row)
                used += pv.ByteSize() + 8  # + the field's tag and length
                if page and used > LIST_PAGE_BYTES:
                    return page, True
                page.append(pv)
        return page, False

    async def ListPrompts(self, request, context):
        org = await self._org(request, context)
        size, after = await self._paging(request, context, "prompts", request.include_archived, str, "")
        page, more = await self._db(context, lambda conn: self._page(
            conn,
            f"""SELECT DISTINCT ON (v.prompt_id) {VERSION_COLUMNS} {FROM_VERSIONS}
                WHERE v.org_id=$1 AND ($2 OR p.archived_at IS NULL) AND v.prompt_id > $3
                ORDER BY v.prompt_id, v.version DESC LIMIT $4""",
            org, request.include_archived, after, size + 1, size=size))
        token = page_token("prompts", request.include_archived, page[-1].prompt_id) if more else ""
        return prompts_pb2.ListPromptsResponse(prompts=page, next_page_token=token)

    async def ListVersions(self, request, context):
        org = await self._org(request, context)
        prompt_id = await self._prompt_id(request.prompt_id, context)
        size, before = await self._paging(request, context, "versions", prompt_id, int, None)

        async def read(conn):
            page, more = await self._page(
                conn, f"""SELECT {VERSION_COLUMNS} {FROM_VERSIONS} WHERE v.org_id=$1 AND v.prompt_id=$2
                          AND ($3::int IS NULL OR v.version < $3) ORDER BY v.version DESC LIMIT $4""",
                org, prompt_id, before, size + 1, size=size)
            if not page and not await conn.fetchval("SELECT 1 FROM prompts WHERE org_id=$1 AND prompt_id=$2", org, prompt_id):
                await context.abort(grpc.StatusCode.NOT_FOUND, f"prompt {prompt_id!r} not found")
            return page, more

        page, more = await self._db(context, read)
        token = page_token("versions", prompt_id, page[-1].version) if more else ""
        return prompts_pb2.ListVersionsResponse(versions=page, next_page_token=token)

    async def RenderPrompt(self, request, context):
        org, prompt_id, version, environment = await self._selector(request, context)
        inputs: dict = dict(request.inputs)
        if request.inputs_json:
            extra = json_object(request.inputs_json)
            if extra is None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "inputs_json must be a JSON object of variable values")
            inputs.update(extra)
        row = await self._db(context, lambda conn: self._select(conn, org, prompt_id, version, environment, context))
        pv = _version(row)
        try:
            rendered = templates.render(pv.template_json, inputs, MAX_RENDERED_BYTES)
        except templates.TemplateError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"prompt {prompt_id!r} version {pv.version}: {exc}")
        return prompts_pb2.RenderPromptResponse(prompt=pv, rendered_json=rendered)

    @staticmethod
    async def _label(conn, org, prompt_id: str, environment: str, version: int) -> None:
        await conn.execute(
            """INSERT INTO prompt_environments(org_id, prompt_id, environment, version) VALUES ($1, $2, $3, $4)
               ON CONFLICT (org_id, prompt_id, environment) DO UPDATE SET version = excluded.version, updated_at = now()""",
            org, prompt_id, environment, version)
        await conn.execute(
            "INSERT INTO prompt_environment_history(org_id, prompt_id, environment, version) VALUES ($1, $2, $3, $4)",
            org, prompt_id, environment, version)

    async def SetEnvironment(self, request, context):
        org = await self._org(request, context)
        prompt_id = await self._prompt_id(request.prompt_id, context)
        environment = await self._environment(request.environment, context)
        if request.version <= 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "version must be a positive version number")

        async def label(conn):
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"{org}/{prompt_id}")
                await self._select(conn, org, prompt_id, request.version, "", context)  # NOT_FOUND, archived
                await self._label(conn, org, prompt_id, environment, request.version)
                return await self._select(conn, org, prompt_id, request.version, "", context)

        return _version(await self._db(context, label))

    async def RollbackEnvironment(self, request, context):
        org = await self._org(request, context)
        prompt_id = await self._prompt_id(request.prompt_id, context)
        environment = await self._environment(request.environment, context)

        async def rollback(conn):
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"{org}/{prompt_id}")
                current = await self._select(conn, org, prompt_id, 0, environment, context)
                # the history is a stack: drop the entries for the current version, the top is then the one before
                earlier = await conn.fetchrow(
                    """SELECT id, version FROM prompt_environment_history
                       WHERE org_id=$1 AND prompt_id=$2 AND environment=$3 AND version <> $4 ORDER BY id DESC LIMIT 1""",
                    org, prompt_id, environment, current["version"])
                if earlier is None:
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                        f"environment {environment!r} of prompt {prompt_id!r} has no earlier version to roll back to")
                await conn.execute(
                    "DELETE FROM prompt_environment_history WHERE org_id=$1 AND prompt_id=$2 AND environment=$3 AND id > $4",
                    org, prompt_id, environment, earlier["id"])
                await conn.execute(
                    "UPDATE prompt_environments SET version=$4, updated_at=now() WHERE org_id=$1 AND prompt_id=$2 AND environment=$3",
                    org, prompt_id, environment, earlier["version"])
                return await self._select(conn, org, prompt_id, 0, environment, context)

        return _version(await self._db(context, rollback))

    async def ArchivePrompt(self, request, context):
        org = await self._org(request, context)
        prompt_id = await self._prompt_id(request.prompt_id, context)

        async def archive(conn):
            async with conn.transaction():
                # the lock CreatePromptVersion checks "not archived" under: no version lands on an archived prompt
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"{org}/{prompt_id}")
                found = await conn.fetchval(
                    "UPDATE prompts SET archived_at = coalesce(archived_at, now()) WHERE org_id=$1 AND prompt_id=$2 RETURNING 1",
                    org, prompt_id)
                if not found:
                    await context.abort(grpc.StatusCode.NOT_FOUND, f"prompt {prompt_id!r} not found")
                return await conn.fetchval("SELECT count(*) FROM prompt_versions WHERE org_id=$1 AND prompt_id=$2", org, prompt_id)

        return prompts_pb2.ArchivePromptResponse(prompt_id=prompt_id, versions=await self._db(context, archive))

    async def WatchPrompts(self, request, context):
        """The org's prompt changes as they happen; first an "anything" marker once subscribed."""
        org = str(await self._org(request, context))
        key = self._key(context)
        q = self.changes.subscribe(org)
        try:
            yield prompts_pb2.PromptChanged(prompt_id=ANYTHING)
            while True:
                try:
                    prompt_id = await wait_for(q.get(), WATCH_KEY_CHECK_SECONDS)
                except TimeoutError:
                    prompt_id = _NO_CHANGE  # only the key is checked
                if prompt_id is CLOSED:
                    return
                if self.keys.lookup(key) != org:  # loaded (the watch opened): it answers from its copy
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid or revoked Helicone API key")
                if prompt_id is not _NO_CHANGE:
                    yield prompts_pb2.PromptChanged(prompt_id=prompt_id)
        finally:
            self.changes.unsubscribe(org, q)


class PromptsServer:
    def __init__(self, settings: PromptsSettings) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics("prompts", settings.region)
        self.pool = None
        self.server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()
        self.keys = KeyDirectory(
            settings.postgres_dsn.get_secret_value(), settings.resolved_key_snapshot_file("prompts"), self.metrics,
            resync_interval=settings.key_resync_interval,
        )
        self.changes = PromptChanges(settings.postgres_dsn.get_secret_value())
        self.serving: bool | None = None
        self._watch: asyncio.Task | None = None
        self.bound_port = 0

    async def start(self) -> None:
        self.pool = await db.connect_pool(self.settings.postgres_dsn.get_secret_value(), max_size=5)
        await db.migrate(self.pool)
        await self.keys.start()
        self.changes.start()
        self.server = grpc.aio.server(interceptors=[MetricsInterceptor(self.metrics)])
        prompts_pb2_grpc.add_PromptServiceServicer_to_server(
            PromptService(self.pool, self.settings, self.keys, self.changes), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), self.server)
        self.bound_port = self.server.add_insecure_port(host_port(self.settings.host, self.settings.grpc_port))
        await self.server.start()
        await self._set_serving(True)
        self._watch = asyncio.create_task(self._watch_postgres(), name="prompts-health")
        log.info("prompts gRPC listening on %s", host_port(self.settings.host, self.bound_port))

    async def _set_serving(self, serving: bool) -> None:
        if serving == self.serving:
            return
        if self.serving is not None:
            log.warning("Postgres %s: gRPC health %s", "reachable again" if serving else "unreachable",
                        "SERVING" if serving else "NOT_SERVING")
        self.serving = serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def _watch_postgres(self) -> None:
        """gRPC health follows Postgres: without it no prompt can be read or written."""
        while True:
            await asyncio.sleep(self.settings.health_check_interval)
            try:
                ok = await wait_for(db.ping(self.pool), self.settings.readiness_timeout)
            except Exception as exc:  # noqa: BLE001 - any failure means not serving
                raise_if_cancelling(exc)
                ok = False
            await self._set_serving(ok)

    async def stop(self) -> None:
        """Stops everything; a second call does nothing."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        await self.changes.stop()  # ends the watch streams, which would otherwise hold the grace period
        if self.server is not None:
            await self.health.enter_graceful_shutdown()
            await self.server.stop(grace=5)
            self.server = None
            await self.keys.stop()
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    async def ready(self) -> dict[str, Check]:
        return await readiness(self.settings.readiness_timeout,
                               required={"grpc": self.server is not None, "postgres": db.ping(self.pool),
                                         "key_store": self.keys.loaded})
