"""SQL over the request_log, request_scores and request_property_overrides tables. Same text on chDB and ClickHouse
(server-side parameters)."""

from __future__ import annotations

import base64
import codecs
import json
from typing import Any

import pydantic_core
from helicone_core.analytics import ERROR_CONDITION

from .models import FEEDBACK_SCORE, SCORE_OPERATORS, RequestFilter, utc

COLUMNS = """
    request_id, request_created_at, response_created_at, latency_ms,
    time_to_first_token_ms, status, provider, model, method, path, target_url, user_id, session_id,
    session_path, session_name, properties, prompt_tokens, completion_tokens, total_tokens,
    cache_read_tokens, cache_write_tokens, usage_known, cost_usd, cost_known, streamed,
    request_body_key, response_body_key, request_bytes, response_bytes, request_content_type,
    response_content_type, body_truncated, error, source, region, prompt_id, prompt_version, prompt_inputs,
    cache_hit, cache_saved_usd, attempts, fallback_index
"""
SETTINGS = "SETTINGS output_format_json_quote_64bit_integers = 0"


def _ch_time(value) -> str:
    return utc(value).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def detail_sql(org_id: str, request_id: str) -> tuple[str, dict[str, Any]]:
    """(org, request id) is the table's identity: FINAL leaves one row, the newest request with
    that id in this org; another org's request with the same id is never read."""
    sql = (
        f"SELECT {COLUMNS} FROM {{db}}.request_log FINAL "
        "WHERE org_id = {org:String} AND request_id = {rid:UUID} LIMIT 1 " + SETTINGS
    )
    return sql, {"org": org_id, "rid": request_id}


def _put_values(key: str) -> str:
    """The (request id, value) pairs put on the org's requests under one property key (PUT
    /v1/request/{id}/property), newest write of each: sorted, so every copy of it in a query is the same array."""
    return ("(SELECT arraySort(groupArray((request_id, value))) FROM {db}.request_property_overrides FINAL "
            f"WHERE org_id = {{org:String}} AND key = {key})")


def property_sql(key: str) -> str:
    """The value of the custom property named by the parameter `key` (such as '{f0:String}', the name in lower
    case) as the request's answer shows it: the value put on the request when there is one, else the logged one
    ('' without either). The one expression every filter, grouping and breakdown of a property reads, on
    request_log's rows and with the {org:String} parameter. The puts are read once per query (a scalar
    subquery); none (the usual case): ClickHouse folds the `if` to the logged value, at no cost per row;
    otherwise transform looks each row's id up in a hash table of them."""
    puts = _put_values(key)
    logged = f"properties[{key}]"
    return f"if(empty({puts}), {logged}, transform(request_id, arrayMap(p -> p.1, {puts}), arrayMap(p -> p.2, {puts}), {logged}))"


def has_property_sql(key: str) -> str:
    """Whether the request has the property named by the parameter `key`, logged or put on it."""
    return (f"(mapContains(properties, {key}) OR request_id IN (SELECT request_id FROM {{db}}.request_property_overrides "
            f"WHERE org_id = {{org:String}} AND key = {key}))")


def where_sql(org_id: str, f: RequestFilter) -> tuple[list[str], dict[str, Any]]:
    """The flat filter as WHERE conditions (joined with AND) and their parameters (the tree: filters.filter_sql)."""
    where = ["org_id = {org:String}"]
    params: dict[str, Any] = {"org": org_id}
    if f.start:
        where.append("request_created_at >= {start:DateTime64(3, 'UTC')}")
        params["start"] = _ch_time(f.start)
    if f.end:
        where.append("request_created_at < {end:DateTime64(3, 'UTC')}")
        params["end"] = _ch_time(f.end)
    for name in ("model", "provider", "user_id", "session_id", "region"):
        value = getattr(f, name)
        if value is not None:
            where.append(f"{name} = {{{name}:String}}")
            params[name] = value
    if f.cache_hit is not None:
        where.append("cache_hit = {cache_hit:UInt8}")
        params["cache_hit"] = int(f.cache_hit)
    if f.status is not None:
        where.append("status = {status:Int32}")
        params["status"] = f.status
    for i, (key, value) in enumerate(sorted(f.properties.items())):
        where.append(f"{property_sql(f'{{pk{i}:String}}')} = {{pv{i}:String}}")
        params[f"pk{i}"] = key
        params[f"pv{i}"] = value
    for i, (name, bounds) in enumerate(sorted(f.scores.items())):
        tests = []
        for op, sign in SCORE_OPERATORS.items():
            if getattr(bounds, op) is not None:
                tests.append(f"value {sign} {{s{i}_{op}:Float64}}")
                params[f"s{i}_{op}"] = getattr(bounds, op)
        # after FINAL (the newest write of each score), so a replaced or deleted value never matches
        where.append(
            "request_id IN (SELECT request_id FROM {db}.request_scores FINAL WHERE org_id = {org:String} "
            f"AND name = {{sn{i}:String}} AND deleted = 0 AND {' AND '.join(tests)})"
        )
        params[f"sn{i}"] = name
    return where, params


