"""Cost registry: model prices and the cost of one request from its token usage.

The registry ships as cost_registry.json; HELICONE_COST_REGISTRY_FILE names a file of the same shape
merged over it (an entry replaces the shipped entry of that name, `null` removes one). A model is
found in its provider's section (every section when the provider has none): by exact name, else by
the first entry whose `regex` / `pattern` (glob) matches, else by the longest entry name it starts
with, unless the rest names another version of it (claude-opus-4-6 is not claude-opus-4); a fine-tune
(ft:<model>:...) only by the ft: entries; a Bedrock id of an Anthropic model is looked up as the whole id,
then as the model's own name.
Tiers price the whole request differently above a prompt size (long-context pricing). An entry may also carry its model's
context window (`context_window`, tokens), found by the same matching: the gateway's Helicone-Token-Limit-Exception-Handler
reads it (context_window)."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .settings import env_name

PER_TOKENS = 1_000_000
# Bedrock's id of an Anthropic model, "anthropic.<model>-v<N>:<M>", with a geography in front for a cross-region
# inference profile ("us.", "eu.", "apac.", "au.", "jp.", "global."): priced as <model> unless an entry
# matches the whole id (the geographic profiles of newer models cost more). GovCloud's "us-gov." is not among them.
_BEDROCK_ANTHROPIC = re.compile(r"(?:(?:us|eu|apac|au|jp|global)\.)?anthropic\.(claude-.+?)(?:-v[0-9]+(?::[0-9]+)?)?")
# The longest-prefix fallback stops at a different version of the entry's model: "claude-opus-4-6" is not
# "claude-opus-4", nor "gpt-4.5" "gpt-4" (newer versions are priced apart, often lower); a snapshot's date is no version
# ("gpt-4-0613", "claude-opus-4-20250514"), nor a size ("qwen3-8b"). Matched where the entry's name ends: a number of
# one or two digits (after "-", "." or none) that ends the name or a part of it.
_OTHER_VERSION = re.compile(r"[-.]?[0-9]{1,2}(?![0-9a-z])")
_PRICE_FIELDS = ("input", "output", "cache_read", "cache_write", "cache_write_1h", "audio_input", "audio_output", "audio_cache_read")
# USD per 1,000 searches of a server-side web search tool (Anthropic's web_search): a model's, whatever its prompt's tier
# context_window: the model's context window in tokens (prompt and completion together), as its provider documents it
_ENTRY_FIELDS = {*_PRICE_FIELDS, "web_search", "tiers", "pattern", "regex", "context_window"}
_TIER_FIELDS = {*_PRICE_FIELDS, "above"}


@dataclass(frozen=True)
class Price:
    input: float
    output: float
    cache_read: float
    cache_write: float
    cache_write_1h: float  # a prompt-cache write kept for an hour (Anthropic's 1-hour TTL), where it costs more
    # audio tokens (OpenAI's audio, realtime and transcribe models), None where the registry has no audio price:
    # a request that used audio then has no cost rather than one priced at the text rate
    audio_input: float | None = None
    audio_output: float | None = None
    audio_cache_read: float | None = None
    # USD per 1,000 web searches (Anthropic's usage.server_tool_use.web_search_requests), None where the registry has
    # none: a request that searched then has no cost rather than one without its searches
    web_search: float | None = None
    # (prompt tokens above which it applies, price), ascending: the whole request is priced at the
    # highest tier its prompt exceeds
    tiers: tuple[tuple[int, Price], ...] = ()

    def for_prompt(self, prompt_tokens: int) -> Price:
        chosen = self
        for above, tier in self.tiers:
            if prompt_tokens > above:
                chosen = tier
        return chosen


@dataclass(frozen=True)
class TokenCounts:
    """prompt_tokens counts every prompt token, cached or not; the cache counts are subsets of it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0  # of cache_write_tokens, those written for an hour (priced at cache_write_1h)
    audio_prompt_tokens: int = 0  # of prompt_tokens, those that are audio (cached or not)
    audio_cache_read_tokens: int = 0  # of audio_prompt_tokens, those read from the cache (of cache_read_tokens too)
    audio_completion_tokens: int = 0  # of completion_tokens, those that are audio
    web_search_requests: int = 0  # searches a server-side web search tool ran (billed per search, besides tokens)


