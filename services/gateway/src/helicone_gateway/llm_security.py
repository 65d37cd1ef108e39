"""Helicone-LLM-Security-Enabled: the latest message of a chat completion, when it is the user's, is classified by the
deployment's prompt classifier before the request is sent; judged unsafe, the request is answered with Helicone's 400
(PROMPT_THREAT_DETECTED) and never sent. As in Helicone (worker/src/lib/HeliconeProxyRequest/ProxyForwarder.ts and
clients/PromptSecurityClient.ts), which asks Meta's Prompt Guard and, with Helicone-LLM-Security-Advanced, Llama Guard.

This gateway ships no model: the deployment names the classifier (HELICONE_LLM_SECURITY_URL), the base URL of an
OpenAI-compatible API (vLLM, Ollama, a hosted provider) serving a Llama Guard model (HELICONE_LLM_SECURITY_MODEL).
It is asked <url>/chat/completions with the message as a one-turn conversation, and answers as Llama Guard does:
"safe", or "unsafe" and a line of the categories violated ("S1,S14"). Unlike Helicone, which lets a request through
when its classifier fails, a call without a verdict refuses the request (fail closed).

The pure part lives here (what is asked, how the answer is read, the blocked answer's body); the call is the
gateway's (app.py), through its upstream pool. Only requests sending the header ever reach this module."""

from __future__ import annotations

import json
import re

from .prompt_check import (
    CHAT_PATH,
    PromptCheck,
    PromptCheckError,
    Verdict,
    check_chat_completion,
    flagged_body,
    flagged_message,
    latest_user_content,
)
from .settings import env_name

LLM_SECURITY_HEADER = "Helicone-LLM-Security-Enabled"
LLM_SECURITY = PromptCheck(
    header=LLM_SECURITY_HEADER,
    service="the LLM security classifier",
    verbs=("checks", "check", "checked"),
    parts=frozenset({"text"}),
    takes="the classifier is asked about text parts only",
    unchecked="unchecked",
    error_kind="helicone_llm_security_error",
    flagged_kind="helicone_llm_security_flagged",
    timeout_setting="llm_security_timeout",
)
URL_ENV = env_name("llm_security_url")
# Helicone's answer to a prompt threat: its code and message, as its docs and worker give them
THREAT_CODE = "PROMPT_THREAT_DETECTED"
THREAT_MESSAGE = "Prompt threat detected. Your request cannot be processed."
THREAT_STATUS = 400
# Llama Guard's answer is a verdict line and a categories line: a few tokens (bounded in case the model is another)
MAX_TOKENS = 64
# A category as Llama Guard names it ("S14"); at most this many are kept
CATEGORY = re.compile(r"[A-Za-z0-9_.-]{1,40}")
MAX_CATEGORIES = 16


def not_configured() -> PromptCheckError:
    """The 400 of a request asking for the check from a gateway that has no classifier."""
    return LLM_SECURITY.refused(
        f"{LLM_SECURITY_HEADER} needs a prompt injection classifier, and this gateway has none ({URL_ENV} is not set): "
        f"prompts are not checked for injections. {LLM_SECURITY.remove}"
    )


def classifier_url(base_url: str) -> str:
    """Where the classifier is asked: the chat completions endpoint under its base URL (http://vllm:8000/v1)."""
    return base_url.rstrip("/") + CHAT_PATH


def classifier_input(method: str, path: str, body: bytes) -> str | None:
    """The text the classifier is asked about: the latest user message's text (its text parts, one a line), or None
    when there is nothing to check; PromptCheckError (400) for a request that cannot be checked."""
    check_chat_completion(LLM_SECURITY, method, path)
    content = latest_user_content(LLM_SECURITY, body)
    if content is None or isinstance(content, str):
        return content
    return "\n".join(part["text"] for part in content) or None


def classifier_request(model: str, text: str) -> bytes:
    """The classifier's chat completion: the message alone, as a one-turn conversation (Llama Guard classifies the
    conversation's last turn), answered deterministically and briefly."""
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": text}], "temperature": 0, "max_tokens": MAX_TOKENS,
         "stream": False}
    ).encode()


def request_headers(api_key: str) -> list[tuple[str, str]]:
    """The classifier call's headers: JSON, and the deployment's key for it (never the caller's headers)."""
    headers = [("content-type", "application/json"), ("accept", "application/json")]
    return headers + [("authorization", f"Bearer {api_key}")] if api_key else headers


def read_verdict(status: int, body: bytes, _retry_after: str | None = None) -> Verdict:
    """The classifier's answer read; PromptCheckError (502) when it gave none (the request is not sent). Its error
    answers are the deployment's (its key, its quota), never passed on to the caller."""
    if status != 200:
        raise PromptCheckError(
            502, f"{LLM_SECURITY_HEADER}: the LLM security classifier answered {status}; the request was not sent",
            LLM_SECURITY.error_kind,
        )
    try:
        content = json.loads(body)["choices"][0]["message"]["content"]
        lines = content.strip().splitlines()
        verdict = lines[0].strip().lower() if lines else ""
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError):
        verdict = ""
    if verdict == "safe":
        return Verdict(False, ())
    if verdict != "unsafe":
        raise PromptCheckError(
            502,
            f"{LLM_SECURITY_HEADER}: the LLM security classifier's answer holds no verdict (a Llama Guard model answers "
            "'safe', or 'unsafe' and the categories violated, as its chat completion's message); the request was not sent",
            LLM_SECURITY.error_kind,
        )
    named = re.split(r"[,\s]+", " ".join(lines[1:2]))
    return Verdict(True, tuple(sorted({c for c in named if CATEGORY.fullmatch(c)}))[:MAX_CATEGORIES])


def threat_message(verdict: Verdict) -> str:
    return flagged_message(THREAT_MESSAGE, verdict)


def threat_body(verdict: Verdict, request_id: str) -> bytes:
    """Helicone's answer to a prompt threat (prompt_check.flagged_body)."""
    return flagged_body(LLM_SECURITY, THREAT_CODE, THREAT_MESSAGE, verdict, request_id)
