"""Helicone's filter tree, sorts and pagination cursors over `request_log`: the one place that turns a
caller's filter into ClickHouse WHERE conditions (server-side parameters only), for the request
explorer and every other view that filters requests (sessions, users, metrics).

A node is a branch, `{"left": node, "operator": "and" | "or", "right": node}`, or a leaf naming
one table and its fields: `{"request": {"model": {"equals": "gpt-4o"}}}`,
`{"response": {"status": {"gte": 400}}}`, `{"user": {"user_id": {"in": ["a", "b"]}}}`,
`{"session": {"session_name": {"like": "chat%"}}}`, `{"properties": {"env": {"equals": "prod"}}}`,
`{"scores": {"accuracy": {"gte": 0.5}}}`. Several fields (or operators) in one leaf must all hold.
Helicone's own forms are read too: `"all"` (every request) for a whole filter or either side of a branch, and its
clickhouse leaf `{"request_response_rmt": {"latency": {"gt": 500}, "properties": {"env": {"equals": "prod"}}}}`
under Helicone's field names (RMT_FIELDS); a field of it this api does not store is a 422 naming it.
Each field has a type and takes only that type's operators (the fields of TextCondition, FloatCondition, ...);
anything else is a 422 whose `field` is the JSON path of the mistake (`filter.left.request.model`).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationInfo,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)

from .models import (
    SCORE_OPERATORS,
    FilterText,
    RequestFilter,
    RequestId,
    ScoreName,
    _ch_range,
    _utf8,
    utc,
)
from .queries import property_sql, where_sql

MAX_DEPTH = 16  # branch levels: a left-deep chain of 17 leaves, as a UI adding one filter at a time builds
MAX_CONDITIONS = 64  # field conditions in the whole tree (each operator of each field counts once)
MAX_IN = 100  # values in one `in` list
MAX_KEYS = 20  # properties or scores named by one leaf

INT64 = (-(2**63), 2**63 - 1)


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


Float = Annotated[float, BeforeValidator(_no_bool), Field(strict=True, allow_inf_nan=False)]


Time = Annotated[dt.datetime, Field(description="ISO 8601; naive times are UTC")]

# Operators by field type; the SQL each one becomes (`{c}` the column, `{p}` the parameter).
COMPARE = {"equals": "{c} = {p}", "not-equals": "{c} != {p}", "gt": "{c} > {p}", "gte": "{c} >= {p}",
           "lt": "{c} < {p}", "lte": "{c} <= {p}"}
TEXT_SQL = {"equals": COMPARE["equals"], "not-equals": COMPARE["not-equals"], "like": "{c} LIKE {p}",
            "ilike": "{c} ILIKE {p}",
            # in any case, as Helicone's (ILIKE '%text%'), but the text itself: % and _ are not wildcards
            "contains": "positionCaseInsensitiveUTF8({c}, {p}) > 0", "not-contains": "positionCaseInsensitiveUTF8({c}, {p}) = 0"}


_STRICT: dict[str, type[_StrictKeys]] = {}  # model name -> model, for the message about a key it does not take


def _unknown_key(value: Any, info: ValidationInfo) -> Any:
    model = _STRICT.get(info.config.get("title", "") if info.config else "")
    raise ValueError(model.unknown_key() if model else "unknown key")


class _StrictKeys(BaseModel):
    """An unknown key is a 422 at its own path (filter.left.request.modle), saying which keys this object takes."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": False})
    __pydantic_extra__: dict[str, Annotated[Any, BeforeValidator(_unknown_key)]]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        _STRICT[cls.__name__] = cls

    @classmethod
    def unknown_key(cls) -> str:
        return "unknown key"