def _number(where: str, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{where}: {name} must be a number >= 0 (USD per 1M tokens), got {value!r}")
    return float(value)


def _price(where: str, p: dict, fields: set[str]) -> Price:
    if not isinstance(p, dict):
        raise ValueError(f"{where}: expected an object with input and output prices, got {p!r}")
    unknown = set(p) - fields
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; accepted: {sorted(fields)}")
    for req in ("input", "output"):
        if req not in p:
            raise ValueError(f"{where}: {req} is missing")
    inp = _number(where, "input", p["input"])
    write = _number(where, "cache_write", p.get("cache_write", inp))
    audio = {name: _number(where, name, p[name]) for name in ("audio_input", "audio_output") if name in p}
    if "audio_cache_read" in p:
        audio["audio_cache_read"] = _number(where, "audio_cache_read", p["audio_cache_read"])
    elif "audio_input" in audio:
        audio["audio_cache_read"] = audio["audio_input"]
    if "web_search" in p:
        audio["web_search"] = _number(where, "web_search", p["web_search"])
    return Price(
        input=inp,
        output=_number(where, "output", p["output"]),
        cache_read=_number(where, "cache_read", p.get("cache_read", inp)),
        cache_write=write,
        cache_write_1h=_number(where, "cache_write_1h", p.get("cache_write_1h", write)),
        **audio,
    )


@dataclass(frozen=True)
class _Entry:
    name: str
    price: Price
    matcher: re.Pattern | None  # from `regex`, or `pattern` (a glob) translated to one
    context_window: int | None = None  # tokens; None where the registry does not know it


def _entry(where: str, name: str, p) -> _Entry:
    price = _price(where, p, _ENTRY_FIELDS)
    window = p.get("context_window")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window <= 0):
        raise ValueError(f"{where}: context_window must be a whole number of tokens > 0, got {window!r}")
    tiers = []
    for i, t in enumerate(p.get("tiers") or []):
        tw = f"{where}: tiers[{i}]"
        above = t.get("above") if isinstance(t, dict) else None
        if isinstance(above, bool) or not isinstance(above, int) or above <= 0:
            raise ValueError(f"{tw}: above must be a prompt token count > 0, got {above!r}")
        tiers.append((above, dataclasses.replace(_price(tw, t, _TIER_FIELDS), web_search=price.web_search)))
    tiers.sort(key=lambda x: x[0])
    if len({a for a, _ in tiers}) != len(tiers):
        raise ValueError(f"{where}: two tiers start above the same prompt size")
    matcher = None
    if "regex" in p and "pattern" in p:
        raise ValueError(f"{where}: give regex or pattern (a glob), not both")
    try:
        if "regex" in p:
            matcher = re.compile(p["regex"], re.IGNORECASE)
        elif "pattern" in p:
            matcher = re.compile("^" + fnmatch.translate(p["pattern"].lower()))  # the whole name
    except (re.error, TypeError, AttributeError) as exc:
        raise ValueError(f"{where}: not a valid {'regex' if 'regex' in p else 'glob pattern'} ({exc})") from None
    return _Entry(name.lower(), dataclasses.replace(price, tiers=tuple(tiers)), matcher, window)


def merge(base: dict, override: dict, source: str = "override") -> dict:
    """`override` over `base` (both registry documents): per provider, an entry replaces the entry of
    that name, `null` removes it; new providers and models are added."""
    if not isinstance(override, dict):
        raise ValueError(f"cost registry {source}: expected a JSON object of provider sections")
    out = {prov: dict(models) if isinstance(models, dict) else models for prov, models in base.items()}
    for prov, models in override.items():
        if prov.startswith("_"):
            continue
        if not isinstance(models, dict):
            raise ValueError(f"cost registry {source}: {prov}: expected an object of model prices")
        section = out.setdefault(prov, {})
        for model, p in models.items():
            if p is None:
                section.pop(model, None)
            else:
                section[model] = p
    return out


