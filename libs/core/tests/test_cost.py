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
    # a fine-tune is priced at its own (fine-tuned inference) price, not its base model's: see below
    assert reg.price("openai", "ft:gpt-4o-mini-2024-07-18:acme::abc123") == reg.price("openai", "ft:gpt-4o-mini")


def test_bad_registry_file_is_a_clear_error(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"openai": {"x": {"input": "cheap"}}}))
    with pytest.raises(ValueError, match="openai/x"):
        CostRegistry.from_file(path)


def test_canonical_model_names_come_from_the_registry_only():
    reg = CostRegistry.default()
    assert reg.canonical_model("openai", "gpt-4o-mini-2024-07-18") == "gpt-4o-mini"
    assert reg.canonical_model("openai", "GPT-4o") == "gpt-4o"
    assert reg.canonical_model("openai", "ft:gpt-4o-mini-2024-07-18:acme::abc123") == "ft:gpt-4o-mini"
    assert reg.canonical_model("anthropic", "claude-3-5-haiku-20241022") == "claude-3-5-haiku"
    assert reg.canonical_model("openrouter", "openai/gpt-4o") == "gpt-4o"  # provider without a section: every section
    assert reg.canonical_model("openai", "my-team-finetune-9000") is None
    assert reg.canonical_model("openai", "") is None


def test_load_takes_a_file_or_the_shipped_registry(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"openai": {"house-model": {"input": 1, "output": 2}}}))
    assert CostRegistry.load(path).canonical_model("openai", "house-model-v2") == "house-model"
    assert CostRegistry.load(None).canonical_model("openai", "house-model-v2") is None


def test_every_routed_provider_is_priced_or_falls_back_to_every_section():
    from helicone_core.providers import PROVIDER_NAMES

    shipped = json.loads((__import__("importlib").resources.files("helicone_core") / "cost_registry.json").read_text())
    assert {"as_of", "source"} <= set(shipped["_meta"])
    # azure serves OpenAI's models, openrouter and bedrock every vendor's: their models are found in every section
    # (Bedrock's ids of Anthropic's models as the model, the others unpriced: test_bedrock_ids_...)
    assert set(PROVIDER_NAMES) - set(shipped) == {"azure", "openrouter", "bedrock"}
    assert set(shipped) - {"_meta"} <= set(PROVIDER_NAMES)
    reg = CostRegistry.default()
    assert reg.canonical_model("azure", "gpt-4o-2024-11-20") == "gpt-4o"
    assert reg.canonical_model("openrouter", "google/gemini-2.5-flash") == "gemini-2.5-flash"


def test_current_models_of_each_provider():
    reg = CostRegistry.default()
    cases = {
        ("openai", "gpt-5.1-2025-11-13"): (1.25, 10.0, 0.125),
        ("openai", "gpt-5-mini-2025-08-07"): (0.25, 2.0, 0.025),
        ("anthropic", "claude-opus-4-5-20251101"): (5.0, 25.0, 0.50),
        ("anthropic", "claude-haiku-4-5"): (1.0, 5.0, 0.10),
        ("gemini", "gemini-2.5-flash"): (0.30, 2.50, 0.03),
        ("gemini", "gemini-2.5-flash-lite-preview-09-2025"): (0.10, 0.40, 0.01),
        ("groq", "llama-3.3-70b-versatile"): (0.59, 0.79, 0.59),
        ("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo"): (0.88, 0.88, 0.88),
        ("mistral", "mistral-small-latest"): (0.10, 0.30, 0.10),
        ("deepseek", "deepseek-chat"): (0.28, 0.42, 0.028),
        ("xai", "grok-4-fast-reasoning"): (0.20, 0.50, 0.05),
        ("xai", "grok-4-0709"): (3.0, 15.0, 0.75),
        ("fireworks", "accounts/fireworks/models/llama-v3p3-70b-instruct"): (0.90, 0.90, 0.90),
    }
    for (provider, model), want in cases.items():
        p = reg.price(provider, model)
        assert p is not None, (provider, model)
        assert (p.input, p.output, p.cache_read) == want, (provider, model)


def test_regex_entries_come_before_prefixes():
    reg = CostRegistry.default()
    # OpenRouter spells versions with a dot: "claude-opus-4.5" must not fall to the claude-opus-4 prefix ($15)
    assert reg.canonical_model("openrouter", "anthropic/claude-opus-4.5") == "claude-opus-4-5"
    assert reg.price("anthropic", "claude-opus-4.5").input == 5.0
    assert reg.canonical_model("anthropic", "claude-opus-4-20250514") == "claude-opus-4"
    # a glob over the whole name
    assert reg.canonical_model("groq", "meta-llama/llama-4-scout-17b-16e-instruct") == "llama-4-scout"
    assert reg.canonical_model("groq", "not-llama-4-scout-x") is None


def test_long_context_tier_prices_the_whole_request():
    reg = CostRegistry.default()
    # gemini-2.5-pro: 1.25 in / 10 out / 0.125 cached up to 200K prompt tokens; 2.50 / 15 / 0.25 above
    small = TokenCounts(prompt_tokens=200_000, completion_tokens=1000, cache_read_tokens=50_000)
    assert reg.cost("gemini", "gemini-2.5-pro", small) == pytest.approx((150_000 * 1.25 + 50_000 * 0.125 + 1000 * 10) / 1e6)
    big = TokenCounts(prompt_tokens=200_001, completion_tokens=1000, cache_read_tokens=50_000)
    assert reg.cost("gemini", "gemini-2.5-pro", big) == pytest.approx((150_001 * 2.5 + 50_000 * 0.25 + 1000 * 15) / 1e6)
    # Claude Sonnet 4.5 with the 1M context: every prompt token (cache reads and writes included) counts toward the 200K
    tokens = TokenCounts(prompt_tokens=250_000, completion_tokens=100, cache_read_tokens=100_000, cache_write_tokens=100_000)
    assert reg.cost("anthropic", "claude-sonnet-4-5-20250929", tokens) == pytest.approx(
        (50_000 * 6.0 + 100_000 * 0.60 + 100_000 * 7.50 + 100 * 22.5) / 1e6)


def test_override_file_replaces_extends_and_removes(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({
        "_meta": {"source": "our contract"},
        "openai": {"gpt-4o": {"input": 2.0, "output": 8.0}, "gpt-4": None},
        "groq": {"house-llama": {"regex": "^house-llama-v[0-9]+$", "input": 0.1, "output": 0.2,
                                 "tiers": [{"above": 1000, "input": 1, "output": 2}]}},
        "vllm": {"qwen3": {"input": 0.01, "output": 0.02}},
    }))
    reg = CostRegistry.load(path)
    assert reg.price("openai", "gpt-4o-2024-08-06").input == 2.0
    assert reg.price("openai", "gpt-4o").cache_read == 2.0  # the replaced entry gave none: the input price
    assert reg.price("openai", "gpt-4o-mini").input == 0.15  # shipped entries stay
    assert reg.canonical_model("openai", "gpt-4-0613") is None  # removed
    assert reg.price("groq", "llama-3.3-70b-versatile").input == 0.59
    assert reg.cost("groq", "house-llama-v3", TokenCounts(1000, 10)) == pytest.approx((1000 * 0.1 + 10 * 0.2) / 1e6)
    assert reg.cost("groq", "house-llama-v3", TokenCounts(1001, 10)) == pytest.approx((1001 * 1 + 10 * 2) / 1e6)
    assert reg.canonical_model("vllm", "qwen3-8b") == "qwen3"


