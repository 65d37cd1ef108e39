"""The provider table (providers.json next to this file): the one place for what the gateway knows
about each provider it routes to: path prefix, default base URL, how the key is sent, how usage is
read. Loaded once at import; a malformed entry fails start-up naming the entry and field."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from urllib.parse import unquote

# How model and token usage are read from an answer (helicone_gateway.usage): the JSON body and
# the stream forms of each API.
USAGE_FORMATS = {
    "openai": "OpenAI JSON, SSE (`stream_options.include_usage`)",
    "anthropic": "Anthropic JSON, SSE",
    "gemini": "Gemini `generateContent` JSON, `streamGenerateContent` SSE (`?alt=sse`) and JSON-array stream, "
              "`embedContent` and Vertex AI's embeddings `:predict` (`countTokens`: no cost)",
    "bedrock": "Bedrock `Converse` JSON and `ConverseStream` event stream (its `metadata` event); `InvokeModel` JSON and "
               "event stream (`chunk.bytes`) of Anthropic's models, other models' streams by `amazon-bedrock-invocationMetrics`",
}
_NAME = re.compile(r"^[a-z][a-z0-9]{1,31}$")
# a `key` way the gateway can send an org's stored key in: "Name: <key>" or "Name: Bearer <... key>"
_VAULT_WAY = re.compile(r"^([A-Za-z0-9-]+):\s*(Bearer )?<[^<>]*\bkey>$")
_FIELDS = {"label", "base_url", "base_url_form", "key", "usage", "usage_paths", "target_paths", "stream_options", "model_path",
           "sdk_base"}


@dataclass(frozen=True)
class Provider:
    name: str  # also the path prefix (/<name>/...), the logged `provider` and a metric label value
    label: str
    base_url: str  # default upstream; "" when each deployment must name it (Azure, Bedrock)
    key: tuple[str, ...]  # the ways the caller sends its provider key (forwarded untouched): docs, the cache key
    usage: str  # default usage format (a USAGE_FORMATS key)
    usage_paths: tuple[tuple[str, str], ...] = ()  # (marker in the path, usage format) checked in order
    model_path: re.Pattern | None = None  # first group: the model named in the path
    sdk_base: str = ""  # the SDK base_url under the gateway, for docs
    formats: tuple[str, ...] = field(default=())  # every usage format this provider's answers come in
    # path endings whose API takes stream_options.include_usage (Helicone-Stream-Usage); () for none
    stream_options: tuple[str, ...] = ()
    base_url_form: str = ""  # the form of a base URL to name where there is no default (errors, docs)
    # (marker in the path, base URL form): an API the default base URL does not serve (Vertex AI's regional hosts)
    target_paths: tuple[tuple[str, str], ...] = ()
    # read from `key`: the (lower-case) headers a caller's key comes in, the query parameter one may come in (Gemini's
    # ?key=), and the header and value prefix a stored key (helicone_core.vault) is sent in (None: never one)
    key_headers: tuple[str, ...] = ()
    key_param: str = ""
    vault_header: tuple[str, str] | None = None

    def usage_for(self, path: str) -> str:
        for marker, fmt in self.usage_paths:
            if marker in path:
                return fmt
        return self.usage

    def takes_stream_options(self, path: str) -> bool:
        """Whether a request to `path` may be given stream_options (others refuse it, e.g. Mistral with a 422)."""
        return path.endswith(self.stream_options) if self.stream_options else False

    def model_in(self, path: str) -> str:
        if self.model_path is None:
            return ""
        m = self.model_path.search(path)
        if not m:
            return ""
        # as the API reads it: Bedrock's SDKs send anthropic.claude-...-v2:0 as ...-v2%3A0
        return unquote(m.group(1)) if "%" in m.group(1) else m.group(1)

    def target_needed(self, path: str) -> str:
        """The form of the base URL a path needs when the default base URL does not serve its API (a Vertex AI
        path: Google's regional hosts), else ""."""
        for marker, form in self.target_paths:
            if marker in path:
                return form
        return ""


def parse_table(doc: dict) -> dict[str, Provider]:
    """The table from its JSON document; ValueError naming the entry and field on anything malformed."""
    out: dict[str, Provider] = {}
    for name, entry in doc.items():
        if name.startswith("_"):
            continue
        where = f"provider table: {name!r}"
        if not _NAME.match(name):
            raise ValueError(f"{where}: a name is 2-32 lower-case letters and digits (it is the path prefix and a metric label)")
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object")
        unknown = set(entry) - _FIELDS
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; accepted: {sorted(_FIELDS)}")
        for req in ("label", "base_url", "usage"):
            if not isinstance(entry.get(req), str):
                raise ValueError(f"{where}: {req} must be a string")
        key = entry.get("key")
        if not (isinstance(key, list) and key and all(isinstance(k, str) and k for k in key)):
            raise ValueError(f"{where}: key must be a list of the ways the provider key is sent, e.g. [\"Authorization: Bearer <key>\"]")
        paths = entry.get("usage_paths") or {}
        formats = [entry["usage"], *paths.values()]
        for fmt in formats:
            if fmt not in USAGE_FORMATS:
                raise ValueError(f"{where}: usage format {fmt!r} is not one of {sorted(USAGE_FORMATS)}")
        targets = entry.get("target_paths") or {}
        if not (isinstance(targets, dict) and all(isinstance(v, str) and v for v in targets.values())):
            raise ValueError(f"{where}: target_paths must map a path marker to the base URL its API needs")
        if not isinstance(entry.get("base_url_form", ""), str):
            raise ValueError(f"{where}: base_url_form must be a string, e.g. \"https://<resource>.openai.azure.com\"")
        stream_options = entry.get("stream_options") or []
        if not (isinstance(stream_options, list) and all(isinstance(p, str) and p.startswith("/") for p in stream_options)):
            raise ValueError(f"{where}: stream_options must be a list of path endings, e.g. [\"/chat/completions\"]")
        try:
            model_path = re.compile(entry["model_path"]) if entry.get("model_path") else None
        except re.error as exc:
            raise ValueError(f"{where}: model_path is not a regex ({exc})") from None
        key_headers = tuple(dict.fromkeys(way.split(":", 1)[0].strip().lower() for way in key
                                          if ":" in way and not way.startswith("?")))
        key_param = next((way[1:].split("=", 1)[0] for way in key if way.startswith("?")), "")
        vault_way = next((m for way in key if (m := _VAULT_WAY.match(way))), None)
        out[name] = Provider(
            name=name, label=entry["label"], base_url=entry["base_url"].rstrip("/"), key=tuple(key),
            key_headers=key_headers, key_param=key_param,
            vault_header=(vault_way.group(1).lower(), vault_way.group(2) or "") if vault_way else None,
            usage=entry["usage"], usage_paths=tuple(paths.items()), model_path=model_path,
            sdk_base=entry.get("sdk_base", ""), formats=tuple(dict.fromkeys(formats)),
            stream_options=tuple(stream_options), base_url_form=entry.get("base_url_form", ""),
            target_paths=tuple(targets.items()),
        )
    return out


def _load() -> dict[str, Provider]:
    return parse_table(json.loads(resources.files(__package__).joinpath("providers.json").read_text()))


PROVIDER_TABLE: dict[str, Provider] = _load()
PROVIDER_NAMES: tuple[str, ...] = tuple(PROVIDER_TABLE)