class _Condition(_StrictKeys):
    """At least one operator; all of those given must hold. `kind` names the field type in messages."""

    kind: ClassVar[str] = "value"

    @classmethod
    def unknown_key(cls) -> str:
        return f"not an operator for {cls.kind}; use {', '.join(cls.operator_names())}"

    @classmethod
    def operator_names(cls) -> list[str]:
        return [cls.model_fields[f].alias or f for f in cls.model_fields]

    @model_validator(mode="before")
    @classmethod
    def _known_operators(cls, value: Any) -> Any:
        ops = ", ".join(cls.operator_names())
        if not isinstance(value, dict):
            raise ValueError(f'must be an object of operator -> value, such as {{"equals": ...}}; operators for {cls.kind}: {ops}')
        if all(v is None for v in value.values()):  # null is the same as absent
            raise ValueError(f"give at least one operator: {ops}")
        return value

    def operators(self) -> list[tuple[str, Any]]:
        return [(self.model_fields[f].alias or f, v) for f in self.model_fields if (v := getattr(self, f)) is not None]


def _in_list():
    return Field(None, alias="in", min_length=1, max_length=MAX_IN, description=f"any of 1-{MAX_IN} values")


class TextCondition(_Condition):
    """Text: like/ilike take SQL LIKE patterns (% any run, _ one character, \\ escapes); contains and not-contains
    test a substring in any case (as Helicone's do)."""

    kind: ClassVar[str] = "text"
    equals: FilterText | None = None
    not_equals: FilterText | None = Field(None, alias="not-equals")
    like: FilterText | None = None
    ilike: FilterText | None = None
    contains: FilterText | None = None
    not_contains: FilterText | None = Field(None, alias="not-contains")
    in_: list[FilterText] | None = _in_list()

    @field_validator("like", "ilike")
    @classmethod
    def _complete_escapes(cls, v: str | None) -> str | None:
        # ClickHouse fails the whole query on a pattern whose last backslash escapes nothing
        if v is not None and (len(v) - len(v.rstrip("\\"))) % 2:
            raise ValueError("ends in a lone backslash, which escapes nothing: write \\\\ for a backslash itself")
        return v


class IdCondition(_Condition):
    kind: ClassVar[str] = "a request id"
    equals: RequestId | None = None
    not_equals: RequestId | None = Field(None, alias="not-equals")
    in_: list[RequestId] | None = _in_list()


class BoolCondition(_Condition):
    kind: ClassVar[str] = "true/false"
    equals: bool | None = Field(None, strict=True)
    not_equals: bool | None = Field(None, alias="not-equals", strict=True)


class TimeCondition(_Condition):
    kind: ClassVar[str] = "a time"
    equals: Time | None = None
    not_equals: Time | None = Field(None, alias="not-equals")
    gt: Time | None = None
    gte: Time | None = None
    lt: Time | None = None
    lte: Time | None = None

    @field_validator("*")
    @classmethod
    def _stored_range(cls, v, info: ValidationInfo):
        if info.field_name in ("equals", "not_equals") and v is not None and v.microsecond % 1000:
            raise ValueError("times are stored to the millisecond: give at most 3 decimals of a second")
        return _ch_range(v, round_down=info.field_name in ("gt", "lte"))


class FloatCondition(_Condition):
    """A finite number."""

    kind: ClassVar[str] = "a number"

    equals: Float | None = None
    not_equals: Float | None = Field(None, alias="not-equals")
    gt: Float | None = None
    gte: Float | None = None
    lt: Float | None = None
    lte: Float | None = None
    in_: list[Float] | None = _in_list()


def _int_condition(name: str, lo: int, hi: int) -> type[_Condition]:
    """An integer condition whose values must lie in [lo, hi] (the column's range, or the field's)."""
    value = Annotated[int, BeforeValidator(_no_bool), Field(strict=True, ge=lo, le=hi)]
    fields: dict[str, Any] = {op: (value | None, None) for op in ("equals", "gt", "gte", "lt", "lte")}
    fields["not_equals"] = (value | None, Field(None, alias="not-equals"))
    fields["in_"] = (list[value] | None, _in_list())
    model = create_model(name, __base__=_Condition, __doc__=f"An integer from {lo} to {hi}.", **fields)
    model.kind = "an integer"
    return model


StatusCondition = _int_condition("StatusCondition", 0, 999)
CountCondition = _int_condition("CountCondition", 0, INT64[1])  # UInt32/UInt64 columns: ms, tokens, versions
SignedCondition = _int_condition("SignedCondition", *INT64)