def _iso(ch_time: str) -> str:
    return ch_time.replace(" ", "T") + "Z" if ch_time and "T" not in ch_time else ch_time


def row_to_json(row: dict[str, Any], scores: dict[str, float] | None = None,
                put: dict[str, str] | None = None) -> dict[str, Any]:
    """A request_log row in the api's shape, with its scores (score name -> value; empty: none) and the
    properties put on it after it was logged (name -> value, over the logged ones; see properties.py), and
    Helicone's names of its fields next to the api's (helicone_request_json)."""
    out = {
        "request_id": row["request_id"],
        "created_at": _iso(row["request_created_at"]),
        "response_created_at": _iso(row["response_created_at"]),
        "latency_ms": int(row["latency_ms"]),
        "time_to_first_token_ms": int(row["time_to_first_token_ms"]) if int(row["time_to_first_token_ms"]) >= 0 else None,
        "status": int(row["status"]),
        "provider": row["provider"],
        "model": row["model"],
        "method": row["method"],
        "path": row["path"],
        "target_url": row["target_url"],
        "user_id": row["user_id"] or None,
        "session": (
            {"id": row["session_id"], "path": row["session_path"] or None, "name": row["session_name"] or None}
            if row["session_id"] else None
        ),
        "properties": {**row["properties"], **put} if put else row["properties"],
        "usage": {
            "prompt_tokens": int(row["prompt_tokens"]),
            "completion_tokens": int(row["completion_tokens"]),
            "total_tokens": int(row["total_tokens"]),
            "cache_read_tokens": int(row["cache_read_tokens"]),
            "cache_write_tokens": int(row["cache_write_tokens"]),
            "known": bool(row["usage_known"]),
        },
        "cost_usd": float(row["cost_usd"]) if row["cost_known"] else None,
        "streamed": bool(row["streamed"]),
        "request_bytes": int(row["request_bytes"]),
        "response_bytes": int(row["response_bytes"]),
        "body_truncated": bool(row["body_truncated"]),
        "error": row["error"] or None,
        "source": row["source"],
        "region": row["region"] or None,
        "prompt": (
            {"id": row["prompt_id"], "version": int(row["prompt_version"]), "inputs": json.loads(row["prompt_inputs"] or "{}")}
            if row["prompt_id"] else None
        ),
        # answered from the gateway's response cache: cost_usd is 0, cache_saved_usd what the provider would have charged
        "cache_hit": bool(row["cache_hit"]),
        "cache_saved_usd": float(row["cache_saved_usd"]) if row["cache_hit"] and row["cost_known"] else None,
        # every upstream try when the request asked for retries or fallbacks ([] otherwise), and the
        # Helicone-Fallbacks target that answered (0 = the primary)
        "attempts": json.loads(row["attempts"]) if row["attempts"] else [],
        "fallback_index": int(row["fallback_index"]),
        "scores": scores or {},
    }
    out.update(helicone_request_json(out))
    return out


def helicone_request_json(row: dict[str, Any]) -> dict[str, Any]:
    """Helicone's HeliconeRequest fields (Helicone/helicone packages/llm-mapper/types.ts, as its POST /v1/request/query
    answers them) that a row_to_json row lacks, from that row: the same values under Helicone's names, and Helicone's
    empty value for what this api does not record (no separate response id, Helicone's internal key user, model
    override flag, country, assets, signed body URL, parsed llmSchema, cached-from request id, update time); the
    bodies are null but in GET /v1/request/{id}, which reads them. Fields both have (request_id, response_created_at,
    provider, model, target_url, properties, scores) are the row's own."""
    usage, prompt, feedback = row["usage"], row["prompt"], row["scores"].get(FEEDBACK_SCORE)
    return {
        "response_id": None,
        "response_body": None,
        "response_status": row["status"],
        "response_model": row["model"],  # one model per request: the answer's, else the path's or the request's
        "request_created_at": row["created_at"],
        "request_body": None,
        "request_path": row["path"],
        "request_user_id": row["user_id"],
        "request_properties": row["properties"],
        "request_model": row["model"],
        "model_override": None,
        "helicone_user": None,
        "delay_ms": row["latency_ms"],
        "time_to_first_token": row["time_to_first_token_ms"],
        "total_tokens": usage["total_tokens"],
        "prompt_tokens": usage["prompt_tokens"],
        "prompt_cache_write_tokens": usage["cache_write_tokens"],
        "prompt_cache_read_tokens": usage["cache_read_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "prompt_audio_tokens": None,
        "completion_audio_tokens": None,
        "cost": row["cost_usd"],
        "costUSD": row["cost_usd"],
        "prompt_id": prompt["id"] if prompt else None,
        "prompt_version": str(prompt["version"]) if prompt else None,  # text in Helicone's
        "feedback_created_at": None,
        "feedback_id": None,
        "feedback_rating": None if feedback is None else feedback == 1,  # the feedback score: 1 up, 0 down
        "signed_body_url": None,
        "llmSchema": None,
        "country_code": None,
        "asset_ids": [],
        "asset_urls": {},
        "assets": [],
        "cache_reference_id": None,
        "cache_enabled": row["cache_hit"],  # known for answers from the cache; a miss does not log whether it asked
        "updated_at": None,
        "request_referrer": None,
        "ai_gateway_body_mapping": None,
        "storage_location": None,
    }


# How a body that is not UTF-8 text (audio, an image, an upload holding one) is answered, whole and said to be so
BINARY_ENCODING = "base64"


def body_to_json(data: bytes | None, content_type: str) -> tuple[Any, str | None]:
    """(the body, its encoding): JSON bodies come back as JSON, other text (SSE streams included) as text, both with
    no encoding; bytes that are not UTF-8 text as their base64 text and BINARY_ENCODING. No body (none sent, or not
    stored because of Helicone-Omit-Request/-Response) is null."""
    if not data:
        return None, None
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        text = decoder.decode(data, final=False)  # not final: a logged body is cut at the log's limit, maybe in a character
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), BINARY_ENCODING
    if decoder.getstate()[0]:
        text += "\ufffd"  # the character the cut fell in
    return _text_to_json(text, content_type), None


