import pytest
from helicone_core import events
from helicone_core.providers import PROVIDER_TABLE, parse_table

GOOD = {"label": "X", "base_url": "https://x.example/", "key": ["Authorization: Bearer <key>"], "usage": "openai"}


def test_table_names_are_the_logged_providers():
    assert events.PROVIDERS == tuple(PROVIDER_TABLE)
    for name in ("openai", "anthropic", "azure", "gemini", "groq", "together", "mistral", "deepseek", "xai",
                 "openrouter", "fireworks"):
        assert name in PROVIDER_TABLE
    assert events.CUSTOM_PROVIDER not in PROVIDER_TABLE


def test_usage_format_and_model_by_path():
    gemini = PROVIDER_TABLE["gemini"]
    assert gemini.usage_for("/v1beta/models/gemini-2.5-flash:generateContent") == "gemini"
    assert gemini.usage_for("/v1beta/models/gemini-2.5-flash:streamGenerateContent") == "gemini"
    assert gemini.usage_for("/v1beta/openai/chat/completions") == "openai"
    assert gemini.model_in("/v1beta/models/gemini-2.5-pro:streamGenerateContent") == "gemini-2.5-pro"
    assert PROVIDER_TABLE["azure"].model_in("/openai/deployments/prod-4o/chat/completions") == "prod-4o"
    assert PROVIDER_TABLE["azure"].base_url == ""  # every deployment names its resource
    assert PROVIDER_TABLE["groq"].model_in("/openai/v1/chat/completions") == ""


@pytest.mark.parametrize("name, entry, message", [
    ("Bad-Name", GOOD, "'Bad-Name': a name is 2-32 lower-case"),
    ("x", GOOD, "'x': a name is"),
    ("ok", {**GOOD, "usage": "cohere"}, "'ok': usage format 'cohere' is not one of"),
    ("ok", {**GOOD, "usage_paths": {":x": "nope"}}, "'ok': usage format 'nope'"),
    ("ok", {**GOOD, "model_path": "("}, "'ok': model_path is not a regex"),
    ("ok", {**GOOD, "prefix": "/ok"}, r"'ok': unknown field\(s\) \['prefix'\]"),
    ("ok", {k: v for k, v in GOOD.items() if k != "key"}, "'ok': key must be a list"),
    ("ok", {**GOOD, "stream_options": "/chat/completions"}, "'ok': stream_options must be a list of path endings"),
])
def test_malformed_entries_are_named(name, entry, message):
    with pytest.raises(ValueError, match=message):
        parse_table({name: entry})


def test_base_url_loses_its_trailing_slash():
    assert parse_table({"ok": GOOD})["ok"].base_url == "https://x.example"


def test_anthropic_openai_sdk_compatibility_path_is_read_as_openai():
    anthropic = PROVIDER_TABLE["anthropic"]
    assert anthropic.usage_for("/v1/messages") == "anthropic"
    assert anthropic.usage_for("/v1/chat/completions") == "openai"  # its OpenAI SDK compatibility layer


def test_stream_options_only_where_the_api_takes_them():
    """Helicone-Stream-Usage adds stream_options there only: Mistral refuses it (422), the Responses API has none."""
    openai = PROVIDER_TABLE["openai"]
    assert openai.takes_stream_options("/v1/chat/completions") and openai.takes_stream_options("/v1/completions")
    assert not openai.takes_stream_options("/v1/responses") and not openai.takes_stream_options("/v1/embeddings")
    assert not PROVIDER_TABLE["mistral"].takes_stream_options("/v1/chat/completions")
    assert not PROVIDER_TABLE["anthropic"].takes_stream_options("/v1/messages")
    assert PROVIDER_TABLE["anthropic"].takes_stream_options("/v1/chat/completions")
    assert not PROVIDER_TABLE["gemini"].takes_stream_options("/v1beta/models/gemini-2.5-flash:streamGenerateContent")


def test_bedrock_and_vertex_ai_paths():
    bedrock = PROVIDER_TABLE["bedrock"]
    assert bedrock.base_url == "" and bedrock.base_url_form == "https://bedrock-runtime.<region>.amazonaws.com"
    assert bedrock.usage_for("/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse-stream") == "bedrock"
    assert bedrock.usage_for("/model/meta.llama3-70b-instruct-v1%3A0/invoke") == "bedrock"
    assert bedrock.usage_for("/openai/v1/chat/completions") == "openai"  # Bedrock's OpenAI-compatible endpoint
    # the model id as the API reads it: botocore percent-encodes its colon, an ARN's slash
    assert bedrock.model_in("/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse") == "anthropic.claude-3-5-haiku-20241022-v1:0"
    gemini = PROVIDER_TABLE["gemini"]
    for path in ("/v1beta/models/gemini-embedding-001:embedContent", "/v1beta/models/text-embedding-004:batchEmbedContents",
                 "/v1beta/models/gemini-2.5-flash:countTokens",
                 "/v1/projects/p/locations/us-central1/publishers/google/models/text-embedding-005:predict"):
        assert gemini.usage_for(path) == "gemini"
    vertex = "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict"
    assert PROVIDER_TABLE["anthropic"].target_needed(vertex).startswith("https://<location>-aiplatform.googleapis.com")
    assert gemini.target_needed("/v1beta/models/gemini-2.5-flash:generateContent") == ""
    assert PROVIDER_TABLE["anthropic"].target_needed("/v1/messages") == ""
