import json

import pytest
from helicone_core.cost import CostRegistry, TokenCounts


def test_longest_prefix_wins_for_dated_models():
    reg = CostRegistry.default()
    assert reg.price("openai", "gpt-4o-mini-2024-07-18") == reg.price("openai", "gpt-4o-mini")
    assert reg.price("openai", "gpt-4o-2024-08-06") == reg.price("openai", "gpt-4o")
    assert reg.price("openai", "gpt-4o-mini").input == 0.15
    assert reg.price("openai", "gpt-4o").input == 2.50


def test_unknown_model_has_no_cost():
    reg = CostRegistry.default()
    assert reg.cost("openai", "my-private-model", TokenCounts(10, 10)) is None
    assert reg.cost("openai", "", TokenCounts(10, 10)) is None


def test_openai_cost_with_cached_prompt_tokens():
    reg = CostRegistry.default()
    # gpt-4o: 2.50 in, 1.25 cached in, 10.00 out per 1M
    cost = reg.cost("openai", "gpt-4o", TokenCounts(prompt_tokens=1000, completion_tokens=500, cache_read_tokens=400))
    assert cost == pytest.approx((600 * 2.50 + 400 * 1.25 + 500 * 10.0) / 1e6)


def test_anthropic_cost_with_cache_write_and_read():
    reg = CostRegistry.default()
    # claude-sonnet-4: 3 in, 3.75 cache write, 0.30 cache read, 15 out
    tokens = TokenCounts(prompt_tokens=100 + 2000 + 5000, completion_tokens=300, cache_write_tokens=2000, cache_read_tokens=5000)
    cost = reg.cost("anthropic", "claude-sonnet-4-20250514", tokens)
    assert cost == pytest.approx((100 * 3 + 2000 * 3.75 + 5000 * 0.30 + 300 * 15) / 1e6)


def test_provider_prefixed_and_finetuned_model_names():
    reg = CostRegistry.default()
    assert reg.price("openai", "openai/gpt-4o-mini") == reg.price("openai", "gpt-4o-mini")
    assert reg.price("openai", "ft:gpt-4o-mini-2024-07-18:acme::abc123") == reg.price("openai", "gpt-4o-mini")


def test_bad_registry_file_is_a_clear_error(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"openai": {"x": {"input": "cheap"}}}))
    with pytest.raises(ValueError, match="openai/x"):
        CostRegistry.from_file(path)


def test_canonical_model_names_come_from_the_registry_only():
    reg = CostRegistry.default()
    assert reg.canonical_model("openai", "gpt-4o-mini-2024-07-18") == "gpt-4o-mini"
    assert reg.canonical_model("openai", "GPT-4o") == "gpt-4o"
    assert reg.canonical_model("openai", "ft:gpt-4o-mini-2024-07-18:acme::abc123") == "gpt-4o-mini"
    assert reg.canonical_model("anthropic", "claude-3-5-haiku-20241022") == "claude-3-5-haiku"
    assert reg.canonical_model("together", "openai/gpt-4o") == "gpt-4o"  # unknown provider: every provider's names
    assert reg.canonical_model("openai", "my-team-finetune-9000") is None
    assert reg.canonical_model("openai", "") is None


def test_load_takes_a_file_or_the_shipped_registry(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"openai": {"house-model": {"input": 1, "output": 2}}}))
    assert CostRegistry.load(path).canonical_model("openai", "house-model-v2") == "house-model"
    assert CostRegistry.load(None).canonical_model("openai", "house-model-v2") is None