@pytest.mark.parametrize("entry, message", [
    ({"input": 1}, "groq/bad: output is missing"),
    ({"input": -1, "output": 1}, "groq/bad: input must be a number >= 0"),
    ({"input": 1, "output": 1, "cached": 0.5}, r"groq/bad: unknown field\(s\) \['cached'\]"),
    ({"input": 1, "output": 1, "regex": "(unclosed"}, "groq/bad: not a valid regex"),
    ({"input": 1, "output": 1, "regex": "a", "pattern": "a*"}, "groq/bad: give regex or pattern"),
    ({"input": 1, "output": 1, "tiers": [{"above": "200k", "input": 1, "output": 1}]}, r"groq/bad: tiers\[0\]: above must be"),
    ({"input": 1, "output": 1, "tiers": [{"above": 10, "input": 1}]}, r"groq/bad: tiers\[0\]: output is missing"),
])
def test_bad_override_entry_is_named_with_the_file(tmp_path, entry, message):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"groq": {"bad": entry}}))
    with pytest.raises(ValueError, match=message) as err:
        CostRegistry.load(path)
    assert f"cost registry {path} (HELICONE_COST_REGISTRY_FILE): " in str(err.value)


def test_unreadable_or_non_json_override_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read it"):
        CostRegistry.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad.json \(HELICONE_COST_REGISTRY_FILE\): not JSON"):
        CostRegistry.load(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text(json.dumps({"openai": ["gpt-4o"]}))
    with pytest.raises(ValueError, match="openai: expected an object of model prices"):
        CostRegistry.load(tmp_path / "list.json")


def test_anthropic_cache_writes_kept_for_an_hour_cost_twice_the_input_price():
    """Anthropic prices a prompt-cache write by its TTL: 1.25x the input price for 5 minutes, 2x for an hour
    (usage.cache_creation.ephemeral_1h_input_tokens). Every write was priced as a 5-minute one: an hour's
    writes were logged at 62.5 % of their cost."""
    from helicone_core.usage import parse_response

    usage_ = {"input_tokens": 100, "cache_creation_input_tokens": 3000, "cache_read_input_tokens": 5000, "output_tokens": 300,
              "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000}}
    expected = (100 * 3 + 1000 * 3.75 + 2000 * 6.0 + 5000 * 0.30 + 300 * 15) / 1e6  # claude-sonnet-4
    body = json.dumps({"model": "claude-sonnet-4-20250514", "usage": usage_}).encode()
    start = {k: v for k, v in usage_.items() if k != "output_tokens"} | {"output_tokens": 1}
    stream = (b"event: message_start\ndata: " + json.dumps({"type": "message_start", "message": {
        "model": "claude-sonnet-4-20250514", "usage": start}}).encode() + b"\n\n"
        b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":300}}\n\n')
    reg = CostRegistry.default()
    for parsed in (parse_response("anthropic", body, "application/json"), parse_response("anthropic", stream, "text/event-stream")):
        assert (parsed.tokens.cache_write_tokens, parsed.tokens.cache_write_1h_tokens) == (3000, 2000)
        assert reg.cost("anthropic", parsed.model, parsed.tokens) == pytest.approx(expected)
    # the long-context tier has its own hour price (2x its input: 12)
    long_ = TokenCounts(prompt_tokens=250_000, completion_tokens=0, cache_write_tokens=10_000, cache_write_1h_tokens=10_000)
    assert reg.cost("anthropic", "claude-sonnet-4", long_) == pytest.approx((240_000 * 6.0 + 10_000 * 12.0) / 1e6)


def test_a_registry_entry_without_an_hour_price_prices_those_writes_as_any_cache_write(tmp_path):
    override = tmp_path / "costs.json"
    override.write_text(json.dumps({"anthropic": {"claude-custom": {"input": 1.0, "output": 2.0, "cache_write": 1.5}}}))
    reg = CostRegistry.load(override)
    tokens = TokenCounts(prompt_tokens=1000, cache_write_tokens=1000, cache_write_1h_tokens=600)
    assert reg.cost("anthropic", "claude-custom", tokens) == pytest.approx(1000 * 1.5 / 1e6)
    override.write_text(json.dumps({"anthropic": {"claude-custom": {"input": 1.0, "output": 2.0, "cache_write_1h": -1}}}))
    with pytest.raises(ValueError, match="cache_write_1h must be a number >= 0"):
        CostRegistry.load(override)


# OpenAI's pricing page (platform.openai.com/docs/pricing; the same in LiteLLM's model_prices_and_context_window.json):
# models whose names start with a listed family's name but are priced apart from it. The longest-prefix fallback
# priced them as the family: gpt-5.2-pro at 1/12 of its price, the gpt-4 turbo previews at 3x, Azure's gpt-35-turbo not at all.
@pytest.mark.parametrize("model, want", [
    ("gpt-4o-2024-05-13", (5.0, 15.0, 5.0)),  # the first gpt-4o snapshot: $5 / $15, no cached-input discount
    ("gpt-5.2-pro", (21.0, 168.0, 21.0)),
    ("gpt-5.2-pro-2025-12-11", (21.0, 168.0, 21.0)),
    ("gpt-5.1-codex-mini", (0.25, 2.0, 0.025)),
    ("o3-deep-research-2025-06-26", (10.0, 40.0, 2.50)),
    ("o4-mini-deep-research", (2.0, 8.0, 0.50)),
    ("gpt-4-0125-preview", (10.0, 30.0, 10.0)),  # GPT-4 Turbo previews, not GPT-4's $30 / $60
    ("gpt-4-1106-preview", (10.0, 30.0, 10.0)),
    ("gpt-4-vision-preview", (10.0, 30.0, 10.0)),
    ("gpt-35-turbo", (0.50, 1.50, 0.50)),  # Azure's name for gpt-3.5-turbo (its answers' `model`)
    # Retired snapshots, at the prices OpenAI listed for them (its pricing page's legacy models and the
    # deprecations page, platform.openai.com/docs/deprecations; LiteLLM's gpt-3.5-turbo-16k, -1106 and -instruct
    # entries agree): they were priced as gpt-4 ($30 / $60) or gpt-3.5-turbo ($0.50 / $1.50).
    ("gpt-4-32k", (60.0, 120.0, 60.0)),
    ("gpt-4-32k-0613", (60.0, 120.0, 60.0)),
    ("gpt-4-32k-0314", (60.0, 120.0, 60.0)),
    ("gpt-4-0314", (30.0, 60.0, 30.0)),  # the first gpt-4 snapshot: gpt-4's price
    ("gpt-3.5-turbo-16k", (3.0, 4.0, 3.0)),
    ("gpt-3.5-turbo-16k-0613", (3.0, 4.0, 3.0)),
    ("gpt-35-turbo-16k", (3.0, 4.0, 3.0)),  # Azure's
    ("gpt-3.5-turbo-0613", (1.50, 2.0, 1.50)),
    ("gpt-3.5-turbo-0301", (1.50, 2.0, 1.50)),
    ("gpt-3.5-turbo-1106", (1.0, 2.0, 1.0)),
    ("gpt-3.5-turbo-instruct", (1.50, 2.0, 1.50)),
    ("gpt-3.5-turbo-instruct-0914", (1.50, 2.0, 1.50)),
])
def test_variants_priced_apart_from_their_family(model, want):
    reg = CostRegistry.default()
    provider = "azure" if model.startswith("gpt-35") else "openai"
    p = reg.price(provider, model)
    assert p is not None and (p.input, p.output, p.cache_read) == want, model
    # the family members around them keep their prices
    assert reg.price("openai", "gpt-4o-2024-08-06").input == 2.50
    assert reg.price("openai", "gpt-4-0613").input == 30.0
    assert reg.price("openai", "gpt-4-turbo-2024-04-09").input == 10.0
    assert reg.price("openai", "gpt-5.2-2025-12-11").input == 1.75
    assert reg.price("openai", "o3-2025-04-16").input == 2.0
    assert reg.price("openai", "gpt-3.5-turbo-0125").input == 0.50


# OpenAI's pricing page (platform.openai.com/docs/pricing, audio tokens; LiteLLM's model_prices_and_context_window.json
# input_cost_per_audio_token / output_cost_per_audio_token / cache_read_input_audio_token_cost agree, save its
# transcribe audio price: OpenAI's cookbook and page give $6 and $3 per 1M, $0.006 and $0.003 a minute).
# Audio tokens were priced at the text rate, or the model's family's (gpt-4o-audio-preview as gpt-4o).
@pytest.mark.parametrize("model, usage, want", [
    # Chat Completions: prompt_tokens_details / completion_tokens_details; text $2.50 / $10, audio $40 / $80
    ("gpt-4o-audio-preview-2024-12-17",
     {"prompt_tokens": 1000, "completion_tokens": 500, "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 800},
      "completion_tokens_details": {"audio_tokens": 400, "reasoning_tokens": 0}},
     200 * 2.50 + 800 * 40.0 + 100 * 10.0 + 400 * 80.0),
    ("gpt-4o-mini-audio-preview-2024-12-17",
     {"prompt_tokens": 1000, "completion_tokens": 500, "prompt_tokens_details": {"audio_tokens": 800},
      "completion_tokens_details": {"audio_tokens": 400}},
     200 * 0.15 + 800 * 10.0 + 100 * 0.60 + 400 * 20.0),
    ("gpt-audio-2025-08-28",
     {"prompt_tokens": 1000, "completion_tokens": 500, "prompt_tokens_details": {"audio_tokens": 800},
      "completion_tokens_details": {"audio_tokens": 400}},
     200 * 2.50 + 800 * 32.0 + 100 * 10.0 + 400 * 64.0),
    # the Realtime API's response.done usage: input_token_details (its cached audio too) / output_token_details;
    # gpt-realtime: text $4 / $16, cached $0.40; audio $32 / $64, cached audio $0.40
    ("gpt-realtime",
     {"total_tokens": 1500, "input_tokens": 1000, "output_tokens": 500,
      "input_token_details": {"cached_tokens": 600, "text_tokens": 200, "audio_tokens": 800,
                              "cached_tokens_details": {"text_tokens": 100, "audio_tokens": 500}},
      "output_token_details": {"text_tokens": 100, "audio_tokens": 400}},
     100 * 4.0 + 300 * 32.0 + 100 * 0.40 + 500 * 0.40 + 100 * 16.0 + 400 * 64.0),
    # gpt-realtime-mini's cached audio ($0.30) is not its cached text ($0.06)
    ("gpt-realtime-mini",
     {"input_tokens": 1000, "output_tokens": 500,
      "input_token_details": {"cached_tokens": 600, "audio_tokens": 800, "cached_tokens_details": {"audio_tokens": 500}},
      "output_token_details": {"audio_tokens": 400}},
     100 * 0.60 + 300 * 10.0 + 100 * 0.06 + 500 * 0.30 + 100 * 2.40 + 400 * 20.0),
    # an audio transcription's usage: input_token_details; gpt-4o-transcribe text $2.50 / $10, audio in $6
    ("gpt-4o-transcribe",
     {"type": "tokens", "input_tokens": 1014, "input_token_details": {"text_tokens": 14, "audio_tokens": 1000},
      "output_tokens": 200, "total_tokens": 1214},
     14 * 2.50 + 1000 * 6.0 + 200 * 10.0),
    ("gpt-4o-mini-transcribe",
     {"type": "tokens", "input_tokens": 1000, "input_token_details": {"text_tokens": 0, "audio_tokens": 1000},
      "output_tokens": 200},
     1000 * 3.0 + 200 * 5.0),
    # text only on an audio model: the text rate
    ("gpt-4o-audio-preview", {"prompt_tokens": 1000, "completion_tokens": 500}, 1000 * 2.50 + 500 * 10.0),
])
def test_audio_tokens_are_priced_at_the_audio_rate(model, usage, want):
    from helicone_core.usage import openai_usage

    assert CostRegistry.default().cost("openai", model, openai_usage(usage)) == pytest.approx(want / 1e6)


# The Realtime API's image input (response.done: input_token_details.image_tokens, cached_tokens_details.image_tokens):
# gpt-realtime $5 per 1M, cached $0.50 (developers.openai.com/api/docs/models/gpt-realtime-1.5, gpt-realtime-2; LiteLLM's
# gpt-realtime input_cost_per_image 5e-06); its text $4, cached $0.40. Images were priced at the text rate.
REALTIME_IMAGES = {"total_tokens": 2050, "input_tokens": 2000, "output_tokens": 50,
                   "input_token_details": {"cached_tokens": 1500, "text_tokens": 300, "audio_tokens": 500, "image_tokens": 1200,
                                           "cached_tokens_details": {"text_tokens": 100, "audio_tokens": 400,
                                                                     "image_tokens": 1000}},
                   "output_token_details": {"text_tokens": 10, "audio_tokens": 40}}


@pytest.mark.parametrize("model", ["gpt-realtime", "gpt-realtime-2025-08-28"])
def test_realtime_image_tokens_are_priced_at_the_image_rate_cached_ones_at_the_cached_image_rate(model):
    from helicone_core.usage import openai_usage

    want = (200 * 4.0 + 100 * 0.40 + 100 * 32.0 + 400 * 0.40 + 200 * 5.0 + 1000 * 0.50 + 10 * 16.0 + 40 * 64.0) / 1e6
    assert CostRegistry.default().cost("openai", model, openai_usage(REALTIME_IMAGES)) == pytest.approx(want)


def test_realtime_image_tokens_without_a_price_or_a_told_kind_are_an_unknown_cost_not_the_text_rate(tmp_path):
    from helicone_core.usage import openai_usage

    reg = CostRegistry.default()
    images = openai_usage(REALTIME_IMAGES)
    # models without an image price: gpt-realtime-mini (none published), gpt-4o-realtime-preview (takes no images)
    assert reg.cost("openai", "gpt-realtime-mini", images) is None
    assert reg.cost("openai", "gpt-4o-realtime-preview", images) is None
    # cached tokens whose kinds are not told (no cached_tokens_details): which are images is unknown
    details = REALTIME_IMAGES["input_token_details"]
    untold = {**REALTIME_IMAGES, "input_token_details": {k: v for k, v in details.items() if k != "cached_tokens_details"}}
    assert reg.cost("openai", "gpt-realtime", openai_usage(untold)) is None
    # an image input price without a cached one: cached image tokens have no cost, uncached ones are priced
    path = tmp_path / "override.json"
    path.write_text(json.dumps({"openai": {"seer": {"input": 4.0, "output": 16.0, "cache_read": 0.40, "audio_input": 32.0,
                                                    "audio_output": 64.0, "image_input": 5.0}}}))
    over = CostRegistry.load(path)
    assert over.cost("openai", "seer", images) is None
    uncached = TokenCounts(prompt_tokens=1100, completion_tokens=20, image_prompt_tokens=1050)
    assert over.cost("openai", "seer", uncached) == pytest.approx((50 * 4.0 + 1050 * 5.0 + 20 * 16.0) / 1e6)
    # a session without images is priced as it was: gpt-realtime's text and audio
    plain = openai_usage({**REALTIME_IMAGES, "input_tokens": 800,
                          "input_token_details": {"cached_tokens": 500, "text_tokens": 300, "audio_tokens": 500,
                                                  "cached_tokens_details": {"text_tokens": 100, "audio_tokens": 400}}})
    want = (200 * 4.0 + 100 * 0.40 + 100 * 32.0 + 400 * 0.40 + 10 * 16.0 + 40 * 64.0) / 1e6
    assert reg.cost("openai", "gpt-realtime", plain) == pytest.approx(want)


def test_audio_tokens_of_a_model_without_an_audio_price_are_an_unknown_cost_not_the_text_rate(tmp_path):
    reg = CostRegistry.default()
    audio_in = TokenCounts(prompt_tokens=1000, completion_tokens=10, audio_prompt_tokens=800)
    audio_out = TokenCounts(prompt_tokens=10, completion_tokens=500, audio_completion_tokens=400)
    assert reg.cost("openai", "gpt-4o", audio_in) is None
    assert reg.cost("openai", "gpt-4o", audio_out) is None
    # a transcribe model's answer is text: it has no audio output price
    assert reg.cost("openai", "gpt-4o-transcribe", audio_out) is None
    assert reg.cost("openai", "gpt-4o", TokenCounts(1000, 500)) == pytest.approx((1000 * 2.50 + 500 * 10.0) / 1e6)
    # an override gives one: audio_cache_read defaults to audio_input
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"openai": {"gpt-4o": {"input": 2.5, "output": 10.0, "audio_input": 40.0, "audio_output": 80.0}}}))
    over = CostRegistry.load(path)
    assert over.cost("openai", "gpt-4o", audio_in) == pytest.approx((200 * 2.5 + 800 * 40.0 + 10 * 10.0) / 1e6)
    assert over.price("openai", "gpt-4o").audio_cache_read == 40.0
    path.write_text(json.dumps({"openai": {"gpt-4o": {"input": 2.5, "output": 10.0, "audio_input": "dear"}}}))
    with pytest.raises(ValueError, match="openai/gpt-4o: audio_input must be a number >= 0"):
        CostRegistry.load(path)


