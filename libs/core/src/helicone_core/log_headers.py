"""The Helicone-* headers that describe a log (request id, user, session, properties, request name,
model override, omit switches): one reading for the gateway's request headers and the api's async-log `meta`."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field

from .events import MAX_PROPERTY_KEY, MAX_PROPERTY_VALUE, InlineBodies

PROPERTY_PREFIX = "helicone-property-"
MAX_PROPERTIES = 64
# What makes a header at all (RFC 9110): a name of token characters, a value without control characters but HTAB.
# The gateway's decode_headers refuses any other header; custom_property holds a property given outside a header to it.
HTTP_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
HTTP_VALUE_CONTROL = r"[\x00-\x08\x0a-\x1f\x7f]"
_HTTP_TOKEN = re.compile(HTTP_TOKEN)
_HTTP_VALUE_CONTROL = re.compile(HTTP_VALUE_CONTROL)
# Helicone-Request-Name is stored as this property (Helicone's name for it), next to the Helicone-Property-* ones;
# in lower case like them, as the api reads property names in any case by their lower-case form.
REQUEST_NAME_PROPERTY = "helicone-request-name"
MAX_REQUEST_NAME = 256
# Helicone-Model-Override: the model logged and priced instead of the one the request or answer names
MODEL_OVERRIDE = "Helicone-Model-Override"
MAX_MODEL = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
OMIT_REQUEST = "Helicone-Omit-Request"
OMIT_RESPONSE = "Helicone-Omit-Response"
MAX_USER_ID = 512
# lower-case name -> (the header's longest value, the LogHeaders field it sets)
_BOUNDED = {
    "helicone-user-id": (MAX_USER_ID, "user_id"),
    "helicone-session-id": (512, "session_id"),
    "helicone-session-path": (1024, "session_path"),
    "helicone-session-name": (512, "session_name"),
}
_MODEL_OVERRIDE = MODEL_OVERRIDE.lower()
_SWITCHES = {OMIT_REQUEST.lower(): (OMIT_REQUEST, "omit_request"), OMIT_RESPONSE.lower(): (OMIT_RESPONSE, "omit_response")}


class HeaderError(ValueError):
    """A Helicone-* header with a value we cannot accept (the gateway answers 400, the api 422)."""


class PropertyError(HeaderError):
    """A custom property the log cannot take; `part` says whether its "key" or its "value" is wrong."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(message)
        self.part = part


@dataclass
class LogHeaders:
    request_id: str = ""
    user_id: str = ""
    session_id: str = ""
    session_path: str = ""
    session_name: str = ""
    properties: dict[str, str] = field(default_factory=dict)
    request_name: str = ""  # Helicone-Request-Name, logged as the REQUEST_NAME_PROPERTY property
    model_override: str = ""  # Helicone-Model-Override: see logged_model
    omit_request: bool = False  # Helicone-Omit-Request: the request body is not logged
    omit_response: bool = False  # Helicone-Omit-Response: the response body is not logged

    def logged_properties(self) -> dict[str, str]:
        """The properties the log event carries: Helicone-Property-* plus the request name."""
        if not self.request_name:
            return self.properties
        return {**self.properties, REQUEST_NAME_PROPERTY: self.request_name}

    def logged_user(self, body_user: str) -> str:
        """The user a log names: Helicone-User-Id, else the request body's `user` (OpenAI's end-user
        parameter, Helicone's fallback) when it could have been sent as that header; "" for neither, and
        under Helicone-Omit-Request (the body the caller hid is not read for it)."""
        if self.user_id or self.omit_request:
            return self.user_id
        user = body_user.strip()
        return user if len(user) <= MAX_USER_ID and not _CONTROL.search(user) else ""

    def logged_model(self, model: str) -> str:
        """The model a log names and is priced by: the override when one was sent, else `model`
        (the request sent to the provider is not changed)."""
        return self.model_override or model

    def inline_bodies(self, req_body: bytes, req_ctype: str, resp_body: bytes, resp_ctype: str, limit: int,
                      *, response_cut: bool = False) -> InlineBodies:
        """The bodies as a log event carries them: cut at `limit`, left out when Helicone-Omit-* asks
        (usage and cost are still read from them). response_cut: the response was captured cut already."""
        return InlineBodies(
            request_body=b"" if self.omit_request else req_body[:limit],
            response_body=b"" if self.omit_response else resp_body[:limit],
            request_content_type=req_ctype,
            response_content_type=resp_ctype,
            request_truncated=not self.omit_request and len(req_body) > limit,
            response_truncated=not self.omit_response and (response_cut or len(resp_body) > limit),
        )