@dataclass(frozen=True)
class Column:
    sql: str
    ch_type: str
    condition: type[_Condition]
    known: str = ""  # SQL that holds when the stored value is real: the answer shows null otherwise, and no condition matches


_TEXT, _TIME = "String", "DateTime64(3, 'UTC')"
# leaf table -> field -> column. The only fields a filter may name.
TABLES: dict[str, dict[str, Column]] = {
    "request": {
        "request_id": Column("request_id", "UUID", IdCondition),
        "created_at": Column("request_created_at", _TIME, TimeCondition),
        "model": Column("model", _TEXT, TextCondition),
        "provider": Column("provider", _TEXT, TextCondition),
        "method": Column("method", _TEXT, TextCondition),
        "path": Column("path", _TEXT, TextCondition),
        "target_url": Column("target_url", _TEXT, TextCondition),
        "user_id": Column("user_id", _TEXT, TextCondition),
        "region": Column("region", _TEXT, TextCondition),
        "source": Column("source", _TEXT, TextCondition),
        "prompt_id": Column("prompt_id", _TEXT, TextCondition),
        "prompt_version": Column("prompt_version", "Int64", CountCondition),
        "cache_hit": Column("cache_hit", "UInt8", BoolCondition),
        "streamed": Column("streamed", "UInt8", BoolCondition),
    },
    "response": {
        "status": Column("status", "Int64", StatusCondition),
        "created_at": Column("response_created_at", _TIME, TimeCondition),
        "latency_ms": Column("latency_ms", "Int64", CountCondition),
        "time_to_first_token_ms": Column("time_to_first_token_ms", "Int64", SignedCondition, known="time_to_first_token_ms >= 0"),
        "cost_usd": Column("cost_usd", "Float64", FloatCondition, known="cost_known = 1"),
        "prompt_tokens": Column("prompt_tokens", "Int64", CountCondition),
        "completion_tokens": Column("completion_tokens", "Int64", CountCondition),
        "total_tokens": Column("total_tokens", "Int64", CountCondition),
        "cache_read_tokens": Column("cache_read_tokens", "Int64", CountCondition),
        "cache_write_tokens": Column("cache_write_tokens", "Int64", CountCondition),
        "error": Column("error", _TEXT, TextCondition),
    },
    "user": {"user_id": Column("user_id", _TEXT, TextCondition)},
    "session": {
        "session_id": Column("session_id", _TEXT, TextCondition),
        "session_path": Column("session_path", _TEXT, TextCondition),
        "session_name": Column("session_name", _TEXT, TextCondition),
    },
}


HELICONE_RMT = "request_response_rmt"
# Helicone's clickhouse leaf (packages/filters/filterDefs.ts in Helicone/helicone): its field -> our column, for
# the fields this api stores; its `properties` are read as ours.
RMT_FIELDS: dict[str, Column] = {
    "request_id": TABLES["request"]["request_id"],
    "request_created_at": TABLES["request"]["created_at"],
    "response_created_at": TABLES["response"]["created_at"],
    **{name: TABLES["request"][name] for name in ("model", "provider", "user_id", "target_url", "prompt_id")},
    "status": TABLES["response"]["status"],
    "latency": TABLES["response"]["latency_ms"],
    "time_to_first_token": TABLES["response"]["time_to_first_token_ms"],
    **{name: TABLES["response"][name] for name in ("prompt_tokens", "completion_tokens", "total_tokens")},
    "prompt_cache_read_tokens": TABLES["response"]["cache_read_tokens"],
    "prompt_cache_write_tokens": TABLES["response"]["cache_write_tokens"],
}
LEAF_COLUMNS: dict[str, dict[str, Column]] = {**TABLES, HELICONE_RMT: RMT_FIELDS}