# Bedrock names Anthropic's models anthropic.<model>-v<N>:<M>, with us. / eu. / apac. / au. / jp. / global. in front
# for a cross-region inference profile; LiteLLM's model_prices_and_context_window.json (its bedrock entries) gives
# Anthropic's own prices for them, save the geographic (not global.) profiles of Claude Sonnet, Haiku and Opus 4.5:
# 10 % more (us.anthropic.claude-sonnet-4-5-20250929-v1:0: $3.30 / $16.50, $0.33 cached). They had no cost.
@pytest.mark.parametrize("model, want, canonical", [
    ("us.anthropic.claude-3-5-sonnet-20241022-v2:0", (3.0, 15.0, 0.30), "claude-3-5-sonnet"),
    ("eu.anthropic.claude-3-5-sonnet-20240620-v1:0", (3.0, 15.0, 0.30), "claude-3-5-sonnet"),
    ("apac.anthropic.claude-sonnet-4-20250514-v1:0", (3.0, 15.0, 0.30), "claude-sonnet-4"),
    ("global.anthropic.claude-sonnet-4-5-20250929-v1:0", (3.0, 15.0, 0.30), "claude-sonnet-4-5"),
    ("anthropic.claude-3-5-haiku-20241022-v1:0", (0.80, 4.0, 0.08), "claude-3-5-haiku"),
    ("anthropic.claude-3-haiku-20240307-v1:0", (0.25, 1.25, 0.03), "claude-3-haiku"),
    ("us.anthropic.claude-3-opus-20240229-v1:0", (15.0, 75.0, 1.50), "claude-3-opus"),
    ("us.anthropic.claude-opus-4-1-20250805-v1:0", (15.0, 75.0, 1.50), "claude-opus-4-1"),
    ("anthropic.claude-opus-4-5-20251101-v1:0", (5.0, 25.0, 0.50), "claude-opus-4-5"),
    ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", (3.30, 16.50, 0.33), "claude-sonnet-4-5-bedrock-geo"),
    ("eu.anthropic.claude-haiku-4-5-20251001-v1:0", (1.10, 5.50, 0.11), "claude-haiku-4-5-bedrock-geo"),
    ("us.anthropic.claude-opus-4-5-20251101-v1:0", (5.50, 27.50, 0.55), "claude-opus-4-5-bedrock-geo"),
    # an inference profile's ARN ends with its id
    ("arn:aws:bedrock:us-east-1:111122223333:inference-profile/us.anthropic.claude-3-7-sonnet-20250219-v1:0",
     (3.0, 15.0, 0.30), "claude-3-7-sonnet"),
])
def test_bedrock_ids_of_anthropic_models_are_priced_as_the_model(model, want, canonical):
    reg = CostRegistry.default()
    for provider in ("bedrock", "aws.bedrock", "anthropic"):
        p = reg.price(provider, model)
        assert p is not None and (p.input, p.output, p.cache_read) == want, (provider, model)
        assert reg.canonical_model(provider, model) == canonical


