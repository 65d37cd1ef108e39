"""Per-request webhooks as stored (Postgres `request_webhooks`, migration 9): what the api's
/v1/webhooks routes write and ingest reads to deliver each request it wrote (Helicone's webhooks).

A webhook receives an org's requests that match all its property filters (`{name: value}`, exact),
a `sample_rate` percent of them (0-100), signed with its HMAC key (webhooks.sign_body); with
`include_data` the payload carries the request and response bodies.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

TABLE = "request_webhooks"
COLUMNS = "id, org_id, destination, hmac_key, sample_rate, property_filters, include_data, created_at"
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 0.0, 100.0
MAX_WEBHOOKS_PER_ORG = 100
MAX_PROPERTY_FILTERS = 50
HMAC_KEY_PREFIX = "whsec_"
# An org's webhooks, oldest first ($1: the org id): the api's list and org_webhooks
ORG_WEBHOOKS_SQL = f"SELECT {COLUMNS} FROM {TABLE} WHERE org_id = $1 ORDER BY created_at, id"


@dataclass(frozen=True)
class RequestWebhook:
    id: str
    org_id: str
    destination: str
    hmac_key: str
    sample_rate: float
    property_filters: Mapping[str, str]
    include_data: bool

    @classmethod
    def from_row(cls, row) -> RequestWebhook:
        filters = row["property_filters"]
        return cls(str(row["id"]), str(row["org_id"]), row["destination"], row["hmac_key"], row["sample_rate"],
                   json.loads(filters) if isinstance(filters, str) else dict(filters), row["include_data"])

    def selects(self, properties: Mapping[str, str]) -> bool:
        """Whether a request with these properties is sent: every filter matches, then the sample rate draws."""
        if any(properties.get(name) != value for name, value in self.property_filters.items()):
            return False
        return self.sample_rate >= MAX_SAMPLE_RATE or random.random() * MAX_SAMPLE_RATE < self.sample_rate


async def org_webhooks(pool, org_id: str) -> list[RequestWebhook]:
    """The org's webhooks, oldest first."""
    try:
        org = uuid.UUID(org_id)
    except ValueError:
        return []  # not an org id Postgres could hold: no webhooks
    rows = await pool.fetch(ORG_WEBHOOKS_SQL, org)
    return [RequestWebhook.from_row(r) for r in rows]


async def all_webhooks(pool) -> dict[str, list[RequestWebhook]]:
    """Every org's webhooks (org id -> its webhooks, oldest first): what ingest reads once per interval, one query
    however many orgs write (an org without webhooks, the usual case, costs nothing per event)."""
    rows = await pool.fetch(f"SELECT {COLUMNS} FROM {TABLE} ORDER BY org_id, created_at, id")
    out: dict[str, list[RequestWebhook]] = {}
    for r in rows:
        hook = RequestWebhook.from_row(r)
        out.setdefault(hook.org_id, []).append(hook)
    return out