def read_log_header(out: LogHeaders, name: str, value: str) -> bool:
    """Applies one header to `out` when it is a log header (name lower-case, value stripped) and
    says whether it was; raises HeaderError naming the header for a value it cannot take."""
    if name in _BOUNDED:
        limit, attr = _BOUNDED[name]
        setattr(out, attr, bounded(name, value, limit))
    elif name == "helicone-request-id":
        try:
            out.request_id = str(uuid.UUID(value))
        except ValueError:
            raise HeaderError("Helicone-Request-Id must be a UUID") from None
    elif name == "helicone-request-name":
        out.request_name = bounded("Helicone-Request-Name", value, MAX_REQUEST_NAME)
    elif name == _MODEL_OVERRIDE:
        if not value or _CONTROL.search(value):
            raise HeaderError(f"{MODEL_OVERRIDE} must be a model name of 1 to {MAX_MODEL} characters "
                              "without control characters, e.g. 'gpt-4o-mini'")
        out.model_override = bounded(MODEL_OVERRIDE, value, MAX_MODEL)
    elif name in _SWITCHES:
        header, attr = _SWITCHES[name]
        setattr(out, attr, switch(header, value))
    elif name.startswith(PROPERTY_PREFIX):
        key = name[len(PROPERTY_PREFIX):]
        if not key:
            raise PropertyError("key", "Helicone-Property- header needs a name after the prefix")
        if len(key) > MAX_PROPERTY_KEY:  # the log store's limit (events.validate): such a log would never be stored
            raise PropertyError("key", f"the property name of {name[:60]}... is longer than {MAX_PROPERTY_KEY} characters")
        if len(out.properties) >= MAX_PROPERTIES and key not in out.properties:
            raise HeaderError(f"at most {MAX_PROPERTIES} Helicone-Property-* headers are allowed")
        if len(value) > MAX_PROPERTY_VALUE:
            raise PropertyError("value", f"{name} is longer than {MAX_PROPERTY_VALUE} characters")
        out.properties[key] = value
    else:
        return False
    return True


def custom_property(key: str, value: str) -> tuple[str, str]:
    """A custom property given as a key and a value (the api's PUT /v1/request/{id}/property) as the log
    stores it: what the gateway would log for the header `Helicone-Property-<key>: <value>`, by the same
    rules (the header's syntax, as decode_headers checks it; the name in lower case and the value stripped,
    as parse_helicone_headers reads them; then read_log_header's). Raises PropertyError naming the part."""
    name = PROPERTY_PREFIX + key
    if not _HTTP_TOKEN.fullmatch(name):
        raise PropertyError("key", f"property name {key[:60]!r} cannot be sent as a Helicone-Property-<name> header: "
                                   "a name is 1 or more of A-Z a-z 0-9 and ! # $ % & ' * + - . ^ _ ` | ~")
    if _HTTP_VALUE_CONTROL.search(value):
        raise PropertyError("value", "a property value cannot hold control characters (a tab excepted), "
                                     "as the value of a Helicone-Property-<name> header cannot")
    out = LogHeaders()
    read_log_header(out, name.lower(), value.strip())
    [(key, value)] = out.properties.items()
    return key, value


def switch(name: str, value: str) -> bool:
    """A true/false header (any case); name is the header as the error message spells it."""
    v = value.strip().lower()
    if v not in ("true", "false"):
        raise HeaderError(f"{name} must be 'true' or 'false', got {value[:40]!r}")
    return v == "true"


def bounded(name: str, value: str, limit: int) -> str:
    if len(value) > limit:
        raise HeaderError(f"{name} is longer than {limit} characters")
    return value
