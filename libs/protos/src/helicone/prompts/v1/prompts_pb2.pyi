import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Variable(_message.Message):
    __slots__ = ("name", "type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ...) -> None: ...

class PromptVersion(_message.Message):
    __slots__ = ("org_id", "prompt_id", "version", "template_json", "model", "created_at", "variables", "typed_variables", "environments", "message", "archived", "changed_fields")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_JSON_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    TYPED_VARIABLES_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENTS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELDS_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    prompt_id: str
    version: int
    template_json: str
    model: str
    created_at: _timestamp_pb2.Timestamp
    variables: _containers.RepeatedScalarFieldContainer[str]
    typed_variables: _containers.RepeatedCompositeFieldContainer[Variable]
    environments: _containers.RepeatedScalarFieldContainer[str]
    message: str
    archived: bool
    changed_fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, org_id: _Optional[str] = ..., prompt_id: _Optional[str] = ..., version: _Optional[int] = ..., template_json: _Optional[str] = ..., model: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., variables: _Optional[_Iterable[str]] = ..., typed_variables: _Optional[_Iterable[_Union[Variable, _Mapping]]] = ..., environments: _Optional[_Iterable[str]] = ..., message: _Optional[str] = ..., archived: _Optional[bool] = ..., changed_fields: _Optional[_Iterable[str]] = ...) -> None: ...

class CreatePromptVersionRequest(_message.Message):
    __slots__ = ("org_id", "prompt_id", "template_json", "model", "message", "new_prompt", "environments")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_JSON_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    NEW_PROMPT_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENTS_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    prompt_id: str
    template_json: str
    model: str
    message: str
    new_prompt: bool
    environments: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, org_id: _Optional[str] = ..., prompt_id: _Optional[str] = ..., template_json: _Optional[str] = ..., model: _Optional[str] = ..., message: _Optional[str] = ..., new_prompt: _Optional[bool] = ..., environments: _Optional[_Iterable[str]] = ...) -> None: ...

class GetPromptRequest(_message.Message):
    __slots__ = ("org_id", "prompt_id", "version", "environment")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    prompt_id: str
    version: int
    environment: str
    def __init__(self, org_id: _Optional[str] = ..., prompt_id: _Optional[str] = ..., version: _Optional[int] = ..., environment: _Optional[str] = ...) -> None: ...

class ListPromptsRequest(_message.Message):
    __slots__ = ("org_id", "include_archived", "page_size", "page_token")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    include_archived: bool
    page_size: int
    page_token: str
    def __init__(self, org_id: _Optional[str] = ..., include_archived: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPromptsResponse(_message.Message):
    __slots__ = ("prompts", "next_page_token")
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedCompositeFieldContainer[PromptVersion]
    next_page_token: str
    def __init__(self, prompts: _Optional[_Iterable[_Union[PromptVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("org_id", "prompt_id", "page_size", "page_token")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    prompt_id: str
    page_size: int
    page_token: str
    def __init__(self, org_id: _Optional[str] = ..., prompt_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions", "next_page_token")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[PromptVersion]
    next_page_token: str
    def __init__(self, versions: _Optional[_Iterable[_Union[PromptVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SetEnvironmentRequest(_message.Message):
    __slots__ = ("org_id", "prompt_id", "environment", "version")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    prompt_id: str
    environment: str
    version: int
    def __init__(self, org_id: _Optional[str] = ..., prompt_id: _Optional[str] = ..., environment: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class RollbackEnvironmentRequest(_message.Message):
    __slots__ = ("org_id", "prompt_id", "environment")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    prompt_id: str
    environment: str
    def __init__(self, org_id: _Optional[str] = ..., prompt_id: _Optional[str] = ..., environment: _Optional[str] = ...) -> None: ...

class ArchivePromptRequest(_message.Message):
    __slots__ = ("org_id", "prompt_id")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    prompt_id: str
    def __init__(self, org_id: _Optional[str] = ..., prompt_id: _Optional[str] = ...) -> None: ...

class ArchivePromptResponse(_message.Message):
    __slots__ = ("prompt_id", "versions")
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    prompt_id: str
    versions: int
    def __init__(self, prompt_id: _Optional[str] = ..., versions: _Optional[int] = ...) -> None: ...

class RenderPromptRequest(_message.Message):
    __slots__ = ("org_id", "prompt_id", "version", "inputs", "environment", "inputs_json")
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
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    INPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    prompt_id: str
    version: int
    inputs: _containers.ScalarMap[str, str]
    environment: str
    inputs_json: str
    def __init__(self, org_id: _Optional[str] = ..., prompt_id: _Optional[str] = ..., version: _Optional[int] = ..., inputs: _Optional[_Mapping[str, str]] = ..., environment: _Optional[str] = ..., inputs_json: _Optional[str] = ...) -> None: ...

class RenderPromptResponse(_message.Message):
    __slots__ = ("prompt", "rendered_json")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    RENDERED_JSON_FIELD_NUMBER: _ClassVar[int]
    prompt: PromptVersion
    rendered_json: str
    def __init__(self, prompt: _Optional[_Union[PromptVersion, _Mapping]] = ..., rendered_json: _Optional[str] = ...) -> None: ...

class WatchPromptsRequest(_message.Message):
    __slots__ = ("org_id",)
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    def __init__(self, org_id: _Optional[str] = ...) -> None: ...

class PromptChanged(_message.Message):
    __slots__ = ("prompt_id",)
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    prompt_id: str
    def __init__(self, prompt_id: _Optional[str] = ...) -> None: ...