def test_bedrock_ids_priced_otherwise_or_unknown_are_not_given_anthropics_price():
    reg = CostRegistry.default()
    # the geographic profile's premium covers its long-context tier too (LiteLLM: $6.60 in above 200K)
    long_ = TokenCounts(prompt_tokens=250_000, completion_tokens=100)
    assert reg.cost("bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0", long_) == pytest.approx(
        (250_000 * 6.60 + 100 * 24.75) / 1e6)
    # GovCloud's profiles cost more again (20 %), and Claude 2 is no model of the registry: unknown
    assert reg.price("bedrock", "us-gov.anthropic.claude-sonnet-4-5-20250929-v1:0") is None
    assert reg.price("bedrock", "anthropic.claude-v2:1") is None
    assert reg.price("bedrock", "anthropic.claude-instant-v1") is None
    # other vendors' Bedrock models are priced by Bedrock, not as the vendor's own API
    assert reg.price("bedrock", "mistral.mistral-large-2402-v1:0") is None
    assert reg.price("bedrock", "meta.llama3-3-70b-instruct-v1:0") is None


# OpenAI's pricing page (platform.openai.com/docs/pricing, "Fine-tuning": the price of a fine-tuned model's inference;
# LiteLLM's model_prices_and_context_window.json ft: entries agree): a fine-tune costs more than its base model,
# 2x for gpt-4o-mini ($0.30 / $1.20), gpt-4.1 ($3 / $12) and the rest, 1.5x for gpt-4o ($3.75 / $15), 6x in for
# gpt-3.5-turbo ($3 / $6). Fine-tunes were priced as their base model: at half their cost or less.
@pytest.mark.parametrize("model, want, canonical", [
    ("ft:gpt-4o-mini-2024-07-18:acme::abc123", (0.30, 1.20, 0.15), "ft:gpt-4o-mini"),
    ("ft:gpt-4o-mini-2024-07-18:acme:support-bot:abc123:ckpt-step-100", (0.30, 1.20, 0.15), "ft:gpt-4o-mini"),
    ("ft:gpt-4o-2024-08-06:acme::abc123", (3.75, 15.0, 1.875), "ft:gpt-4o"),
    ("ft:gpt-4.1-2025-04-14:acme::abc123", (3.0, 12.0, 0.75), "ft:gpt-4.1"),
    ("ft:gpt-4.1-mini-2025-04-14:acme::abc123", (0.80, 3.20, 0.20), "ft:gpt-4.1-mini"),
    ("ft:gpt-4.1-nano-2025-04-14:acme::abc123", (0.20, 0.80, 0.05), "ft:gpt-4.1-nano"),
    ("ft:o4-mini-2025-04-16:acme::abc123", (4.0, 16.0, 1.0), "ft:o4-mini"),
    ("ft:gpt-3.5-turbo-0125:acme::abc123", (3.0, 6.0, 3.0), "ft:gpt-3.5-turbo"),
    ("ft:gpt-3.5-turbo-1106:acme::abc123", (3.0, 6.0, 3.0), "ft:gpt-3.5-turbo"),
    ("ft:davinci-002:acme::abc123", (12.0, 12.0, 12.0), "ft:davinci-002"),
])
def test_finetuned_models_are_priced_at_the_finetuned_inference_price(model, want, canonical):
    reg = CostRegistry.default()
    for provider in ("openai", "azure"):
        p = reg.price(provider, model)
        assert p is not None and (p.input, p.output, p.cache_read) == want, (provider, model)
        assert reg.canonical_model(provider, model) == canonical
    tokens = TokenCounts(prompt_tokens=1000, completion_tokens=500)
    assert reg.cost("openai", model, tokens) == pytest.approx((1000 * want[0] + 500 * want[1]) / 1e6)