class _Fields(_StrictKeys):
    """Conditions on one table's fields; all must hold."""

    table: ClassVar[str] = ""

    @classmethod
    def field_names(cls) -> list[str]:
        return [cls.model_fields[f].alias or f for f in cls.model_fields]

    @classmethod
    def unknown_key(cls) -> str:
        return f"not a {cls.table} field; use {', '.join(cls.field_names())}"

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, value: Any) -> Any:
        names = ", ".join(cls.field_names())
        if not isinstance(value, dict):
            raise ValueError(f"must be an object of field -> condition; {cls.table} fields: {names}")
        if all(v is None for v in value.values()):  # null is the same as absent
            raise ValueError(f"name at least one {cls.table} field: {names}")
        return value


PropertyKey = Annotated[str, StringConstraints(min_length=1, max_length=256), BeforeValidator(_utf8)]


def _properties_field(text: str) -> Any:
    return Field(None, min_length=1, max_length=MAX_KEYS, description=f"{text} (names in any case; a request without it has ''); 1-{MAX_KEYS}")


def _table_model(table: str, name: str, **more: Any) -> type[_Fields]:
    fields = {field: (col.condition | None, None) for field, col in LEAF_COLUMNS[table].items()}
    model = create_model(name, __base__=_Fields, __doc__=f"Conditions on the {table}'s fields; all must hold.", **fields, **more)
    model.table = table
    return model


RequestFields, ResponseFields, UserFields, SessionFields = (_table_model(t, f"{t.capitalize()}Fields") for t in ("request", "response", "user", "session"))
RequestResponseRmtFields = _table_model(
    HELICONE_RMT, "RequestResponseRmtFields",
    properties=(dict[PropertyKey, TextCondition] | None, _properties_field("Helicone's property name -> condition on its value")))
LEAVES = (*TABLES, "properties", "scores")
ALL = "all"  # Helicone's filter of every request, for a whole filter or either side of a branch
BRANCH = ("left", "operator", "right")

EXAMPLE_TREE = {
    "left": {"request": {"model": {"in": ["gpt-4o", "gpt-4o-mini"]}}},
    "operator": "and",
    "right": {
        "left": {"response": {"status": {"gte": 400}}},
        "operator": "or",
        "right": {"scores": {"accuracy": {"lt": 0.5}}},
    },
}


def _shape(value: Any, path: str = "") -> tuple[int, int, str]:
    """(branch depth, condition count, path of the deepest branch) of a raw tree, walked without recursion."""
    depth, count, deepest = 0, 0, ""
    stack = [(value, 0, path)]
    while stack:
        node, level, where = stack.pop()
        if not isinstance(node, dict):
            continue
        if any(k in node for k in BRANCH):
            if level + 1 > depth:
                depth, deepest = level + 1, where
            if level + 1 > MAX_DEPTH:  # no need to walk further: it is refused
                return depth, count, deepest
            for side in ("left", "right"):
                stack.append((node.get(side), level + 1, f"{where}.{side}".lstrip(".")))
            continue
        for leaf in (*LEAVES, HELICONE_RMT):
            fields = node.get(leaf)
            if isinstance(fields, dict):
                count += sum(len(c) if isinstance(c, dict) else 1 for c in fields.values())
        if count > MAX_CONDITIONS:  # refused already: a wide tree is not walked to the end
            break
    return depth, count, deepest


