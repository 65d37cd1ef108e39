"""Usage metric labels: the provider table's names as logged, anything else "custom"; models by the cost registry."""

from helicone_core import events
from helicone_core.metrics import ServiceMetrics
from helicone_ingest.writer import BatchWriter


def test_provider_label_is_a_table_name_or_custom():
    writer = BatchWriter(None, None, None, ServiceMetrics("ingest"))
    labels = {p: writer.usage_labels(events.RequestLogged(provider=p, model=m)) for p, m in (
        ("groq", "llama-3.3-70b-versatile"), ("gemini", "gemini-2.5-pro-preview-06-05"), ("azure", "gpt-4o-2024-11-20"),
        ("openrouter", "anthropic/claude-opus-4.5"), ("my-proxy", "gpt-4o"), ("xai", "grok-caller-chosen"))}
    assert labels == {
        "groq": ("groq", "llama-3.3-70b-versatile"), "gemini": ("gemini", "gemini-2.5-pro"), "azure": ("azure", "gpt-4o"),
        "openrouter": ("openrouter", "claude-opus-4-5"), "my-proxy": ("custom", "gpt-4o"), "xai": ("xai", "other"),
    }