def test_a_finetune_of_a_model_without_a_finetuned_price_has_no_cost_not_the_base_price():
    reg = CostRegistry.default()
    assert reg.price("openai", "gpt-5-2025-08-07") is not None
    assert reg.cost("openai", "ft:gpt-5-2025-08-07:acme::abc123", TokenCounts(1000, 500)) is None
    assert reg.canonical_model("openai", "ft:gpt-5-2025-08-07:acme::abc123") is None


# Anthropic's pricing page (platform.claude.com/docs/en/about-claude/pricing; LiteLLM's claude-opus-4-6, -4-7 and
# claude-sonnet-4-6 entries and their Bedrock ids agree): Claude Opus 4.6 and 4.7 cost $5 / $25 like Opus 4.5, Sonnet 4.6
# $3 / $15 with its 1M context at the same price. The longest-prefix fallback priced claude-opus-4-6 as claude-opus-4
# ($15 / $75, 3x) and claude-sonnet-4-6 above 200K prompt tokens at Sonnet 4's long-context tier (2x).
@pytest.mark.parametrize("provider, model, want, canonical", [
    ("anthropic", "claude-opus-4-6", (5.0, 25.0, 0.50, 6.25, 10.0), "claude-opus-4-6"),
    ("anthropic", "claude-opus-4-6-20260205", (5.0, 25.0, 0.50, 6.25, 10.0), "claude-opus-4-6"),
    ("openrouter", "anthropic/claude-opus-4.6", (5.0, 25.0, 0.50, 6.25, 10.0), "claude-opus-4-6"),
    ("anthropic", "claude-opus-4-7-20260416", (5.0, 25.0, 0.50, 6.25, 10.0), "claude-opus-4-7"),
    ("anthropic", "claude-sonnet-4-6", (3.0, 15.0, 0.30, 3.75, 6.0), "claude-sonnet-4-6"),
    ("bedrock", "global.anthropic.claude-opus-4-6-v1", (5.0, 25.0, 0.50, 6.25, 10.0), "claude-opus-4-6"),
    ("bedrock", "us.anthropic.claude-opus-4-6-v1", (5.50, 27.50, 0.55, 6.875, 11.0), "claude-opus-4-6-bedrock-geo"),
    ("bedrock", "eu.anthropic.claude-sonnet-4-6", (3.30, 16.50, 0.33, 4.125, 6.6), "claude-sonnet-4-6-bedrock-geo"),
])
def test_current_claude_versions_at_their_own_price(provider, model, want, canonical):
    reg = CostRegistry.default()
    p = reg.price(provider, model)
    assert p is not None and (p.input, p.output, p.cache_read, p.cache_write, p.cache_write_1h) == want, model
    assert reg.canonical_model(provider, model) == canonical
    long_ = TokenCounts(prompt_tokens=500_000, completion_tokens=100)
    assert reg.cost(provider, model, long_) == pytest.approx((500_000 * want[0] + 100 * want[1]) / 1e6)


@pytest.mark.parametrize("provider, model", [
    ("anthropic", "claude-opus-4-9"),  # newer than the registry knows: not claude-opus-4's $15
    ("anthropic", "claude-opus-4-9-20270101"),
    ("openrouter", "anthropic/claude-haiku-4.7"),
    ("anthropic", "claude-sonnet-4-8"),
    ("openai", "gpt-4.5-preview"),  # GPT-4.5 ($75 / $150) is not gpt-4 ($30 / $60)
    ("openai", "gpt-5.7"),
    ("gemini", "gemini-embedding-2"),  # not gemini-embedding's price
    ("mistral", "mistral-large-3"),  # not mistral-large's $2 / $6
])
def test_a_newer_version_than_the_registry_knows_has_no_cost_not_an_older_versions_price(provider, model):
    reg = CostRegistry.default()
    assert reg.canonical_model(provider, model) is None
    assert reg.cost(provider, model, TokenCounts(1000, 500)) is None


