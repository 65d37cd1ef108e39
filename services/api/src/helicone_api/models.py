"""Request/response shapes of the query API.

Filter values are checked here, the same for both analytics backends: text must be storable as
UTF-8 (a lone surrogate such as "\\ud800" is refused, naming the field) and times must lie in the
range ClickHouse's DateTime64 covers; anything else is a 422, never a failed query."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

from helicone_core import events
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

# As long as the longest header value the gateway stores (a property value: 4096 characters).
MAX_FILTER_CHARS = 4096
# The range ClickHouse documents for DateTime64 (events.EARLIEST_SECONDS to LATEST_SECONDS, to the millisecond);
# outside it, what a comparison does depends on the version (chDB and a ClickHouse server may disagree), so such
# times are refused.
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
EARLIEST = _EPOCH + dt.timedelta(seconds=events.EARLIEST_SECONDS)
LATEST = _EPOCH + dt.timedelta(seconds=events.LATEST_SECONDS, milliseconds=999)
TIME_RANGE = f"{EARLIEST:%Y-%m-%dT%H:%M:%S}Z and {LATEST:%Y-%m-%dT%H:%M:%S}.999Z"


def _utf8(value):
    """Runs before pydantic's own str check, whose message for this case does not say what is wrong."""
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"must be valid Unicode text: {value[exc.start]!r} at position {exc.start} is a lone surrogate, "
            "which cannot be stored as UTF-8"
        ) from None
    return value


def utf8_text(max_length: int, min_length: int = 0):
    """A str type that must be storable as UTF-8, of at most max_length characters."""
    return Annotated[str, StringConstraints(min_length=min_length, max_length=max_length), BeforeValidator(_utf8)]


FilterText = utf8_text(MAX_FILTER_CHARS)


def _uuid(value):
    """One message for every malformed id (too long, not UTF-8, control characters, ...)."""
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(value)
    except (AttributeError, TypeError, ValueError):
        raise ValueError("must be a UUID such as 6f1b8e6e-3f1a-4c55-9a43-0d8b43e5b5a1") from None


RequestId = Annotated[uuid.UUID, BeforeValidator(_uuid)]


def _ch_range(value: dt.datetime | None, *, round_down: bool = False) -> dt.datetime | None:
    """UTC, rounded up to the millisecond (the stored precision: `>= start` and `< end` keep exactly
    the rows they would with the full value; `> x` and `<= x` do with x rounded down), within the
    range ClickHouse stores."""
    if value is None:
        return None
    try:
        value = utc(value)
        if value.microsecond % 1000:
            value += dt.timedelta(microseconds=(0 if round_down else 1000) - value.microsecond % 1000)
    except OverflowError:
        value = None
    if value is None or not EARLIEST <= value <= LATEST:
        raise ValueError(f"must be between {TIME_RANGE}")
    return value


# Score names: what a caller may call a score (path segment, filter key, JSON key).
SCORE_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
SCORE_NAME_FORM = "1-64 characters of A-Z a-z 0-9 _ . -"
ScoreName = Annotated[str, StringConstraints(pattern=SCORE_NAME_PATTERN)]
# Thumbs up/down is the score of this name, 1 (up) or 0 (down): filtered, returned and deleted like any score.
FEEDBACK_SCORE = "feedback"
def _exact_integer(value: Any) -> Any:
    """Scores are 64-bit floats: an integer they cannot hold exactly (beyond 2**53) is refused, not rounded."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            exact = float(value) == value
        except OverflowError:
            exact = False
        if not exact:
            raise ValueError("an integer this large cannot be stored exactly (scores are 64-bit floats: "
                             "whole numbers up to 2**53 = 9007199254740992)")
    return value


# A finite number (NaN and infinities cannot be compared or averaged); true/false and "1" are not numbers here.
# -0.0 becomes 0.0 (+ 0.0 does that), as ClickHouse's JSON output would drop the sign anyway.
ScoreValue = Annotated[float, BeforeValidator(lambda v: _exact_integer(v)), Field(allow_inf_nan=False, strict=True),
                       AfterValidator(lambda v: v + 0.0)]

# A score filter's bounds and their SQL comparisons.
SCORE_OPERATORS = {"equals": "=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


class ScoreCondition(BaseModel):
    """Requests whose score of this name meets every bound given (a request without it never matches)."""

    model_config = ConfigDict(extra="forbid")

    equals: ScoreValue | None = None
    gt: ScoreValue | None = None
    gte: ScoreValue | None = None
    lt: ScoreValue | None = None
    lte: ScoreValue | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> ScoreCondition:
        if all(getattr(self, op) is None for op in SCORE_OPERATORS):
            raise ValueError(f"give at least one of {', '.join(SCORE_OPERATORS)}")
        return self


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rating: bool = Field(..., strict=True, description="true: thumbs up, false: thumbs down")


class Score(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: ScoreValue = Field(..., description="a finite number")


MAX_SCORES_PER_WRITE = 64
# Helicone's score values: a number, or true/false as 1/0 (ScoreManager.mapScores in Helicone/helicone).
HeliconeScoreValue = Annotated[ScoreValue, BeforeValidator(lambda v: float(v) if isinstance(v, bool) else v),
                               WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "boolean"}]})]


class Scores(BaseModel):
    """Helicone's ScoreRequest (POST /v1/request/{id}/score): several scores of one request in one write."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"scores": {"accuracy": 0.9, "passed": True}}]})

    scores: dict[ScoreName, HeliconeScoreValue] = Field(
        ..., max_length=MAX_SCORES_PER_WRITE,
        description=f"score name -> a finite number, or true/false (stored as 1/0); at most {MAX_SCORES_PER_WRITE}")


class RequestFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: dt.datetime | None = Field(None, description=f"created at or after (ISO 8601; naive times are UTC; between {TIME_RANGE})")
    end: dt.datetime | None = Field(None, description="created before")
    model: FilterText | None = None
    provider: FilterText | None = None
    user_id: FilterText | None = None
    session_id: FilterText | None = None
    region: FilterText | None = Field(None, description="the region whose gateway served the request (HELICONE_REGION)")
    status: int | None = Field(None, ge=0, le=999)
    cache_hit: bool | None = Field(None, description="true: only answers from the gateway's response cache; false: only the others")
    properties: dict[FilterText, FilterText] = Field(default_factory=dict, description="every key must equal its value")
    scores: dict[ScoreName, ScoreCondition] = Field(
        default_factory=dict, description='score name -> bounds, e.g. {"feedback": {"equals": 1}, "accuracy": {"gte": 0.8}}')

    @field_validator("start", "end")
    @classmethod
    def _stored_range(cls, v: dt.datetime | None) -> dt.datetime | None:
        return _ch_range(v)

    @field_validator("properties")
    @classmethod
    def _few_properties(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > 20:
            raise ValueError("at most 20 property filters")
        lowered = {k.lower(): val for k, val in v.items()}
        if len(lowered) < len(v):  # {"Env": "prod", "env": "dev"}: one property, two values (the last one won)
            twice = sorted({k.lower() for k in v if sum(o.lower() == k.lower() for o in v) > 1})
            raise ValueError(f"property {twice[0]!r} is named more than once (names are read in any case)")
        return lowered

    @field_validator("scores")
    @classmethod
    def _few_scores(cls, v: dict[str, ScoreCondition]) -> dict[str, ScoreCondition]:
        if len(v) > 20:
            raise ValueError("at most 20 score filters")
        return v

    @model_validator(mode="after")
    def _range(self) -> RequestFilter:
        if self.start and self.end and self.start >= self.end:
            raise ValueError("start must be before end")
        return self


class Answer(BaseModel):
    """The documented shape of a success answer: closed (`additionalProperties: false`), so that a check of
    real answers against the OpenAPI document (schemathesis, the route tests) fails on a field the code
    answers and the document lacks. Only the schema is closed: a route's own validation is not changed."""

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        out = handler(schema)
        handler.resolve_ref_schema(out)["additionalProperties"] = False
        return out


class HeliconeEnvelope(Answer):
    """The `"error": null` next to `data` of Helicone's Result answers (`{"data": ..., "error": null}`), so that a
    script written against api.helicone.ai that checks `error` reads this api's answers as it reads Helicone's."""

    error: None = Field(description="always null: an error is the api's {\"error\": {...}} with its status")


class _SchemaOf:
    def __init__(self, model: type[BaseModel]) -> None:
        self.model = model

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        model = self.model.__pydantic_core_schema__
        if model["type"] != "definitions":  # as a definition: a named component, never inlined into the route
            model = core_schema.definitions_schema(core_schema.definition_reference_schema(model["ref"]), [model])
        return handler(model)


def documented(model: type[Answer]) -> Any:
    """A route's `response_model` for an answer the route builds as a dict: the OpenAPI document gives
    `model`, while the answer is checked and written exactly as a plain `dict` is (pydantic's JSON writer;
    nothing filtered, coerced or re-validated by `model`, no extra work on large answers). FastAPI's
    `responses={200: {"model": ...}}` would merge `model` into the dict's own open schema instead."""
    return Annotated[dict, _SchemaOf(model)]


def _answer_models() -> list[type[Answer]]:
    out, stack = [], [Answer]
    while stack:
        out += (subclasses := stack.pop().__subclasses__())
        stack += subclasses
    return out


def keep_example_nulls(doc: dict[str, Any]) -> dict[str, Any]:
    """FastAPI writes its OpenAPI document without a single null, the nulls of examples included, so an
    example answer would lack its nullable fields (required ones): each answer model's examples are put
    back into its component as the model gives them."""
    schemas = doc.get("components", {}).get("schemas", {})
    for model in _answer_models():
        extra = model.model_config.get("json_schema_extra")
        schema = schemas.get(model.__name__)
        if isinstance(extra, dict) and "examples" in extra and schema is not None and schema.get("title") == model.__name__:
            schema["examples"] = extra["examples"]
    return doc


class ProblemDetail(BaseModel):
    field: str = Field(description="where: a JSON path into the body (filter.left.request.model), or a path/query parameter")
    message: str


class ErrorInfo(BaseModel):
    type: str
    message: str
    details: list[ProblemDetail] | None = None


class ErrorBody(BaseModel):
    """Every error the api answers: {"error": {"type", "message", "details"?}}."""

    error: ErrorInfo


# The errors any route may answer (guard.py and app.py's handlers), as the OpenAPI documents them.
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "a body that is not JSON, or a query string that is not ASCII"},
    401: {"model": ErrorBody, "description": "no key, or an unknown or revoked key"},
    413: {"model": ErrorBody, "description": "request body over max_body_bytes"},
    422: {"model": ErrorBody, "description": "invalid request: `details` name each field (a JSON path) and what is wrong"},
    431: {"model": ErrorBody, "description": "too many or too large request headers"},
    503: {"model": ErrorBody, "description": "the key store is not loaded yet"},
}


def error_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """A route's own error answers for its OpenAPI `responses` (on top of ERRORS)."""
    return {code: {"model": ErrorBody, "description": text} for code, text in descriptions.items()}


def utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)
