"""Cost registry: model prices and the cost of one request from its token usage."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

PER_TOKENS = 1_000_000


@dataclass(frozen=True)
class Price:
    input: float
    output: float
    cache_read: float
    cache_write: float


@dataclass(frozen=True)
class TokenCounts:
    """prompt_tokens counts every prompt token, cached or not; the cache counts are subsets of it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


class CostRegistry:
    def __init__(self, table: dict[str, dict[str, dict[str, float]]]) -> None:
        self._prices: dict[str, dict[str, Price]] = {}
        for provider, models in table.items():
            if provider.startswith("_"):
                continue
            parsed: dict[str, Price] = {}
            for model, p in models.items():
                try:
                    parsed[model.lower()] = Price(
                        input=float(p["input"]),
                        output=float(p["output"]),
                        cache_read=float(p.get("cache_read", p["input"])),
                        cache_write=float(p.get("cache_write", p["input"])),
                    )
                except (KeyError, TypeError, ValueError) as exc:
                    raise ValueError(f"cost registry: bad price for {provider}/{model}: {exc}") from exc
            self._prices[provider.lower()] = parsed
        # longest prefix first so gpt-4o-mini wins over gpt-4o
        self._ordered = {
            prov: sorted(models, key=len, reverse=True) for prov, models in self._prices.items()
        }

    @classmethod
    def default(cls) -> CostRegistry:
        text = resources.files(__package__).joinpath("cost_registry.json").read_text()
        return cls(json.loads(text))

    @classmethod
    def from_file(cls, path: Path) -> CostRegistry:
        return cls(json.loads(Path(path).read_text()))

    @classmethod
    def load(cls, path: Path | None) -> CostRegistry:
        """The registry in `path` (HELICONE_COST_REGISTRY_FILE), else the one shipped here."""
        return cls.from_file(path) if path else cls.default()

    def _match(self, provider: str, model: str) -> tuple[str, Price] | None:
        """(the registry's name for the model, its price)."""
        model = model.lower().strip()
        if not model:
            return None
        # providers prefix models in some APIs ("openai/gpt-4o"); fine-tunes look like "ft:gpt-4o:org::id"
        if model.startswith("ft:"):
            model = model[3:]
        model = model.rsplit("/", 1)[-1]
        providers = [provider.lower()] if provider.lower() in self._prices else list(self._prices)
        for prov in providers:
            models = self._prices[prov]
            if model in models:
                return model, models[model]
            for candidate in self._ordered[prov]:
                if model.startswith(candidate):
                    return candidate, models[candidate]
        return None

    def price(self, provider: str, model: str) -> Price | None:
        match = self._match(provider, model)
        return match[1] if match else None

    def canonical_model(self, provider: str, model: str) -> str | None:
        """The registry's name for a model ("gpt-4o-2024-08-06" -> "gpt-4o"), None if it has no
        price here: a value from a fixed set, fit for a metric label, whatever the caller sent."""
        match = self._match(provider, model)
        return match[0] if match else None

    def cost(self, provider: str, model: str, tokens: TokenCounts) -> float | None:
        price = self.price(provider, model)
        if price is None:
            return None
        uncached = max(tokens.prompt_tokens - tokens.cache_read_tokens - tokens.cache_write_tokens, 0)
        usd = (
            uncached * price.input
            + tokens.cache_read_tokens * price.cache_read
            + tokens.cache_write_tokens * price.cache_write
            + tokens.completion_tokens * price.output
        ) / PER_TOKENS
        return round(usd, 12)