def test_snapshots_and_sizes_are_no_other_version(tmp_path):
    reg = CostRegistry.default()
    assert reg.canonical_model("anthropic", "claude-opus-4-20250514") == "claude-opus-4"
    assert reg.canonical_model("anthropic", "claude-sonnet-4-20250514") == "claude-sonnet-4"
    assert reg.canonical_model("openai", "gpt-4-0613") == "gpt-4"
    assert reg.canonical_model("openai", "gpt-4o-2024-08-06") == "gpt-4o"
    assert reg.canonical_model("openai", "gpt-5.2-2025-12-11") == "gpt-5.2"
    assert reg.canonical_model("gemini", "gemini-2.0-flash-001") == "gemini-2.0-flash"
    assert reg.canonical_model("gemini", "gemini-embedding-001") == "gemini-embedding"
    assert reg.canonical_model("xai", "grok-4-0709") == "grok-4"
    assert reg.canonical_model("mistral", "mistral-small-2506") == "mistral-small"
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"vllm": {"qwen3": {"input": 0.01, "output": 0.02}}}))
    assert CostRegistry.load(path).canonical_model("vllm", "qwen3-8b") == "qwen3"


def test_a_snapshot_date_does_not_continue_the_version_number_an_entry_ends_with(tmp_path):
    """gpt-realtime-2025-08-28 is gpt-realtime's snapshot: it starts with gpt-realtime-2's name, whose 2 its date goes on."""
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"vllm": {"voice": {"input": 1.0, "output": 2.0}, "voice-2": {"input": 3.0, "output": 4.0}}}))
    reg = CostRegistry.from_file(path)
    assert reg.canonical_model("vllm", "voice-2025-08-28") == "voice"
    assert reg.canonical_model("vllm", "voice-2-2026-05-07") == "voice-2"
    assert reg.canonical_model("vllm", "voice-20") is None  # another version of both
    shipped = CostRegistry.default()
    assert shipped.canonical_model("openai", "gpt-realtime-2025-08-28") == "gpt-realtime"
    assert shipped.canonical_model("openai", "gpt-realtime-2") == "gpt-realtime-2"


# The models OpenAI's and Anthropic's model pages listed in December 2026 that a stored official page prices whole:
# developers.openai.com/api/docs/models/<model> (gpt-6-astra: /models/compare; gpt-6-luna, gpt-5.6-luna: ja-JP;
# gpt-realtime-2.1: zh-Hans), platform.claude.com/docs/<locale>/models/<model>/overview and /about-claude/pricing.
# (input, output, cache_read, cache_write, cache_write_1h) per 1M, the context window.
@pytest.mark.parametrize("provider, model, want, window, canonical", [
    ("openai", "gpt-6.2-sol", (2.0, 10.0, 0.10, 2.50, 2.50), 1_050_000, "gpt-6.2-sol"),
    ("openai", "gpt-6-astra", (10.0, 50.0, 1.0, 12.50, 12.50), 1_050_000, "gpt-6-astra"),
    ("openrouter", "openai/gpt-6-luna", (0.10, 0.50, 0.01, 0.125, 0.125), 1_050_000, "gpt-6-luna"),
    ("openai", "gpt-5.6-luna", (0.20, 1.20, 0.02, 0.25, 0.25), 1_050_000, "gpt-5.6-luna"),
    # realtime models report no cache writes (their usage has none): the input price stands for them
    ("openai", "gpt-realtime-2", (4.0, 24.0, 0.40, 4.0, 4.0), 128_000, "gpt-realtime-2"),
    ("openai", "gpt-realtime-2.1", (4.0, 24.0, 0.40, 4.0, 4.0), 128_000, "gpt-realtime-2.1"),
    ("openai", "gpt-realtime-2.1-mini", (0.60, 2.40, 0.06, 0.60, 0.60), 128_000, "gpt-realtime-2.1-mini"),
    ("openai", "gpt-realtime-1.5", (4.0, 16.0, 0.40, 4.0, 4.0), 32_000, "gpt-realtime-1.5"),
    ("anthropic", "claude-opus-5-20260724", (5.0, 25.0, 0.50, 6.25, 10.0), 1_000_000, "claude-opus-5"),
    ("openrouter", "anthropic/claude-opus-5.5", (4.0, 20.0, 0.20, 5.0, 8.0), 1_000_000, "claude-opus-5-5"),
    ("anthropic", "claude-sonnet-5", (2.0, 10.0, 0.20, 2.50, 4.0), 1_000_000, "claude-sonnet-5"),
    ("anthropic", "claude-sonnet-5-5", (2.0, 10.0, None, 2.50, 4.0), 1_000_000, "claude-sonnet-5-5"),
    ("anthropic", "claude-fable-5", (10.0, 50.0, 1.0, 12.50, 20.0), 1_000_000, "claude-fable-5"),
    ("anthropic", "claude-fable-5-1", (10.0, 50.0, 0.25, 12.50, 20.0), 1_000_000, "claude-fable-5-1"),
    ("anthropic", "claude-mythos-5-1", (10.0, 50.0, 0.25, 12.50, 20.0), None, "claude-mythos-5-1"),
    ("anthropic", "claude-opus-4-8", (5.0, 25.0, 0.50, 6.25, 10.0), None, "claude-opus-4-8"),
    ("bedrock", "global.anthropic.claude-opus-5-v1:0", (5.0, 25.0, 0.50, 6.25, 10.0), 1_000_000, "claude-opus-5"),
])
def test_the_newest_openai_and_claude_models_at_their_pages_prices(provider, model, want, window, canonical):
    reg = CostRegistry.default()
    p = reg.price(provider, model)
    assert p is not None and (p.input, p.output, p.cache_read, p.cache_write, p.cache_write_1h) == want, model
    assert (reg.canonical_model(provider, model), reg.context_window(provider, model)) == (canonical, window)
    assert reg.cost(provider, model, TokenCounts(1000, 100)) == pytest.approx((1000 * want[0] + 100 * want[1]) / 1e6)
    written = TokenCounts(prompt_tokens=1000, completion_tokens=100, cache_write_tokens=600)
    assert reg.cost(provider, model, written) == pytest.approx((400 * want[0] + 600 * want[3] + 100 * want[1]) / 1e6)


