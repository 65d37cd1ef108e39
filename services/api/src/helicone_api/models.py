"""Request/response shapes of the query API."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class RequestFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: dt.datetime | None = Field(None, description="created at or after (ISO 8601; naive times are UTC)")
    end: dt.datetime | None = Field(None, description="created before")
    model: str | None = None
    provider: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    status: int | None = Field(None, ge=0, le=999)
    properties: dict[str, str] = Field(default_factory=dict, description="every key must equal its value")

    @field_validator("properties")
    @classmethod
    def _few_properties(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > 20:
            raise ValueError("at most 20 property filters")
        return {k.lower(): val for k, val in v.items()}

    @model_validator(mode="after")
    def _range(self) -> RequestFilter:
        if self.start and self.end and utc(self.start) >= utc(self.end):
            raise ValueError("start must be before end")
        return self


class RequestQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filter: RequestFilter = Field(default_factory=RequestFilter)
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=1_000_000)
    sort: Literal["created_at_desc", "created_at_asc", "latency_desc", "cost_desc"] = "created_at_desc"


def utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)
