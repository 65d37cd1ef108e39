"""Gateway settings (environment: HELICONE_<FIELD>)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from helicone_core.addresses import host_name_problem
from helicone_core.providers import PROVIDER_TABLE
from helicone_core.settings import ServiceSettings
from helicone_core.settings import env_name as settings_env_name
from helicone_core.vault import VaultSettings
from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from yarl import URL

from .egress import noncanonical_ipv4, parse_allowlist_entry, service_address_problem
from .http_server import WRITE_TIMEOUT, WS_PING_INTERVAL, WS_PING_TIMEOUT


class GatewaySettings(ServiceSettings, VaultSettings):  # VaultSettings: stored provider keys (provider_keys.py)
    port: int = 8787
    # Gateway processes sharing the port (SO_REUSEPORT), each with its own journal (workers.py);
    # `python -m helicone_gateway --workers N` overrides it.
    gateway_workers: int = Field(default=1, ge=1, le=64)
    openai_url: str = "https://api.openai.com"
    anthropic_url: str = "https://api.anthropic.com"
    # Base URLs of the provider table's other providers (helicone_core/providers.json), a JSON map:
    # {"azure": "https://<resource>.openai.azure.com", "groq": "https://groq.internal-proxy"}. A
    # provider left out keeps the table's URL (Azure has none: Helicone-Target-URL must name it).
    provider_urls: dict[str, str] = {}
    # Helicone-Target-URL: `host`, `host:port`, `[v6]:port` entries the caller may target, whatever
    # their address (how a self-hosted model on a private or loopback address is opened). Empty (or
    # an entry `*`) lets any other host through too, but only to public addresses (see egress.py).
    target_url_allowlist: list[str] = []
    # Also let any Target-URL reach private ranges (RFC 1918, 100.64/10, fc00::/7); loopback,
    # link-local, unspecified and cloud metadata addresses still need an allowlist entry.
    target_url_allow_private: bool = False
    # Origins (https://host[:port]) a Helicone-Target-URL request may take its org's stored provider key to (the provider
    # key vault, HELICONE_VAULT_KEY): e.g. an Azure OpenAI resource each team names as its Target-URL. Any other
    # Target-URL host never gets a stored key (the caller chooses it: it could be anyone's server).
    vault_target_origins: list[str] = []
    upstream_connect_timeout: float = 10.0
    upstream_read_timeout: float = 600.0  # longest silence allowed between response bytes
    # Longest a caller may take none of an answer the gateway holds for it (it stopped reading a stream or a
    # large answer); then its connection is cut and the provider's answer closed, freeing the connection slot.
    client_write_timeout: float = Field(default=WRITE_TIMEOUT, gt=0)
    # A WebSocket caller (Realtime) that sent nothing for this many seconds is pinged (0: never); one that then sends
    # nothing, not even the pong, for websocket_ping_timeout is taken as gone and its provider session closed (1001).
    websocket_ping_interval: float = Field(default=WS_PING_INTERVAL, ge=0)
    websocket_ping_timeout: float = Field(default=WS_PING_TIMEOUT, gt=0)
    # Realtime sessions one Helicone key may hold open at once in one gateway process (each of --workers counts its
    # own); one more is refused with a 429. Each holds a provider WebSocket and up to about 1 MiB of caller messages.
    realtime_sessions_per_key: int = Field(default=100, ge=1)
    max_upstream_connections: int = 1000
    # The largest body the gateway reads whole (413 past it); large uploads are streamed through instead (app.Upload).
    max_request_bytes: int = 32 * 1024 * 1024
    # Bodies above this many bytes are truncated in the log event (never in the proxied traffic).
    max_logged_body_bytes: int = 450 * 1024
    publish_queue_size: int = 10_000
    # The log backlog's memory (EventPublisher): body bytes of log events not yet journaled and handed
    # to Kafka. Past this, new requests wait (at most publish_backlog_wait seconds) until the logging
    # catches up, so a logging path slower than the traffic (long streams) slows intake instead of
    # growing the process until it is killed. The queue's size still bounds small events.
    publish_backlog_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    publish_backlog_wait: float = Field(default=1.0, ge=0, le=30)
    # Producer batching: Kafka's linger.ms, batch size and compression of the request-log topic. An
    # event is on disk (the journal) before the producer sees it, so the linger costs freshness only
    # (at most this much later in ingest), never durability. Under load, record batches go as soon as
    # they fill (kafka_max_batch_bytes; EventPublisher._send_batch); at light load the journal's batches of this long
    # share one record batch: one produce request and one acknowledgement. At c=1 (about 370 requests/s)
    # 20 ms instead of 5 took the broker's CPU per request from 270-413 to 133-185 us and the gateway's
    # from 842-953 to 809-858 us, p99 overhead 2.6-3.4 -> 2.1-2.8 ms.
    kafka_linger_ms: int = Field(default=20, ge=0, le=1000)
    kafka_max_batch_bytes: int = Field(default=256 * 1024, ge=16 * 1024, le=4 * 1024 * 1024)
    # gzip only: lz4/zstd would need cramjam in the gateway and in ingest
    kafka_compression: Literal["none", "gzip"] = "none"
    publish_timeout: float = 5.0
    # Event journal (journal.py): every log event stays on disk until ingest has committed past it.
    journal_dir: Path | None = None  # defaults to <data_dir>/journal
    journal_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    journal_segment_bytes: int = Field(default=16 * 1024 * 1024, ge=64 * 1024)
    journal_segment_seconds: float = Field(default=10.0, gt=0)  # a quiet segment is sealed (and can be trimmed) after this
    journal_check_interval: float = Field(default=1.0, gt=0)  # ingest commit / broker data-loss checks
    # At light load the publisher waits this long for more events before journaling a batch (group
    # commit: one write, fsync and thread round trip for several requests); 0 journals each at once.
    journal_linger_ms: int = Field(default=5, ge=0, le=100)
    kafka_create_topics: bool = True
    kafka_replication_factor: int = 1
    # Idempotent producer (no duplicates from producer retries); the embedded broker (Tansu) lacks
    # InitProducerId, so `helicone-stack up` turns it off there.
    kafka_idempotent_producer: bool = True
    # Stored prompts (prompts.py): the prompts service's gRPC address (host:port); empty: requests
    # naming a prompt get a 503.
    prompts_target: str = ""
    prompts_timeout: float = Field(default=2.0, gt=0)  # deadline of one GetPrompt call, retries included
    prompts_channels: int = Field(default=2, ge=1, le=16)  # gRPC connections to the prompts service
    prompt_cache_ttl: float = Field(default=30.0, ge=0)  # how long a fetched version is used without asking again
    prompt_cache_max_entries: int = Field(default=10_000, ge=1)
    # Helicone-Moderations-Enabled (moderation.py): longest a moderation call may take, connection included; past it
    # the request gets a 504 and is not sent (a moderation that did not happen never lets a request through).
    moderation_timeout: float = Field(default=10.0, gt=0, le=600)
    # Helicone-LLM-Security-Enabled (llm_security.py): the prompt classifier, the base URL of an OpenAI-compatible API
    # serving a Llama Guard model (vLLM, Ollama, a hosted provider: http://vllm:8000/v1; <url>/chat/completions is
    # asked), the model's name there and its API key (sent as a Bearer token; none when unset). No URL: the header is
    # refused (400). The timeout bounds one call, connection included; past it the request gets a 504 and is not sent.
    llm_security_url: str | None = None
    llm_security_model: str = ""
    llm_security_api_key: SecretStr | None = None
    llm_security_timeout: float = Field(default=10.0, gt=0, le=600)
    # Response cache (cache.py, Helicone-Cache-* headers). With a Redis/Valkey URL
    # (redis://[:password@]host:port/db, rediss:// for TLS) every replica shares one cache;
    # without one each gateway keeps its own, in memory, up to cache_memory_max_bytes.
    redis_url: SecretStr | None = None
    cache_memory_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    cache_max_entry_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)  # larger answers are served, not cached
    # Longest a request waits on the cache store; past it (or on any store error) the cache is skipped.
    cache_store_timeout: float = Field(default=0.1, gt=0, le=5)

    def resolved_journal_dir(self) -> Path:
        return self.journal_dir or (self.data_dir / "journal")

    @field_validator("target_url_allowlist")
    @classmethod
    def _allowlist_entries(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            parse_allowlist_entry(entry)  # raises ValueError naming the entry and the accepted forms
        return entries

    @field_validator("vault_target_origins")
    @classmethod
    def _vault_target_origins(cls, entries: list[str]) -> list[str]:
        where = settings_env_name("vault_target_origins")
        for i, entry in enumerate(entries):  # named by position: an entry is never repeated (it may hold a secret)
            check_base_url(f"{where}[{i}]", entry)
            if URL(entry).raw_path not in ("", "/"):
                raise ValueError(f"{where}[{i}] must be an origin, scheme://host[:port], without a path")
        return entries

    @field_validator("provider_urls")
    @classmethod
    def _provider_urls(cls, urls: dict[str, str]) -> dict[str, str]:
        where = settings_env_name("provider_urls")
        for name, url in urls.items():
            if name in ("openai", "anthropic"):
                raise ValueError(f"{where}: {name!r}: set its base URL with {settings_env_name(name + '_url')}")
            if name not in PROVIDER_TABLE:
                raise ValueError(f"{where}: {name!r} is no provider of the table; accepted: {sorted(set(PROVIDER_TABLE) - {'openai', 'anthropic'})}")
            check_base_url(f"{where}: {name!r}:", url)
        return urls

    @field_validator("redis_url", mode="before")
    @classmethod
    def _redis_url(cls, url):
        if url in ("", None):
            return None  # an empty variable (e.g. rendered by a chart) means "no Redis"
        check_redis_url(url.get_secret_value() if isinstance(url, SecretStr) else str(url))
        return url

    @field_validator("llm_security_url", mode="before")
    @classmethod
    def _llm_security_url(cls, url):
        if url in ("", None):
            return None  # an empty variable (e.g. rendered by a chart) means "no classifier"
        where = f"{settings_env_name('llm_security_url')}:"
        check_base_url(where, url)
        problem = service_address_problem(URL(url).raw_host or "")
        if problem:
            raise ValueError(f"{where} {problem}")
        return url

    @field_validator("llm_security_api_key", mode="before")
    @classmethod
    def _llm_security_api_key(cls, key):
        return None if key in ("", None) else key

    @model_validator(mode="after")
    def _llm_security_model(self) -> GatewaySettings:
        if self.llm_security_url and not self.llm_security_model.strip():
            raise ValueError(f"{settings_env_name('llm_security_model')} must name the classifier's model (as its server "
                             f"knows it, e.g. meta-llama/Llama-Guard-3-8B or llama-guard3) when "
                             f"{settings_env_name('llm_security_url')} is set")
        return self

    @field_validator("openai_url", "anthropic_url")
    @classmethod
    def _base_url(cls, url: str, info: ValidationInfo) -> str:
        check_base_url(f"{settings_env_name(info.field_name)}:", url)
        return url


def base_url_problem(url: str) -> str | None:
    """What makes `url` no base URL the gateway may send requests under, or None. One rule for the deployment's base
    URLs and a caller's Helicone-Target-URL or fallback "target-url": http(s)://host[:port][/path], no query or fragment
    (each request's path follows it), no user:password@ (never sent to the provider, and the base URL is logged with
    every request), a host a resolver reads as written. The text never repeats the URL (it may hold a secret)."""
    try:  # parsed with yarl, as the upstream pool parses the URL it connects to: one reading of the host everywhere
        parsed = URL(url)
    except ValueError as exc:
        return f"is not a valid URL ({exc}); a base URL is http(s)://host[:port][/path]"
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        return "must be an absolute http(s) URL: http(s)://host[:port][/path]"
    if parsed.raw_user or parsed.raw_password:
        return ("must not contain credentials (user:password@): they are never sent to the provider, and the base URL "
                "is logged with every request; send the provider's key as a request header")
    if "?" in url or "#" in url:
        return "must not have a query or fragment: it is a base URL, the request's path and query follow it"
    if noncanonical_ipv4(parsed.raw_host):
        return (f"host {parsed.raw_host[:64]!r} is an IPv4 address in a non-standard form; "
                "write it as four decimal numbers a.b.c.d")
    problem = host_name_problem(parsed.raw_host)
    return f"host {parsed.raw_host[:64]!r} {problem}" if problem else None


def check_base_url(where: str, url: str) -> None:
    """ValueError naming `where` unless `url` is a base URL (base_url_problem)."""
    problem = base_url_problem(url)
    if problem:
        raise ValueError(f"{where} {problem}")


def check_redis_url(url: str) -> None:
    """ValueError unless redis-py reads `url` as written: a '/', '?' or '#' left unencoded in the password ends the host
    part, and the rest of the password became the port (`Port could not be cast to integer value as '<it>'`, printed
    at start-up) or the database. The message never repeats the URL."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsed on access
    except ValueError:
        bad = True
    else:
        bad = "@" not in parts.netloc and "@" in parts.path
    if bad:
        raise ValueError("not a Redis URL as written (redis://[[user]:password@]host[:port][/db], rediss:// for TLS): a port "
                         "that is not a number, or a '/', '?' or '#' in the password that is not percent-encoded "
                         "(%2F, %3F, %23)")


def env_name(field: str) -> str:
    """The environment variable that sets a GatewaySettings field (for error messages); a KeyError
    for a name that is no gateway setting."""
    if field not in GatewaySettings.model_fields:
        raise KeyError(field)
    return settings_env_name(field)