class FilterNode(_StrictKeys):
    """A branch (`left`, `operator`, `right`) or a leaf (exactly one of request, response, user, session, properties, scores,
    or Helicone's request_response_rmt); "all" (every request) in place of a node."""

    model_config = ConfigDict(json_schema_extra={"additionalProperties": False, "examples": [EXAMPLE_TREE]})

    @classmethod
    def unknown_key(cls) -> str:
        return f"not a filter key: a node is {{{', '.join(BRANCH)}}} or one of {', '.join(LEAVES)}"

    left: FilterNode | None = None
    operator: Literal["and", "or"] | None = None
    right: FilterNode | None = None
    request: RequestFields | None = None  # type: ignore[valid-type]
    response: ResponseFields | None = None  # type: ignore[valid-type]
    user: UserFields | None = None  # type: ignore[valid-type]
    session: SessionFields | None = None  # type: ignore[valid-type]
    request_response_rmt: RequestResponseRmtFields | None = Field(  # type: ignore[valid-type]
        None, description="Helicone's clickhouse leaf under its own field names")
    properties: dict[PropertyKey, TextCondition] | None = _properties_field("property name -> condition on its value")
    everything: Literal[True] | None = Field(None, alias=ALL, description='every request: what "all" in place of a node reads as')
    scores: dict[ScoreName, FloatCondition] | None = Field(
        None, min_length=1, max_length=MAX_KEYS, description=f"score name -> condition on its value (a request without that score never matches); 1-{MAX_KEYS}")

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        if value == ALL:
            return {ALL: True}
        if not isinstance(value, dict):
            raise ValueError('must be an object, {"left", "operator", "right"} or a leaf such as {"request": {...}}, or "all"')
        depth, count, deepest = _shape(value)
        if depth > MAX_DEPTH:
            raise ValueError(f"the tree is nested deeper than {MAX_DEPTH} levels (down to {deepest or 'this node'})")
        if count > MAX_CONDITIONS:
            raise ValueError(f"the tree has {count} conditions; at most {MAX_CONDITIONS}")
        return value

    @model_validator(mode="after")
    def _branch_or_leaf(self) -> FilterNode:
        branch = [k for k in BRANCH if getattr(self, k) is not None]
        leaves = [k for k in (*LEAVES, HELICONE_RMT) if getattr(self, k) is not None] + [ALL] * (self.everything is not None)
        if branch:
            missing = [k for k in BRANCH if k not in branch]
            if missing or leaves:
                raise ValueError("a branch has exactly left, operator and right"
                                 + (f" (missing {', '.join(missing)})" if missing else f" (not {', '.join(leaves)})"))
            return self
        if len(leaves) != 1:
            raise ValueError(f"a leaf names exactly one of {', '.join(LEAVES)}" + (f" (got {', '.join(leaves)})" if leaves else ""))
        return self


FilterNode.model_rebuild()