def _text_to_json(text: str, content_type: str) -> Any:
    if "json" in (content_type or "") or text[:1] in "{[":
        try:
            # the answer's own JSON reader: JSON it cannot write back (an escaped lone surrogate, nesting
            # deeper than its limit) is refused here and returned as text, where json.loads made it a 500
            return pydantic_core.from_json(text)
        except ValueError:
            pass
    return text


def prompt_where_sql(filtered: tuple[list[str], dict[str, Any]], prompt_id: str) -> tuple[list[str], dict[str, Any]]:
    """A request filter's conditions (filters.filter_sql: the flat filter or the tree), narrowed to the
    requests one prompt rendered."""
    where, params = filtered
    return [*where, "prompt_id = {prompt_id:String}"], {**params, "prompt_id": prompt_id}


def prompt_analytics_sql(filtered: tuple[list[str], dict[str, Any]], prompt_id: str) -> tuple[str, dict[str, Any]]:
    """Per version of one prompt: requests, cost, latency and error rate of the requests it rendered."""
    where, params = prompt_where_sql(filtered, prompt_id)
    sql = (
        "SELECT prompt_version, count() AS requests, sum(cost_usd) AS cost_usd, countIf(cost_known = 0) AS cost_unknown, "
        "avg(latency_ms) AS latency_ms_avg, quantile(0.95)(latency_ms) AS latency_ms_p95, "
        f"countIf({ERROR_CONDITION}) AS errors "
        f"FROM {{db}}.request_log FINAL WHERE {' AND '.join(where)} GROUP BY prompt_version ORDER BY prompt_version DESC " + SETTINGS
    )
    return sql, params


def prompt_analytics_json(row: dict[str, Any]) -> dict[str, Any]:
    requests = int(row["requests"])
    return {
        "version": int(row["prompt_version"]),
        "requests": requests,
        "cost_usd": float(row["cost_usd"]),
        "cost_unknown_requests": int(row["cost_unknown"]),
        "latency_ms": {"avg": float(row["latency_ms_avg"]), "p95": float(row["latency_ms_p95"])},
        "errors": int(row["errors"]),
        "error_rate": int(row["errors"]) / requests if requests else 0.0,
    }


def prompt_scores_sql(filtered: tuple[list[str], dict[str, Any]], prompt_id: str) -> tuple[str, dict[str, Any]]:
    """Per version of one prompt and score name: how many of its requests have that score, and their sum and mean."""
    where, params = prompt_where_sql(filtered, prompt_id)
    sql = (
        "SELECT r.prompt_version AS prompt_version, s.name AS name, count() AS n, sum(s.value) AS total, avg(s.value) AS mean "
        f"FROM (SELECT request_id, prompt_version FROM {{db}}.request_log FINAL WHERE {' AND '.join(where)}) AS r "
        "INNER JOIN (SELECT request_id, name, value FROM {db}.request_scores FINAL "
        "WHERE org_id = {org:String} AND deleted = 0) AS s ON r.request_id = s.request_id "
        "GROUP BY prompt_version, name ORDER BY prompt_version, name " + SETTINGS
    )
    return sql, params


def prompt_scores_json(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """version -> {"scores": {name: {"avg", "count"}}, "feedback": {"up", "down", "count", "ratio"}}; the
    feedback score shows only as its thumbs-up share."""
    out: dict[int, dict[str, Any]] = {}
    for row in rows:
        version = out.setdefault(int(row["prompt_version"]), {"scores": {}, "feedback": no_feedback()})
        n = int(row["n"])
        if row["name"] == FEEDBACK_SCORE:
            up = round(float(row["total"]))  # a sum of ones
            version["feedback"] = {"up": up, "down": n - up, "count": n, "ratio": up / n}
        else:
            version["scores"][row["name"]] = {"avg": float(row["mean"]), "count": n}
    return out


def no_feedback() -> dict[str, Any]:
    return {"up": 0, "down": 0, "count": 0, "ratio": None}
