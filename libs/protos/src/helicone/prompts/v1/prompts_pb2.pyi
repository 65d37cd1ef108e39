import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PromptVersion(_message.Message):
    __slots__ = ("org_id", "prompt_id", "version", "template_json", "model", "created_at", "variables")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_JSON_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    prompt_id: str
    version: int
    template_json: str
    model: str
    created_at: _timestamp_pb2.Timestamp
    variables: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, org_id: _Optional[str] = ..., prompt_id: _Optional[str] = ..., version: _Optional[int] = ..., template_json: _Optional[str] = ..., model: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., variables: _Optional[_Iterable[str]] = ...) -> None: ...

class CreatePromptVersionRequest(_message.Message):
    __slots__ = ("org_id", "prompt_id", "template_json", "model")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_JSON_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    prompt_id: str
    template_json: str
    model: str
    def __init__(self, org_id: _Optional[str] = ..., prompt_id: _Optional[str] = ..., template_json: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class GetPromptRequest(_message.Message):
    __slots__ = ("org_id", "prompt_id", "version")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    prompt_id: str
    version: int
    def __init__(self, org_id: _Optional[str] = ..., prompt_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ListPromptsRequest(_message.Message):
    __slots__ = ("org_id",)
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    def __init__(self, org_id: _Optional[str] = ...) -> None: ...

class ListPromptsResponse(_message.Message):
    __slots__ = ("prompts",)
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedCompositeFieldContainer[PromptVersion]
    def __init__(self, prompts: _Optional[_Iterable[_Union[PromptVersion, _Mapping]]] = ...) -> None: ...

class RenderPromptRequest(_message.Message):
    __slots__ = ("org_id", "prompt_id", "version", "inputs")
    class InputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    prompt_id: str
    version: int
    inputs: _containers.ScalarMap[str, str]
    def __init__(self, org_id: _Optional[str] = ..., prompt_id: _Optional[str] = ..., version: _Optional[int] = ..., inputs: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RenderPromptResponse(_message.Message):
    __slots__ = ("prompt", "rendered_json")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    RENDERED_JSON_FIELD_NUMBER: _ClassVar[int]
    prompt: PromptVersion
    rendered_json: str
    def __init__(self, prompt: _Optional[_Union[PromptVersion, _Mapping]] = ..., rendered_json: _Optional[str] = ...) -> None: ...