class _Params:
    """Names each parameter uniquely (f0, f1, ...) within one query."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def add(self, value: Any, ch_type: str) -> str:
        name = f"f{len(self.params)}"
        self.params[name] = value
        return f"{{{name}:{ch_type}}}"


def _value(value: Any, ch_type: str) -> Any:
    if isinstance(value, dt.datetime):
        return ch_time(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _condition_sql(column: str, ch_type: str, cond: _Condition, p: _Params) -> list[str]:
    out = []
    for op, value in cond.operators():
        if op == "in":
            out.append(f"{column} IN ({', '.join(p.add(_value(v, ch_type), ch_type) for v in value)})")
        else:
            template = TEXT_SQL.get(op) if ch_type == _TEXT else COMPARE[op]
            out.append(template.format(c=column, p=p.add(_value(value, ch_type), ch_type)))
    return out


def _leaf_sql(node: FilterNode, p: _Params) -> str:
    if node.everything:
        return "1"
    parts: list[str] = []
    for table, columns in LEAF_COLUMNS.items():
        fields = getattr(node, table)
        if fields is None:
            continue
        for name, col in columns.items():
            cond = getattr(fields, name)
            if cond is not None:
                parts += [col.known] if col.known else []
                parts += _condition_sql(col.sql, col.ch_type, cond, p)
    properties = node.properties if node.request_response_rmt is None else node.request_response_rmt.properties
    if properties is not None:
        for key, cond in sorted(properties.items()):
            parts += _condition_sql(property_sql(p.add(key.lower(), _TEXT)), _TEXT, cond, p)
    if node.scores is not None:
        for name, cond in sorted(node.scores.items()):
            tests = _condition_sql("value", "Float64", cond, p)
            # after FINAL (the newest write of each score), so a replaced or deleted value never matches
            parts.append(
                "request_id IN (SELECT request_id FROM {db}.request_scores FINAL WHERE org_id = {org:String} "
                f"AND name = {p.add(name, _TEXT)} AND deleted = 0 AND {' AND '.join(tests)})"
            )
    return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"


def _node_sql(node: FilterNode, p: _Params) -> str:
    if node.operator is None:
        return _leaf_sql(node, p)
    joiner = " AND " if node.operator == "and" else " OR "
    return "(" + _node_sql(node.left, p) + joiner + _node_sql(node.right, p) + ")"


def filter_sql(org_id: str, node: FilterNode | RequestFilter | None) -> tuple[list[str], dict[str, Any]]:
    """The caller's org and the filter (a tree, or the flat RequestFilter) as WHERE conditions over
    request_log (to be joined with AND) and their parameters (`org` and f0, f1, ...). Every value
    travels as a server-side parameter, never in the SQL text."""
    if isinstance(node, RequestFilter):
        return where_sql(org_id, node)
    where = ["org_id = {org:String}"]
    params: dict[str, Any] = {"org": org_id}
    if node is not None:
        where.append(_node_sql(node, _Params(params)))
    return where, params


# The tags of the two forms of a filter in a request body; app.py leaves them out of an error's field path.
FLAT, TREE = "flat", "tree"
FILTER_FORMS = (FLAT, TREE)


def _filter_form(value: Any) -> str:
    """The tree when the object uses anything only the tree has; the flat form otherwise ({} included)."""
    if isinstance(value, FilterNode):
        return TREE
    if not isinstance(value, dict):
        return FLAT
    if any(k in value for k in (*BRANCH, *LEAF_COLUMNS, ALL)):
        return TREE
    props, scores = value.get("properties"), value.get("scores")
    if isinstance(props, dict) and any(isinstance(v, dict) for v in props.values()):
        return TREE
    tree_score_ops = set(FloatCondition.operator_names()) - set(SCORE_OPERATORS)
    if isinstance(scores, dict) and any(isinstance(c, dict) and set(c) & tree_score_ops for c in scores.values()):
        return TREE
    return FLAT


def _all_is_every_request(value: Any) -> Any:
    """Helicone's `"filter": "all"`: the flat filter that names nothing."""
    if isinstance(value, str):
        if value != ALL:
            raise ValueError('must be "all" (every request) or a filter object')
        return {}
    return value


# A request body's `filter`: "all", the flat RequestFilter or the tree, told apart by _filter_form.
AnyFilter = Annotated[
    Annotated[RequestFilter, Tag(FLAT)] | Annotated[FilterNode, Tag(TREE)],
    Discriminator(_filter_form),
    BeforeValidator(_all_is_every_request),
    Field(description='"all", the flat filter (every field given must match) or a filter tree (see FilterNode)'),
]


def narrowed(f: RequestFilter | FilterNode, flat: dict[str, Any], request: dict[str, Any]) -> RequestFilter | FilterNode:
    """`f` with one more condition: a flat filter gets the fields `flat` (it stays flat, and keeps its fast
    paths), a tree the request leaf `request` ANDed in."""
    if isinstance(f, RequestFilter):
        return f.model_copy(update=flat)
    return FilterNode(left=f, operator="and", right=FilterNode(request=request))

def ch_time(value: dt.datetime) -> str:
    return utc(value).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


# ---- sorting -------------------------------------------------------------------------------------

