"""Prompt templates (shared by the prompts service, which stores them, and the gateway, which renders
cached versions itself): JSON request bodies (messages with roles, model, parameters, tools,
response_format) whose string values carry placeholders.

Placeholders: `{{name}}` (a string) and Helicone's typed form `{{hc:name:string|number|boolean}}`.
A string value that is exactly one typed number/boolean placeholder becomes that JSON value
(`"temperature": "{{hc:temp:number}}"` renders as `"temperature": 0.2`); anywhere else a
placeholder is replaced by its text, JSON-escaped so the result stays valid JSON."""

from __future__ import annotations

import collections
import json
import math
import re
from typing import Any

# A prompt's id (a user-chosen slug) and an environment label, as every service accepts them.
PROMPT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
PROMPT_ID_FORM = "1-128 characters of letters, digits, '_', '-', '.'"
ENVIRONMENT = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")
ENVIRONMENT_FORM = "1-64 characters of a-z, 0-9, '_', '-' (e.g. production, staging)"
PLACEHOLDER = re.compile(r"\{\{\s*(hc:)?([A-Za-z_][A-Za-z0-9_\-]*)(?::([A-Za-z]+))?\s*\}\}")
TYPES = ("string", "number", "boolean")
MAX_INT = 10**308  # a number input beyond a double's range is refused, as float("1e400") is
# Deeper templates are refused: rendering walks them recursively (a request body nests a few levels; a
# JSON schema in tools or response_format a few dozen at most).
MAX_DEPTH = 100
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


class TemplateError(ValueError):
    """A template or inputs we cannot accept; the message names the variable or field."""


class RenderTooLarge(TemplateError):
    """The inputs would render the template past the caller's size limit."""