def test_openai_prompts_above_272k_tokens_cost_the_long_context_price_for_the_whole_request():
    """GPT-5.6 and later pages: more than 272K input tokens double the input and cache rates and take 1.5x the output."""
    reg = CostRegistry.default()
    short = TokenCounts(prompt_tokens=272_000, completion_tokens=1000, cache_read_tokens=100_000, cache_write_tokens=50_000)
    long_ = TokenCounts(prompt_tokens=272_001, completion_tokens=1000, cache_read_tokens=100_000, cache_write_tokens=50_000)
    assert reg.cost("openai", "gpt-6.2-sol", short) == pytest.approx(
        (122_000 * 2.0 + 100_000 * 0.10 + 50_000 * 2.50 + 1000 * 10.0) / 1e6)
    assert reg.cost("openai", "gpt-6.2-sol", long_) == pytest.approx(
        (122_001 * 4.0 + 100_000 * 0.20 + 50_000 * 5.0 + 1000 * 15.0) / 1e6)
    assert reg.cost("openai", "gpt-6-luna", long_) == pytest.approx(
        (122_001 * 0.20 + 100_000 * 0.02 + 50_000 * 0.25 + 1000 * 0.75) / 1e6)
    # gpt-5.6-luna's page doubles the input (cache writes are 1.25x it) and does not say what cached input costs then
    written = TokenCounts(prompt_tokens=300_000, completion_tokens=1000, cache_write_tokens=50_000)
    assert reg.cost("openai", "gpt-5.6-luna", written) == pytest.approx((250_000 * 0.40 + 50_000 * 0.50 + 1000 * 1.80) / 1e6)
    assert reg.cost("openai", "gpt-5.6-luna", long_) is None
    # gpt-6-astra's stored page states no long-context price: unknown above 272K, never the short one
    assert reg.cost("openai", "gpt-6-astra", short) is not None
    assert reg.cost("openai", "gpt-6-astra", long_) is None


@pytest.mark.parametrize("provider, model, tokens", [
    # Sonnet 5.5's stored page states $0.20 per 1M cache reads, from before the change of 2026-10-07 trackers report
    ("anthropic", "claude-sonnet-5-5", TokenCounts(prompt_tokens=1000, completion_tokens=10, cache_read_tokens=800)),
    # Bedrock's geographic profiles of the newest Claude models: no Bedrock price of theirs at hand, not Anthropic's
    ("bedrock", "us.anthropic.claude-opus-5-v1:0", TokenCounts(1000, 100)),
    ("bedrock", "eu.anthropic.claude-sonnet-5-5-v1:0", TokenCounts(1000, 100)),
    ("bedrock", "jp.anthropic.claude-opus-4-8-v1:0", TokenCounts(1000, 100)),
    # models whose prices no stored official page states whole, and newer versions than the registry knows
    ("openai", "gpt-6.2-astra", TokenCounts(1000, 100)),
    ("openai", "gpt-5.6-sol", TokenCounts(1000, 100)),
    ("openai", "gpt-realtime-2.5", TokenCounts(1000, 100)),
    ("anthropic", "claude-haiku-5-5", TokenCounts(1000, 100)),
    ("anthropic", "claude-fable-5-2", TokenCounts(1000, 100)),
    ("openrouter", "anthropic/claude-opus-5.7", TokenCounts(1000, 100)),
])
def test_what_no_stored_official_page_prices_is_an_unknown_cost(provider, model, tokens):
    assert CostRegistry.default().cost(provider, model, tokens) is None


# Google's pricing page (ai.google.dev/gemini-api/docs/pricing; LiteLLM's gemini/ entries agree): the Flash models price
# audio input above text, image and video (gemini-2.5-flash: $1.00 per 1M audio tokens, $0.30 text; cached $0.10 / $0.03),
# the Pro models one price for every modality. Native usageMetadata lists audio in promptTokensDetails (modality AUDIO),
# the cached part in cacheTokensDetails: it was priced at the text rate, a third of its price.
@pytest.mark.parametrize("model, details, cached, want", [
    ("gemini-2.5-flash", [{"modality": "TEXT", "tokenCount": 200}, {"modality": "AUDIO", "tokenCount": 800}], None,
     200 * 0.30 + 800 * 1.0 + 100 * 2.50),
    ("gemini-2.5-flash", [{"modality": "TEXT", "tokenCount": 200}, {"modality": "AUDIO", "tokenCount": 800}],
     [{"modality": "TEXT", "tokenCount": 100}, {"modality": "AUDIO", "tokenCount": 500}],
     100 * 0.30 + 300 * 1.0 + 100 * 0.03 + 500 * 0.10 + 100 * 2.50),
    ("gemini-2.5-flash-lite", [{"modality": "AUDIO", "tokenCount": 1000}], None, 1000 * 0.30 + 100 * 0.40),
    ("gemini-2.0-flash-001", [{"modality": "AUDIO", "tokenCount": 1000}], None, 1000 * 0.70 + 100 * 0.40),
    ("gemini-3-flash-preview", [{"modality": "AUDIO", "tokenCount": 1000}], None, 1000 * 1.0 + 100 * 3.0),
    # one price for every modality: audio at the input price (and the long-context tier's above 200K)
    ("gemini-2.5-pro", [{"modality": "AUDIO", "tokenCount": 1000}], None, 1000 * 1.25 + 100 * 10.0),
    ("gemini-2.5-pro", [{"modality": "AUDIO", "tokenCount": 250_000}], None, 250_000 * 2.50 + 100 * 15.0),
    ("gemini-2.5-flash", [{"modality": "TEXT", "tokenCount": 1000}, {"modality": "IMAGE", "tokenCount": 0}], None,
     1000 * 0.30 + 100 * 2.50),
])
def test_gemini_audio_is_priced_at_the_audio_rate(model, details, cached, want):
    from helicone_core.usage import parse_response

    meta = {"promptTokenCount": sum(d["tokenCount"] for d in details), "candidatesTokenCount": 100,
            "promptTokensDetails": details, **({"cacheTokensDetails": cached,
                                                "cachedContentTokenCount": sum(d["tokenCount"] for d in cached)} if cached else {})}
    body = json.dumps({"candidates": [], "usageMetadata": meta, "modelVersion": model}).encode()
    parsed = parse_response("gemini", body, "application/json")
    assert CostRegistry.default().cost("gemini", parsed.model, parsed.tokens) == pytest.approx(want / 1e6)


def test_web_searches_cost_the_fee_at_every_tier_and_no_cost_without_one():
    """Anthropic's web search: $10 per 1,000 searches besides the tokens, above the long-context tier as below it; an
    entry without a web_search price gives a request that searched no cost, never the tokens' alone."""
    reg = CostRegistry({"anthropic": {
        "searcher": {"input": 3.0, "output": 15.0, "web_search": 10.0, "tiers": [{"above": 1000, "input": 6.0, "output": 22.5}]},
        "plain": {"input": 3.0, "output": 15.0},
    }})
    searched = TokenCounts(prompt_tokens=100, completion_tokens=10, web_search_requests=3)
    assert reg.cost("anthropic", "searcher", searched) == pytest.approx((100 * 3.0 + 10 * 15.0) / 1e6 + 0.03)
    long = TokenCounts(prompt_tokens=2000, completion_tokens=10, web_search_requests=1)
    assert reg.cost("anthropic", "searcher", long) == pytest.approx((2000 * 6.0 + 10 * 22.5) / 1e6 + 0.01)
    assert reg.cost("anthropic", "plain", searched) is None
    assert reg.cost("anthropic", "plain", TokenCounts(prompt_tokens=100, completion_tokens=10)) == pytest.approx(450 / 1e6)