# sort field -> (column, parameter type of its cursor value)
SORT_COLUMNS: dict[str, tuple[str, str]] = {
    "created_at": ("request_created_at", _TIME),
    "response_created_at": ("response_created_at", _TIME),
    "latency_ms": ("latency_ms", "Int64"),
    "time_to_first_token_ms": ("time_to_first_token_ms", "Int64"),
    "status": ("status", "Int64"),
    "cost_usd": ("cost_usd", "Float64"),
    "prompt_tokens": ("prompt_tokens", "UInt64"),
    "completion_tokens": ("completion_tokens", "UInt64"),
    "total_tokens": ("total_tokens", "UInt64"),
    "model": ("model", _TEXT),
    "provider": ("provider", _TEXT),
    "user_id": ("user_id", _TEXT),
    "session_id": ("session_id", _TEXT),
    "region": ("region", _TEXT),
    "prompt_id": ("prompt_id", _TEXT),
}
# sort field -> (SQL, and the test of a row read) for its value being known: the answer shows null otherwise, and such
# rows sort after every known one in either direction (NULLS LAST), among themselves by request id.
SORT_KNOWN: dict[str, tuple[str, Callable[[dict[str, Any]], bool]]] = {
    "time_to_first_token_ms": (TABLES["response"]["time_to_first_token_ms"].known, lambda row: int(row["time_to_first_token_ms"]) >= 0),
    "cost_usd": (TABLES["response"]["cost_usd"].known, lambda row: bool(int(row["cost_known"]))),
}
# The sorts /v1/request/query has always taken, as (field, direction).
LEGACY_SORTS = {
    "created_at_desc": ("created_at", "desc"),
    "created_at_asc": ("created_at", "asc"),
    "latency_desc": ("latency_ms", "desc"),
    "cost_desc": ("cost_usd", "desc"),
}


class Sort(BaseModel):
    """Rows ordered by `field`, then by request id (ascending), so that the order is total; a cost or time to first
    token the answer shows as null (unknown) sorts last either way."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"field": "latency_ms", "direction": "desc"}]})

    field: Literal[tuple(SORT_COLUMNS)]  # type: ignore[valid-type]
    direction: Literal["asc", "desc"] = "desc"


# Helicone's sort object, {"created_at": "desc"} (SortLeafRequest in Helicone/helicone's sorts.ts): its field -> ours,
# for the ones this api can sort on.
HELICONE_SORTS = {"created_at": "created_at", "latency": "latency_ms", "total_tokens": "total_tokens",
                  "completion_tokens": "completion_tokens", "prompt_tokens": "prompt_tokens", "user_id": "user_id",
                  "body_model": "model"}


def _helicone_sort(value: dict[str, Any]) -> dict[str, Any]:
    if not value:  # Helicone sorts newest first when its sort names nothing
        return {"field": "created_at", "direction": "desc"}
    if len(value) > 1:
        raise ValueError(f"Helicone's sort object names one field ({', '.join(HELICONE_SORTS)}), not {len(value)}")
    [(name, direction)] = value.items()
    if name not in HELICONE_SORTS:
        raise ValueError(f"cannot sort on Helicone's {name!r}: its sort object takes {', '.join(HELICONE_SORTS)} here; "
                         f'or give {{"field": ..., "direction": ...}} (fields: {", ".join(SORT_COLUMNS)})')
    if direction not in ("asc", "desc"):
        raise ValueError(f'{name} must be "asc" or "desc"')
    return {"field": HELICONE_SORTS[name], "direction": direction}


def _legacy_sort(value: Any) -> Any:
    if isinstance(value, dict) and "field" not in value and "direction" not in value:
        return _helicone_sort(value)
    if isinstance(value, str):
        if value not in LEGACY_SORTS:
            raise ValueError(f'must be one of {", ".join(LEGACY_SORTS)} or {{"field": ..., "direction": "asc" | "desc"}} '
                             f'(fields: {", ".join(SORT_COLUMNS)})')
        field, direction = LEGACY_SORTS[value]
        return {"field": field, "direction": direction}
    return value


SortSpec = Annotated[
    Sort,
    BeforeValidator(_legacy_sort),
    WithJsonSchema({"anyOf": [{"type": "string", "enum": list(LEGACY_SORTS)}, Sort.model_json_schema(),
                              {"type": "object", "maxProperties": 1, "description": "Helicone's sort object",
                               "properties": {f: {"enum": ["asc", "desc"]} for f in HELICONE_SORTS}, "additionalProperties": False}],
                    "description": '"created_at_desc", "created_at_asc", "latency_desc", "cost_desc", {"field", "direction"}, '
                                   'or Helicone\'s {"created_at": "desc"}'}),
]


def order_sql(sort: Sort) -> str:
    column = SORT_COLUMNS[sort.field][0]
    if sort.field in SORT_KNOWN:
        known = SORT_KNOWN[sort.field][0]
        return f"({known}) DESC, if({known}, {column}, 0) {sort.direction.upper()}, request_id ASC"
    return f"{column} {sort.direction.upper()}, request_id ASC"


def after_sql(sort: Sort, value: Any, request_id: str, params: dict[str, Any]) -> str:
    """Rows after (value, request_id) in the sort's order: the keyset condition of a cursor (value None: the
    row's value is unknown, so only unknown ones with a greater id follow)."""
    column, ch_type = SORT_COLUMNS[sort.field]
    known = SORT_KNOWN[sort.field][0] if sort.field in SORT_KNOWN else None
    params["cursor_id"] = request_id
    if known and value is None:
        return f"(NOT ({known}) AND request_id > {{cursor_id:UUID}})"
    params["cursor_value"] = value
    beyond = "<" if sort.direction == "desc" else ">"
    v = f"{{cursor_value:{ch_type}}}"
    after = f"({column} {beyond} {v} OR ({column} = {v} AND request_id > {{cursor_id:UUID}}))"
    return f"(({known}) AND {after} OR NOT ({known}))" if known else after