def _parse(template_json: str) -> Any:
    """The template's JSON; TemplateError for text that is not JSON, nests too deeply or holds a
    number no provider takes (NaN, Infinity, beyond a double: Postgres jsonb refuses the first two)."""

    def finite(text: str) -> float:
        number = float(text)
        if not math.isfinite(number):
            raise TemplateError(f"template number {text[:40]} is out of range")
        return number

    def constant(text: str) -> Any:
        raise TemplateError(f"template holds {text}, which is not a JSON number")

    try:
        return json.loads(template_json, parse_float=finite, parse_constant=constant)
    except TemplateError:
        raise
    except RecursionError:
        raise TemplateError(f"template nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise TemplateError(f"template is not valid JSON: {exc}") from exc


def _strings(node: Any):
    """Every string of a parsed template, object keys included, in document order."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, dict):
            for k, v in reversed(item.items()):
                stack.extend((v, k))


def _depth(node: Any) -> int:
    """How deeply lists and objects nest in a parsed template (a scalar: 0)."""
    deepest, stack = 0, [(node, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            depth += 1
            deepest = max(deepest, depth)
            stack.extend((child, depth) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _matches(template: str | Any):
    # placeholders are found in the decoded strings, as render() fills them (not in the JSON text,
    # where an escape such as "{{\n name }}" would hide one)
    doc = _parse(template) if isinstance(template, str) else template
    for text in _strings(doc):
        for m in PLACEHOLDER.finditer(text):
            prefixed, name, type_ = m.group(1), m.group(2), m.group(3)
            if type_ is not None and not prefixed:
                raise TemplateError(f"variable {name!r}: a type needs the Helicone form {{{{hc:{name}:{type_}}}}}")
            type_ = type_ or "string"
            if type_ not in TYPES:
                raise TemplateError(f"variable {name!r} has unknown type {type_!r}; use one of {', '.join(TYPES)}")
            yield name, type_


def typed_variables(template: str | Any) -> dict[str, str]:
    """Variable name -> type, in order of first use; one name used with two types is refused.
    `template`: the JSON text, or the parsed template."""
    seen: dict[str, str] = {}
    for name, type_ in _matches(template):
        if seen.setdefault(name, type_) != type_:
            raise TemplateError(f"variable {name!r} is used as both {seen[name]} and {type_}")
    return seen


def variables(template_json: str) -> list[str]:
    return list(typed_variables(template_json))


def validate(template_json: str) -> dict:
    """The parsed template; raises TemplateError naming what is wrong."""
    doc = _parse(template_json)
    if not isinstance(doc, dict):
        raise TemplateError("template must be a JSON object (a provider request body)")
    messages = doc.get("messages")
    if messages is not None:
        if not isinstance(messages, list):
            raise TemplateError("template field 'messages' must be a list of {role, content} objects")
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
                raise TemplateError(f"template messages[{i}] must be an object with a 'role'")
            if msg["role"] not in ROLES:
                raise TemplateError(f"template messages[{i}].role {msg['role'][:40]!r} is not one of {', '.join(sorted(ROLES))}")
    if "tools" in doc and not isinstance(doc["tools"], list):
        raise TemplateError("template field 'tools' must be a list")
    if "response_format" in doc and not isinstance(doc["response_format"], dict):
        raise TemplateError("template field 'response_format' must be an object")
    if _depth(doc) > MAX_DEPTH:
        raise TemplateError(f"template nests deeper than {MAX_DEPTH} levels")
    if any("\x00" in text for text in _strings(doc)):
        raise TemplateError("template contains a NUL character (\\u0000), which cannot be stored")
    typed_variables(doc)
    return doc


def changed_fields(previous: dict | None, current: dict) -> list[str]:
    """Top-level fields whose value differs between two versions (all of them for a first version)."""
    if previous is None:
        return sorted(current)
    return sorted(k for k in previous.keys() | current.keys() if previous.get(k) != current.get(k))


def _coerce(name: str, type_: str, value: Any) -> Any:
    if type_ == "number":
        if isinstance(value, int) and not isinstance(value, bool) and -MAX_INT <= value <= MAX_INT:
            return value
        if isinstance(value, float) and math.isfinite(value):
            return value
        if isinstance(value, str):
            if re.fullmatch(r"\s*-?[0-9]{1,308}\s*", value):  # an integer keeps every digit
                return int(value)
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if math.isfinite(number):
                return number
        raise TemplateError(f"input {name!r} must be a number (variable {{{{hc:{name}:number}}}}), got {str(value)[:40]!r}")
    if type_ == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise TemplateError(f"input {name!r} must be true or false (variable {{{{hc:{name}:boolean}}}}), got {str(value)[:40]!r}")
    if isinstance(value, str):
        if not value.isascii():  # a lone surrogate ("\\ud800" in JSON) is no UTF-8 text: no provider, log or gRPC reply takes it
            try:
                value.encode()
            except UnicodeEncodeError:
                raise TemplateError(f"input {name!r} contains a lone surrogate, which is not valid Unicode text") from None
        return value
    if isinstance(value, (int, float, bool)):
        return json.dumps(value)
    raise TemplateError(f"input {name!r} must be text (variable {{{{{name}}}}}), got a JSON {type(value).__name__}")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def render(template_json: str, inputs: dict[str, Any], max_bytes: int | None = None) -> str:
    """The template with every placeholder replaced; missing or mistyped inputs are refused
    (TemplateError naming the variable). Inputs the template does not use are ignored. With
    `max_bytes`, inputs that would render past it (one input used many times multiplies) are
    refused (RenderTooLarge) before anything is built."""
    doc = _parse(template_json)
    types = typed_variables(doc)
    missing = [v for v in types if v not in inputs]
    if missing:
        raise TemplateError(f"missing inputs: {', '.join(missing)}")
    values = {name: _coerce(name, type_, inputs[name]) for name, type_ in types.items()}
    if max_bytes is not None:
        uses = collections.Counter(name for name, _ in _matches(doc))
        size = len(template_json.encode()) + sum(n * len(_text(values[name]).encode()) for name, n in uses.items())
        if size > max_bytes:
            raise RenderTooLarge(f"these inputs render the template to about {size} bytes, more than the limit of {max_bytes}")

    def fill(node: Any) -> Any:
        if isinstance(node, str):
            whole = PLACEHOLDER.fullmatch(node.strip())
            if whole and types[whole.group(2)] != "string":
                return values[whole.group(2)]
            return PLACEHOLDER.sub(lambda m: _text(values[m.group(2)]), node)
        if isinstance(node, list):
            return [fill(x) for x in node]
        if isinstance(node, dict):
            return {PLACEHOLDER.sub(lambda m: _text(values[m.group(2)]), k): fill(v) for k, v in node.items()}
        return node

    try:
        return json.dumps(fill(doc), ensure_ascii=False)
    except RecursionError:  # a template stored before MAX_DEPTH was checked
        raise TemplateError(f"template nests deeper than {MAX_DEPTH} levels") from None