class CostRegistry:
    def __init__(self, table: dict, source: str = "cost registry") -> None:
        self._sections: dict[str, dict[str, _Entry]] = {}
        self._patterns: dict[str, list[_Entry]] = {}
        self._ordered: dict[str, list[str]] = {}
        for provider, models in table.items():
            if provider.startswith("_"):
                continue
            if not isinstance(models, dict):
                raise ValueError(f"{source}: {provider}: expected an object of model prices")
            entries = {}
            for model, p in models.items():
                e = _entry(f"{source}: {provider}/{model}", model, p)
                entries[e.name] = e
            prov = provider.lower()
            self._sections[prov] = entries
            self._patterns[prov] = [e for e in entries.values() if e.matcher is not None]
            # longest prefix first so gpt-4o-mini wins over gpt-4o
            self._ordered[prov] = sorted(entries, key=len, reverse=True)

    @staticmethod
    def _shipped() -> dict:
        return json.loads(resources.files(__package__).joinpath("cost_registry.json").read_text())

    @classmethod
    def default(cls) -> CostRegistry:
        return cls(cls._shipped())

    @classmethod
    def from_file(cls, path: Path) -> CostRegistry:
        """Only the prices in `path` (no shipped ones)."""
        return cls(_read(path, f"cost registry {path}"), source=f"cost registry {path}")

    @classmethod
    def load(cls, path: Path | None) -> CostRegistry:
        """The shipped registry, with the file `path` (HELICONE_COST_REGISTRY_FILE) merged over it."""
        if not path:
            return cls.default()
        source = f"cost registry {path} ({env_name('cost_registry_file')})"
        return cls(merge(cls._shipped(), _read(path, source), source), source=source)

    def _match(self, provider: str, model: str) -> _Entry | None:
        model = model.lower().strip()
        if not model:
            return None
        # providers prefix models in some APIs ("openai/gpt-4o", "accounts/x/models/y"); a fine-tune ("ft:gpt-4o:org::id")
        # is found by its ft: entries only: OpenAI prices a fine-tune's inference above its base model's (about 2x)
        model = model.rsplit("/", 1)[-1]
        prov = provider.lower()
        providers = [prov] if prov in self._sections else list(self._sections)
        names = [model]
        bedrock = _BEDROCK_ANTHROPIC.fullmatch(model)
        if bedrock:
            names.append(bedrock.group(1))
        for name in names:
            for prov in providers:
                hit = self._find(prov, name)
                if hit is not None:
                    return hit
        return None

    def _find(self, prov: str, model: str) -> _Entry | None:
        entries = self._sections[prov]
        hit = entries.get(model)
        if hit is not None:
            return hit
        for e in self._patterns[prov]:
            if e.matcher.search(model):
                return e
        for candidate in self._ordered[prov]:
            if model.startswith(candidate) and not _OTHER_VERSION.match(model, len(candidate)):
                return entries[candidate]
        return None

    def price(self, provider: str, model: str) -> Price | None:
        match = self._match(provider, model)
        return match.price if match else None

    def canonical_model(self, provider: str, model: str) -> str | None:
        """The registry's name for a model ("gpt-4o-2024-08-06" -> "gpt-4o"), None if it has no
        price here: a value from a fixed set, fit for a metric label, whatever the caller sent."""
        match = self._match(provider, model)
        return match.name if match else None

    def context_window(self, provider: str, model: str) -> int | None:
        """The model's context window in tokens, by the entry its price is found by; None where that entry has none
        (or there is no entry): never a guess from another model."""
        match = self._match(provider, model)
        return match.context_window if match else None

    def cost(self, provider: str, model: str, tokens: TokenCounts) -> float | None:
        """USD, or None when the model has no price here (nor an audio price for the audio tokens it reported, nor a
        web search price for the searches it ran)."""
        base = self.price(provider, model)
        if base is None:
            return None
        price = base.for_prompt(tokens.prompt_tokens)
        audio_in = min(tokens.audio_prompt_tokens, tokens.prompt_tokens)
        audio_cached = min(tokens.audio_cache_read_tokens, audio_in, tokens.cache_read_tokens)
        audio_out = min(tokens.audio_completion_tokens, tokens.completion_tokens)
        if (audio_in and price.audio_input is None) or (audio_out and price.audio_output is None):
            return None
        if tokens.web_search_requests and price.web_search is None:
            return None
        uncached = max(tokens.prompt_tokens - tokens.cache_read_tokens - tokens.cache_write_tokens, 0)
        audio_uncached = min(audio_in - audio_cached, uncached)
        one_hour = min(tokens.cache_write_1h_tokens, tokens.cache_write_tokens)
        usd = (
            (uncached - audio_uncached) * price.input
            + (tokens.cache_read_tokens - audio_cached) * price.cache_read
            + (tokens.cache_write_tokens - one_hour) * price.cache_write
            + one_hour * price.cache_write_1h
            + (tokens.completion_tokens - audio_out) * price.output
        ) / PER_TOKENS
        if audio_in or audio_out:  # (a price is None only where its count is 0, checked above)
            usd += (audio_uncached * (price.audio_input or 0.0) + audio_cached * (price.audio_cache_read or 0.0)
                    + audio_out * (price.audio_output or 0.0)) / PER_TOKENS
        if tokens.web_search_requests:
            usd += tokens.web_search_requests * (price.web_search or 0.0) / 1000
        return round(usd, 12)


def _read(path: Path, source: str) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"{source}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:
        raise ValueError(f"{source}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{source}: expected a JSON object of provider sections")
    return doc