# ---- cursors -------------------------------------------------------------------------------------


class CursorError(ValueError):
    pass


MAX_CURSOR_CHARS = 2048
CursorText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_CURSOR_CHARS, pattern=r"^[A-Za-z0-9_.-]+$")]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def query_digest(filter_: BaseModel | None, sort: Sort) -> str:
    """What a cursor belongs to: the filter and the sort (a cursor of another query is refused)."""
    shape = {"f": filter_.model_dump(mode="json", by_alias=True, exclude_none=True) if filter_ is not None else None,
             "s": [sort.field, sort.direction]}
    return hashlib.sha256(json.dumps(shape, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


class CursorCodec:
    """Opaque cursors: base64url JSON of the last row's sort value and request id, signed with HMAC-SHA256
    over the caller's org and the query's digest, so a changed, truncated or foreign cursor is a 422."""

    def __init__(self, key: bytes) -> None:
        self._key = hashlib.sha256(b"helicone-api-cursor-v1\0" + key).digest()

    def _mac(self, org_id: str, digest: str, payload: bytes) -> bytes:
        return hmac.new(self._key, org_id.encode() + b"\0" + digest.encode() + b"\0" + payload, hashlib.sha256).digest()[:16]

    def encode(self, org_id: str, digest: str, value: Any, request_id: str) -> str:
        payload = json.dumps([value, request_id], separators=(",", ":")).encode()
        return _b64(payload) + "." + _b64(self._mac(org_id, digest, payload))

    def decode(self, org_id: str, digest: str, sort: Sort, cursor: str) -> tuple[Any, str]:
        try:
            body, mac = cursor.split(".")
            payload, mac_bytes = _unb64(body), _unb64(mac)
        except (ValueError, TypeError):
            raise CursorError("is not a cursor this api returned") from None
        if not hmac.compare_digest(mac_bytes, self._mac(org_id, digest, payload)):
            raise CursorError("does not belong to this query: pass the next_cursor of the same filter and sort, unchanged")
        try:
            value, request_id = json.loads(payload)
            request_id = str(uuid.UUID(request_id))
        except (ValueError, TypeError):
            raise CursorError("is not a cursor this api returned") from None
        ch_type = SORT_COLUMNS[sort.field][1]
        if value is None and sort.field in SORT_KNOWN:
            return value, request_id
        if ch_type in (_TEXT, _TIME) and not isinstance(value, str) or ch_type.endswith("Int64") and not isinstance(value, int) \
                or ch_type == "Float64" and not isinstance(value, (int, float)) or isinstance(value, bool):
            raise CursorError("is not a cursor this api returned")
        return value, request_id


def sort_value(row: dict[str, Any], sort: Sort) -> Any:
    """The last row's value of the sort column, as its cursor carries it (None: unknown)."""
    if sort.field in SORT_KNOWN and not SORT_KNOWN[sort.field][1](row):
        return None
    return row[SORT_COLUMNS[sort.field][0]]
