"""Cost registry: model prices and the cost of one request from its token usage.

The registry ships as cost_registry.json; HELICONE_COST_REGISTRY_FILE names a file of the same shape
merged over it (an entry replaces the shipped entry of that name, `null` removes one). A model is
found in its provider's section (every section when the provider has none): by exact name, else by
the first entry whose `regex` / `pattern` (glob) matches, else by the longest entry name it starts
with, unless the rest names another version of it (claude-opus-4-6 is not claude-opus-4) or goes on with the number
its name ends with (gpt-realtime-2025-08-28 is not gpt-realtime-2); a fine-tune (ft:<model>:...) only by the ft:
entries; a Bedrock id of an Anthropic model is looked up as the whole id, then as the model's own name.
Tiers price the whole request differently above a prompt size (long-context pricing). Models billed by something
else than tokens are priced by it: the characters of their input (tts-1), the minutes of their input audio
(whisper-1), their images by quality and size (dall-e). An entry may also carry its model's context window
(`context_window`, tokens), found by the same matching: the gateway's Helicone-Token-Limit-Exception-Handler reads it
(context_window)."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .settings import env_name

PER_TOKENS = 1_000_000
PER_CHARACTERS = 1_000_000  # `characters` is USD per 1M characters
# Bedrock's id of an Anthropic model, "anthropic.<model>-v<N>:<M>", with a geography in front for a cross-region
# inference profile ("us.", "eu.", "apac.", "au.", "jp.", "global."): priced as <model> unless an entry
# matches the whole id (the geographic profiles of newer models cost more). GovCloud's "us-gov." is not among them.
_BEDROCK_ANTHROPIC = re.compile(r"(?:(?:us|eu|apac|au|jp|global)\.)?anthropic\.(claude-.+?)(?:-v[0-9]+(?::[0-9]+)?)?")
# The longest-prefix fallback stops at a different version of the entry's model: "claude-opus-4-6" is not
# "claude-opus-4", nor "gpt-4.5" "gpt-4" (newer versions are priced apart, often lower); a snapshot's date is no version
# ("gpt-4-0613", "claude-opus-4-20250514"), nor a size ("qwen3-8b"). Matched where the entry's name ends: a number of
# one or two digits (after "-", "." or none) that ends the name or a part of it.
_OTHER_VERSION = re.compile(r"[-.]?[0-9]{1,2}(?![0-9a-z])")
_PRICE_FIELDS = ("input", "output", "cache_read", "cache_write", "cache_write_1h", "audio_input", "audio_output", "audio_cache_read",
                 "image_input", "image_output", "image_cache_read")
# A model's prices of what it bills besides tokens, whatever its prompt's tier: web_search (USD per 1,000 searches of a
# server-side web search tool, Anthropic's), characters (USD per 1M characters of input: tts-1), audio_minute (USD per
# minute of input audio: whisper-1), images (USD per image, by quality then size: dall-e)
_UNIT_FIELDS = ("web_search", "characters", "audio_minute", "images")
_UNITS = {"web_search": "USD per 1,000 searches", "characters": "USD per 1M characters", "audio_minute": "USD per minute of audio"}
# a model priced by one of these needs no token price (a request that reports tokens to it has no cost)
_BILLED_BY_UNIT = ("characters", "audio_minute", "images")
# context_window: the model's context window in tokens (prompt and completion together), as its provider documents it
_ENTRY_FIELDS = {*_PRICE_FIELDS, *_UNIT_FIELDS, "tiers", "pattern", "regex", "context_window"}
_TIER_FIELDS = {*_PRICE_FIELDS, "above"}
_IMAGE_SIZE = re.compile(r"[1-9][0-9]{1,4}x[1-9][0-9]{1,4}")  # WIDTHxHEIGHT, as the Images API's `size`


@dataclass(frozen=True)
class Price:
    # None for a model not billed by that kind of token (tts-1, whisper-1, dall-e; gpt-image's text output): a request
    # that reports such tokens has no cost rather than one that leaves them out
    input: float | None
    output: float | None
    cache_read: float | None
    cache_write: float | None
    cache_write_1h: float | None  # a prompt-cache write kept for an hour (Anthropic's 1-hour TTL), where it costs more
    # audio tokens (OpenAI's audio, realtime and transcribe models), None where the registry has no audio price:
    # a request that used audio then has no cost rather than one priced at the text rate
    audio_input: float | None = None
    audio_output: float | None = None
    audio_cache_read: float | None = None
    # image tokens (gpt-image's usage: input_tokens_details.image_tokens, its output; the Realtime API's
    # input_token_details.image_tokens), None where the registry has none; image_cache_read has no default: cached image
    # tokens to a model without that price have no cost
    image_input: float | None = None
    image_output: float | None = None
    image_cache_read: float | None = None
    # USD per 1,000 web searches (Anthropic's usage.server_tool_use.web_search_requests), None where the registry has
    # none: a request that searched then has no cost rather than one without its searches
    web_search: float | None = None
    characters: float | None = None  # USD per 1M characters of input (tts-1)
    audio_minute: float | None = None  # USD per minute of input audio (whisper-1), billed to the nearest second
    images: tuple[tuple[str, str, float], ...] = ()  # (quality, size, USD per image) of a model billed per image
    # (prompt tokens above which it applies, price), ascending: the whole request is priced at the
    # highest tier its prompt exceeds
    tiers: tuple[tuple[int, Price], ...] = ()

    def for_prompt(self, prompt_tokens: int) -> Price:
        chosen = self
        for above, tier in self.tiers:
            if prompt_tokens > above:
                chosen = tier
        return chosen

    def image(self, quality: str, size: str) -> float | None:
        """USD per image of this quality and size; None where the model has no such price. Quality "" (the request did
        not tell it): the price of that size where every quality the model has it in costs the same (dall-e-2's one)."""
        prices = {usd for q, s, usd in self.images if s == size and (q == quality or not quality)}
        return prices.pop() if len(prices) == 1 else None


@dataclass(frozen=True)
class TokenCounts:
    """What a request is billed for. prompt_tokens counts every prompt token, cached or not; the cache, audio and
    image counts are subsets of it (of completion_tokens). Models billed otherwise count characters, audio seconds
    or images. Every field adds up (a Realtime session sums its responses')."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0  # of cache_write_tokens, those written for an hour (priced at cache_write_1h)
    audio_prompt_tokens: int = 0  # of prompt_tokens, those that are audio (cached or not)
    audio_cache_read_tokens: int = 0  # of audio_prompt_tokens, those read from the cache (of cache_read_tokens too)
    audio_completion_tokens: int = 0  # of completion_tokens, those that are audio
    image_prompt_tokens: int = 0  # of prompt_tokens, those that are images (gpt-image's input_tokens_details, Realtime's)
    image_cache_read_tokens: int = 0  # of image_prompt_tokens, those read from the cache (of cache_read_tokens too)
    # of cache_read_tokens, those the usage tells the kind of (text, audio or image: Realtime's cached_tokens_details); a
    # prompt with image tokens and cached tokens of no told kind has no cost (which of them are images is unknown)
    cache_read_split_tokens: int = 0
    image_completion_tokens: int = 0  # of completion_tokens, those that are images (gpt-image's output)
    web_search_requests: int = 0  # searches a server-side web search tool ran (billed per search, besides tokens)
    characters: int = 0  # characters of input of a model billed by them (tts-1: the request's `input`)
    audio_seconds: float = 0.0  # seconds of input audio of a model billed by its length (whisper-1: the answer's)
    # images of a model billed per image (dall-e): (quality, size, how many), as the request asked for them; quality ""
    # where it did not tell (a streamed upload's form cut before it): priced where the size has one price
    images: tuple[tuple[str, str, int], ...] = ()


def _number(where: str, name: str, value, unit: str = "USD per 1M tokens") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"{where}: {name} must be a number >= 0 ({unit}), got {value!r}")
    return float(value)


def _images(where: str, table) -> tuple[tuple[str, str, float], ...]:
    """`images`: {quality: {size: USD per image}}, e.g. {"standard": {"1024x1024": 0.04}}."""
    form = 'an object of qualities, each an object of sizes ("1024x1024") and USD per image'
    if not isinstance(table, dict) or not table:
        raise ValueError(f"{where}: images must be {form}, got {table!r}")
    out = []
    for quality, sizes in table.items():
        if not quality:
            raise ValueError(f"{where}: images: a quality needs a name (\"standard\", \"hd\")")
        if not isinstance(sizes, dict) or not sizes:
            raise ValueError(f"{where}: images.{quality} must be an object of sizes (\"1024x1024\") and USD per image, got {sizes!r}")
        for size, usd in sizes.items():
            if not _IMAGE_SIZE.fullmatch(size):
                raise ValueError(f"{where}: images.{quality}: {size!r} is no size; accepted: WIDTHxHEIGHT, e.g. \"1024x1024\"")
            out.append((quality, size, _number(where, f"images.{quality}.{size}", usd, "USD per image")))
    return tuple(out)


def _price(where: str, p: dict, fields: set[str]) -> Price:
    if not isinstance(p, dict):
        raise ValueError(f"{where}: expected an object with input and output prices, got {p!r}")
    unknown = set(p) - fields
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; accepted: {sorted(fields)}")
    # a model billed by characters, audio minutes or images needs no token price, one whose output is images
    # (image_output) no text output price: tokens it has no price for give a request no cost
    by_unit = any(name in p for name in _BILLED_BY_UNIT)
    for req, spared in (("input", by_unit), ("output", by_unit or "image_output" in p)):
        if req not in p and not spared:
            raise ValueError(f"{where}: {req} is missing")

    def number(name: str, default=None) -> float | None:
        value = p.get(name, default)
        return None if value is None else _number(where, name, value)

    inp = number("input")
    write = number("cache_write", inp)
    extra = {name: number(name) for name in ("audio_input", "audio_output", "image_input", "image_output", "image_cache_read")
             if name in p}
    if "audio_cache_read" in p or "audio_input" in extra:
        extra["audio_cache_read"] = number("audio_cache_read", extra.get("audio_input"))
    for name in ("web_search", "characters", "audio_minute"):
        if name in p:
            extra[name] = _number(where, name, p[name], _UNITS[name])
    if "images" in p:
        extra["images"] = _images(where, p["images"])
    return Price(
        input=inp,
        output=number("output"),
        cache_read=number("cache_read", inp),
        cache_write=write,
        cache_write_1h=number("cache_write_1h", write),
        **extra,
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
        tiers.append((above, dataclasses.replace(_price(tw, t, _TIER_FIELDS), web_search=price.web_search,
                                                 characters=price.characters, audio_minute=price.audio_minute,
                                                 images=price.images)))
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
            if (model.startswith(candidate) and not _OTHER_VERSION.match(model, len(candidate))
                    and not (candidate[-1:].isdigit() and model[len(candidate):len(candidate) + 1].isdigit())):
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
        """USD, or None when the model has no price here, or none for something the request was billed for (audio or
        image tokens, text tokens to a model billed otherwise, web searches, characters, audio, an image's size and
        quality), or counts nothing a model billed only otherwise is billed by."""
        base = self.price(provider, model)
        if base is None:
            return None
        price = base.for_prompt(tokens.prompt_tokens)
        audio_in = min(tokens.audio_prompt_tokens, tokens.prompt_tokens)
        audio_cached = min(tokens.audio_cache_read_tokens, audio_in, tokens.cache_read_tokens)
        audio_out = min(tokens.audio_completion_tokens, tokens.completion_tokens)
        image_in = min(tokens.image_prompt_tokens, tokens.prompt_tokens - audio_in)
        image_cached = min(tokens.image_cache_read_tokens, image_in, tokens.cache_read_tokens - audio_cached)
        image_out = min(tokens.image_completion_tokens, tokens.completion_tokens - audio_out)
        if image_in and (tokens.cache_write_tokens or tokens.cache_read_tokens > tokens.cache_read_split_tokens):
            return None  # which of the cached tokens are images is not reported
        uncached = max(tokens.prompt_tokens - tokens.cache_read_tokens - tokens.cache_write_tokens, 0)
        audio_uncached = min(audio_in - audio_cached, uncached)
        image_uncached = min(image_in - image_cached, uncached - audio_uncached)
        one_hour = min(tokens.cache_write_1h_tokens, tokens.cache_write_tokens)
        # (count, USD per 1M): a count without a price gives no cost, never one that leaves it out
        counted = (
            (max(uncached - audio_uncached - image_uncached, 0), price.input),
            (tokens.cache_read_tokens - audio_cached - image_cached, price.cache_read),
            (tokens.cache_write_tokens - one_hour, price.cache_write),
            (one_hour, price.cache_write_1h),
            (tokens.completion_tokens - audio_out - image_out, price.output),
            (audio_uncached, price.audio_input),
            (audio_cached, price.audio_cache_read),
            (audio_out, price.audio_output),
            (image_uncached, price.image_input),
            (image_cached, price.image_cache_read),
            (image_out, price.image_output),
        )
        usd = 0.0
        for count, per_million in counted:
            if count:
                if per_million is None:
                    return None
                usd += count * per_million
        usd /= PER_TOKENS
        billed = False
        if tokens.characters:
            if price.characters is None:
                return None
            usd += tokens.characters * price.characters / PER_CHARACTERS
            billed = True
        if tokens.audio_seconds:
            if price.audio_minute is None:
                return None
            usd += math.floor(tokens.audio_seconds + 0.5) * price.audio_minute / 60  # to the nearest second
            billed = True
        for quality, size, n in tokens.images:
            each = price.image(quality, size)
            if each is None:
                return None
            usd += n * each
            billed = True
        if not billed and price.input is None and price.output is None:
            return None  # a model billed only by characters, audio or images, and none counted: unknown, not $0
        if tokens.web_search_requests:
            if price.web_search is None:
                return None
            usd += tokens.web_search_requests * price.web_search / 1000
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