# OpenAI's models billed by something else than tokens (developers.openai.com/api/docs/models/tts-1, tts-1-hd, whisper-1;
# DALL-E's per-image prices as its pricing page listed them; LiteLLM's model_prices_and_context_window.json agrees:
# tts-1 1.5e-05 and tts-1-hd 3e-05 per character, whisper-1 0.0001 per second, dall-e per pixel times the pixels) and
# the GPT image models' image tokens (gpt-image-1: text $5 in, images $10 in and $40 out per 1M; gpt-image-1-mini $2,
# $2.50, $8). They had no price: their cost was unknown.
@pytest.mark.parametrize("model, counts, want", [
    ("tts-1", dict(characters=1000), 1000 * 15.0 / 1e6),
    ("tts-1-1106", dict(characters=1000), 1000 * 15.0 / 1e6),  # a snapshot: its model's price
    ("tts-1-hd", dict(characters=4096), 4096 * 30.0 / 1e6),
    ("whisper-1", dict(audio_seconds=90), 1.5 * 0.006),
    ("whisper-1", dict(audio_seconds=8.47), 8 / 60 * 0.006),  # billed to the nearest second
    ("whisper-1", dict(audio_seconds=8.5), 9 / 60 * 0.006),
    ("dall-e-3", dict(images=(("standard", "1024x1024", 1),)), 0.04),
    ("dall-e-3", dict(images=(("standard", "1792x1024", 1),)), 0.08),
    ("dall-e-3", dict(images=(("hd", "1024x1024", 1),)), 0.08),
    ("dall-e-3", dict(images=(("hd", "1024x1792", 1),)), 0.12),
    ("dall-e-2", dict(images=(("standard", "256x256", 3),)), 3 * 0.016),
    ("dall-e-2", dict(images=(("standard", "512x512", 1), ("standard", "1024x1024", 2))), 0.018 + 2 * 0.02),
    ("gpt-image-1", dict(prompt_tokens=50, completion_tokens=4160, image_completion_tokens=4160),
     (50 * 5.0 + 4160 * 40.0) / 1e6),
    ("gpt-image-1", dict(prompt_tokens=373, completion_tokens=1056, image_prompt_tokens=323, image_completion_tokens=1056),
     (50 * 5.0 + 323 * 10.0 + 1056 * 40.0) / 1e6),
    ("gpt-image-1-mini-2025-10-06", dict(prompt_tokens=373, completion_tokens=1056, image_prompt_tokens=323,
                                         image_completion_tokens=1056), (50 * 2.0 + 323 * 2.50 + 1056 * 8.0) / 1e6),
])
def test_speech_transcription_and_image_models_are_priced_by_what_openai_bills_them(model, counts, want):
    assert CostRegistry.default().cost("openai", model, TokenCounts(**counts)) == pytest.approx(want)


def test_a_model_billed_by_another_unit_has_no_cost_without_it_nor_for_what_it_has_no_price():
    """Never a guess: what a model has no price for gives no cost, and a model billed only by characters, audio or
    images has none when the request counted none of them (not $0)."""
    reg = CostRegistry.default()
    assert reg.cost("openai", "tts-1", TokenCounts()) is None
    assert reg.cost("openai", "tts-1", TokenCounts(prompt_tokens=10, completion_tokens=100)) is None  # no token price
    assert reg.cost("openai", "whisper-1", TokenCounts()) is None  # an answer that gave no duration
    assert reg.cost("openai", "whisper-1", TokenCounts(characters=10)) is None
    assert reg.cost("openai", "gpt-4o-mini-tts", TokenCounts(characters=10)) is None  # billed by tokens, not characters
    assert reg.cost("openai", "dall-e-3", TokenCounts(images=(("auto", "1024x1024", 1),))) is None
    assert reg.cost("openai", "dall-e-3", TokenCounts(images=(("standard", "256x256", 1),))) is None  # dall-e-2's size
    assert reg.cost("openai", "dall-e-2", TokenCounts(images=(("hd", "1024x1024", 1),))) is None
    assert reg.cost("openai", "gpt-image-1", TokenCounts(images=(("standard", "1024x1024", 1),))) is None
    # gpt-image-1 has no text output price, nor one for cached tokens the answer does not split into text and images
    assert reg.cost("openai", "gpt-image-1", TokenCounts(prompt_tokens=10, completion_tokens=100, image_completion_tokens=90)) is None
    cached = TokenCounts(prompt_tokens=400, completion_tokens=10, cache_read_tokens=100, image_prompt_tokens=300,
                         image_completion_tokens=10)
    assert reg.cost("openai", "gpt-image-1", cached) is None
    # image tokens to a model without an image price: no cost, never the text rate
    assert reg.cost("openai", "gpt-4o", TokenCounts(prompt_tokens=400, completion_tokens=10, image_prompt_tokens=300)) is None
    assert reg.cost("openai", "gpt-image-1.5", TokenCounts(prompt_tokens=10, completion_tokens=10)) is None  # another version


@pytest.mark.parametrize("entry, message", [
    ({"characters": -1}, r"characters must be a number >= 0 \(USD per 1M characters\)"),
    ({"audio_minute": "0.006"}, r"audio_minute must be a number >= 0 \(USD per minute of audio\)"),
    ({"images": {"standard": {"1024x1024": "4 cents"}}}, r"images.standard.1024x1024 must be a number >= 0 \(USD per image\)"),
    ({"images": {"standard": {"large": 0.04}}}, r"images.standard: 'large' is no size; accepted: WIDTHxHEIGHT"),
    ({"images": {"standard": 0.04}}, r"images.standard must be an object of sizes"),
    ({"images": []}, r"images must be an object of qualities"),
    ({"images": {"": {"1024x1024": 0.04}}}, r"images: a quality needs a name"),
    ({"image_output": 40.0}, "input is missing"),  # a GPT image model has a text input price
    ({"input": 5.0, "image_output": 40.0, "tiers": [{"above": 10, "input": 1, "output": 1, "characters": 1}]},
     r"tiers\[0\]: unknown field\(s\) \['characters'\]"),
])
def test_bad_unit_prices_are_named_with_their_field(tmp_path, entry, message):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"openai": {"bad": entry}}))
    with pytest.raises(ValueError, match=message) as err:
        CostRegistry.load(path)
    assert "openai/bad" in str(err.value)


def test_an_override_prices_a_model_by_characters_audio_or_images(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"openai": {
        "house-tts": {"characters": 10.0},
        "house-stt": {"audio_minute": 0.01, "input": 1.0, "output": 2.0},
        "house-draw": {"images": {"low": {"512x512": 0.01}}},
    }}))
    reg = CostRegistry.load(path)
    assert reg.cost("openai", "house-tts", TokenCounts(characters=100)) == pytest.approx(100 * 10.0 / 1e6)
    assert reg.cost("openai", "house-stt", TokenCounts(prompt_tokens=10, audio_seconds=60)) == pytest.approx(10 / 1e6 + 0.01)
    assert reg.cost("openai", "house-stt", TokenCounts()) == 0.0  # it has token prices: nothing counted is nothing billed
    assert reg.cost("openai", "house-draw", TokenCounts(images=(("low", "512x512", 2),))) == pytest.approx(0.02)
    assert reg.price("openai", "house-draw").input is None
