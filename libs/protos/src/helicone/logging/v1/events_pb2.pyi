import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "total_tokens", "cache_read_tokens", "cache_write_tokens", "known")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_READ_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    known: bool
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ..., cache_read_tokens: _Optional[int] = ..., cache_write_tokens: _Optional[int] = ..., known: _Optional[bool] = ...) -> None: ...

class InlineBodies(_message.Message):
    __slots__ = ("request_body", "response_body", "request_content_type", "response_content_type", "request_truncated", "response_truncated")
    REQUEST_BODY_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_BODY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    request_body: bytes
    response_body: bytes
    request_content_type: str
    response_content_type: str
    request_truncated: bool
    response_truncated: bool
    def __init__(self, request_body: _Optional[bytes] = ..., response_body: _Optional[bytes] = ..., request_content_type: _Optional[str] = ..., response_content_type: _Optional[str] = ..., request_truncated: _Optional[bool] = ..., response_truncated: _Optional[bool] = ...) -> None: ...

class BodyLocation(_message.Message):
    __slots__ = ("request_key", "response_key", "request_bytes", "response_bytes")
    REQUEST_KEY_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_KEY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_BYTES_FIELD_NUMBER: _ClassVar[int]
    request_key: str
    response_key: str
    request_bytes: int
    response_bytes: int
    def __init__(self, request_key: _Optional[str] = ..., response_key: _Optional[str] = ..., request_bytes: _Optional[int] = ..., response_bytes: _Optional[int] = ...) -> None: ...

class Attempt(_message.Message):
    __slots__ = ("target_url", "provider", "status", "error", "latency_ms", "fallback_index", "retry")
    TARGET_URL_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_INDEX_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    target_url: str
    provider: str
    status: int
    error: str
    latency_ms: int
    fallback_index: int
    retry: int
    def __init__(self, target_url: _Optional[str] = ..., provider: _Optional[str] = ..., status: _Optional[int] = ..., error: _Optional[str] = ..., latency_ms: _Optional[int] = ..., fallback_index: _Optional[int] = ..., retry: _Optional[int] = ...) -> None: ...

class RequestLogged(_message.Message):
    __slots__ = ("schema_version", "request_id", "org_id", "request_created_at", "response_created_at", "latency_ms", "time_to_first_token_ms", "status", "provider", "model", "method", "path", "target_url", "user_id", "session_id", "session_path", "session_name", "properties", "usage", "cost_usd", "cost_known", "streamed", "inline", "location", "error", "source", "region", "prompt_id", "prompt_version", "prompt_inputs_json", "prompt_environment", "cache_hit", "cache_saved_usd", "attempts", "fallback_index")
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    TARGET_URL_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_PATH_FIELD_NUMBER: _ClassVar[int]
    SESSION_NAME_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    COST_KNOWN_FIELD_NUMBER: _ClassVar[int]
    STREAMED_FIELD_NUMBER: _ClassVar[int]
    INLINE_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_INPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    CACHE_SAVED_USD_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_INDEX_FIELD_NUMBER: _ClassVar[int]
    schema_version: int
    request_id: str
    org_id: str
    request_created_at: _timestamp_pb2.Timestamp
    response_created_at: _timestamp_pb2.Timestamp
    latency_ms: int
    time_to_first_token_ms: int
    status: int
    provider: str
    model: str
    method: str
    path: str
    target_url: str
    user_id: str
    session_id: str
    session_path: str
    session_name: str
    properties: _containers.ScalarMap[str, str]
    usage: Usage
    cost_usd: float
    cost_known: bool
    streamed: bool
    inline: InlineBodies
    location: BodyLocation
    error: str
    source: str
    region: str
    prompt_id: str
    prompt_version: int
    prompt_inputs_json: str
    prompt_environment: str
    cache_hit: bool
    cache_saved_usd: float
    attempts: _containers.RepeatedCompositeFieldContainer[Attempt]
    fallback_index: int
    def __init__(self, schema_version: _Optional[int] = ..., request_id: _Optional[str] = ..., org_id: _Optional[str] = ..., request_created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., response_created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., latency_ms: _Optional[int] = ..., time_to_first_token_ms: _Optional[int] = ..., status: _Optional[int] = ..., provider: _Optional[str] = ..., model: _Optional[str] = ..., method: _Optional[str] = ..., path: _Optional[str] = ..., target_url: _Optional[str] = ..., user_id: _Optional[str] = ..., session_id: _Optional[str] = ..., session_path: _Optional[str] = ..., session_name: _Optional[str] = ..., properties: _Optional[_Mapping[str, str]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., cost_usd: _Optional[float] = ..., cost_known: _Optional[bool] = ..., streamed: _Optional[bool] = ..., inline: _Optional[_Union[InlineBodies, _Mapping]] = ..., location: _Optional[_Union[BodyLocation, _Mapping]] = ..., error: _Optional[str] = ..., source: _Optional[str] = ..., region: _Optional[str] = ..., prompt_id: _Optional[str] = ..., prompt_version: _Optional[int] = ..., prompt_inputs_json: _Optional[str] = ..., prompt_environment: _Optional[str] = ..., cache_hit: _Optional[bool] = ..., cache_saved_usd: _Optional[float] = ..., attempts: _Optional[_Iterable[_Union[Attempt, _Mapping]]] = ..., fallback_index: _Optional[int] = ...) -> None: ...

class RequestLoggedBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[RequestLogged]
    def __init__(self, events: _Optional[_Iterable[_Union[RequestLogged, _Mapping]]] = ...) -> None: ...
