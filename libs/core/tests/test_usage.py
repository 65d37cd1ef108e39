import gzip
import json
import secrets
import zlib

from helicone_core.usage import decode_body, parse_response, request_model


def sse(*events) -> bytes:
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events).encode() + b"data: [DONE]\n\n"


def test_openai_json_usage_with_cached_tokens():
    body = json.dumps({"model": "gpt-4o-2024-08-06", "usage": {
        "prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150, "prompt_tokens_details": {"cached_tokens": 100}}}).encode()
    p = parse_response("openai", body, "application/json")
    assert p.known and p.model == "gpt-4o-2024-08-06"
    assert (p.tokens.prompt_tokens, p.tokens.completion_tokens, p.tokens.cache_read_tokens) == (120, 30, 100)


def test_openai_stream_usage_from_final_chunk():
    body = sse({"model": "gpt-4o-mini", "choices": [{"delta": {"content": "hi"}}], "usage": None},
               {"model": "gpt-4o-mini", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}})
    p = parse_response("openai", body, "text/event-stream; charset=utf-8")
    assert p.known and (p.tokens.prompt_tokens, p.tokens.completion_tokens) == (7, 2)


def test_openai_stream_without_usage_is_unknown_not_zero_cost():
    p = parse_response("openai", sse({"model": "gpt-4o", "choices": [{"delta": {"content": "x"}}]}), "text/event-stream")
    assert not p.known and p.model == "gpt-4o"


def test_anthropic_json_and_stream_usage():
    body = json.dumps({"model": "claude-sonnet-4-5", "usage": {
        "input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 1000}}).encode()
    p = parse_response("anthropic", body, "application/json")
    assert (p.tokens.prompt_tokens, p.tokens.completion_tokens, p.tokens.cache_write_tokens, p.tokens.cache_read_tokens) == (1110, 5, 100, 1000)
    stream = (
        b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude-3-5-haiku-20241022","usage":{"input_tokens":25,"output_tokens":1}}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"hi"}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":15}}\n\n'
    )
    p = parse_response("anthropic", stream, "text/event-stream")
    assert p.known and p.model == "claude-3-5-haiku-20241022"
    assert (p.tokens.prompt_tokens, p.tokens.completion_tokens) == (25, 15)


def test_non_json_bodies_do_not_raise():
    assert not parse_response("openai", b"<html>bad gateway</html>", "text/html").known
    assert not parse_response("openai", b"[1,2]", "application/json").known


def test_decode_body_and_request_model():
    raw = b'{"usage":{}}'
    assert decode_body(gzip.compress(raw), "gzip") == raw
    assert decode_body(b"not gzip", "gzip") == b"not gzip"
    big = json.dumps({"text": secrets.token_hex(30000)}).encode()
    partial = decode_body(gzip.compress(big)[:300], "gzip")  # capture cut off mid-stream
    assert 0 < len(partial) < len(big) and big.startswith(partial)
    assert decode_body(zlib.compress(raw), "deflate") == raw
    assert request_model(b'{"model":"gpt-4o","stream":true}') == ("gpt-4o", True)
    assert request_model(b"garbage") == ("", False)


GEMINI_CHUNKS = [
    {"candidates": [{"content": {"parts": [{"text": "Hel"}], "role": "model"}}], "modelVersion": "gemini-2.5-pro",
     "usageMetadata": {"promptTokenCount": 1200, "totalTokenCount": 1200}},
    {"candidates": [{"content": {"parts": [{"text": "lo"}], "role": "model"}, "finishReason": "STOP"}],
     "modelVersion": "gemini-2.5-pro",
     "usageMetadata": {"promptTokenCount": 1200, "candidatesTokenCount": 40, "thoughtsTokenCount": 300,
                       "cachedContentTokenCount": 1000, "toolUsePromptTokenCount": 5, "totalTokenCount": 1545}},
]


def test_gemini_json_sse_and_json_array_stream():
    want = (1205, 340, 1000)  # tool-use prompt tokens are prompt, thinking tokens are output
    for body, ctype in (
        (json.dumps(GEMINI_CHUNKS[1]).encode(), "application/json; charset=UTF-8"),  # generateContent
        ("".join(f"data: {json.dumps(c)}\r\n\r\n" for c in GEMINI_CHUNKS).encode(), "text/event-stream"),  # ?alt=sse
        (("[" + ",\r\n".join(json.dumps(c) for c in GEMINI_CHUNKS) + "]").encode(), "application/json"),  # JSON array
    ):
        p = parse_response("gemini", body, ctype)
        assert p.known and p.model == "gemini-2.5-pro", ctype
        assert (p.tokens.prompt_tokens, p.tokens.completion_tokens, p.tokens.cache_read_tokens) == want, ctype


def test_gemini_answer_without_usage_and_cut_off_array_are_unknown():
    assert not parse_response("gemini", b'{"error": {"code": 400}}', "application/json").known
    cut = ("[" + json.dumps(GEMINI_CHUNKS[0]) + ",\r\n" + json.dumps(GEMINI_CHUNKS[1])[:50]).encode()
    assert not parse_response("gemini", cut, "application/json").known


def test_deepseek_cache_hit_tokens_count_as_cache_reads():
    body = json.dumps({"model": "deepseek-chat", "usage": {"prompt_tokens": 100, "completion_tokens": 5,
                       "prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36}}).encode()
    p = parse_response("openai", body, "application/json")
    assert (p.tokens.prompt_tokens, p.tokens.cache_read_tokens) == (100, 64)


def test_token_counts_that_are_no_real_usage_count_as_zero():
    body = json.dumps({"model": "m", "usage": {"prompt_tokens": 2**70, "completion_tokens": -3,
                                               "prompt_tokens_details": {"cached_tokens": 1e308}}}).encode()
    parsed = parse_response("openai", body, "application/json")
    assert parsed.known and (parsed.tokens.prompt_tokens, parsed.tokens.completion_tokens, parsed.tokens.cache_read_tokens) == (0, 0, 0)
    inf = b'{"model": "m", "usage": {"input_tokens": Infinity, "output_tokens": 7}}'
    assert parse_response("anthropic", inf, "application/json").tokens.completion_tokens == 7
    odd = b'{"usage": {"prompt_tokens": 4, "prompt_tokens_details": 12, "input_tokens_details": ["x"]}}'
    assert parse_response("openai", odd, "application/json").tokens.prompt_tokens == 4
