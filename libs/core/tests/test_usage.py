import gzip
import json
import random
import secrets
import zlib
from types import SimpleNamespace

import pytest
from helicone_core import usage
from helicone_core.cost import CostRegistry, TokenCounts
from helicone_core.usage import decode_body, parse_response, request_fields


def sse(*events) -> bytes:
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events).encode() + b"data: [DONE]\n\n"


def test_openai_json_usage_with_cached_tokens():
    body = json.dumps({"model": "gpt-4o-2024-08-06", "usage": {
        "prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150, "prompt_tokens_details": {"cached_tokens": 100}}}).encode()
    p = parse_response("openai", body, "application/json")
    assert p.known and p.model == "gpt-4o-2024-08-06"
    assert (p.tokens.prompt_tokens, p.tokens.completion_tokens, p.tokens.cache_read_tokens) == (120, 30, 100)


def test_openai_cache_writes_are_read_from_chat_completions_and_the_responses_api():
    """OpenAI reports prompt tokens written to the cache apart from those read from it (openai-python's
    CompletionUsage.prompt_tokens_details.cache_write_tokens, ResponseUsage.input_tokens_details.cache_write_tokens):
    logged as cache writes and priced at the model's cache-write price (GPT-5.6 and later: 1.25x input), not as input."""
    chat = {"prompt_tokens": 5000, "completion_tokens": 100, "total_tokens": 5100,
            "prompt_tokens_details": {"cached_tokens": 3000, "cache_write_tokens": 1500}}
    responses = {"input_tokens": 5000, "output_tokens": 100, "total_tokens": 5100,
                 "input_tokens_details": {"cached_tokens": 3000, "cache_write_tokens": 1500},
                 "output_tokens_details": {"reasoning_tokens": 40}}
    completed = {"type": "response.completed", "response": {"model": "gpt-6.2-sol", "usage": responses}}
    answers = [
        parse_response("openai", json.dumps({"model": "gpt-6.2-sol", "usage": chat}).encode(), "application/json"),
        parse_response("openai", sse({"model": "gpt-6.2-sol", "choices": [], "usage": chat}), "text/event-stream"),
        parse_response("openai", json.dumps({"model": "gpt-6.2-sol", "usage": responses}).encode(), "application/json"),
        parse_response("openai", f"event: response.completed\ndata: {json.dumps(completed)}\n\n".encode(), "text/event-stream"),
    ]
    reg = CostRegistry.default()
    for p in answers:
        assert (p.tokens.prompt_tokens, p.tokens.cache_read_tokens, p.tokens.cache_write_tokens) == (5000, 3000, 1500)
        assert (p.logged_usage().cache_read_tokens, p.logged_usage().cache_write_tokens) == (3000, 1500)
        # gpt-6.2-sol: $2 input, $0.10 cached input, $2.50 cache writes, $10 output per 1M
        want = (500 * 2.0 + 3000 * 0.10 + 1500 * 2.50 + 100 * 10.0) / 1e6
        assert p.cost(reg, "openai", p.model) == pytest.approx(want)
    # before the GPT-5.6 family a cache write costs no more than input: gpt-4.1's $2
    assert answers[0].cost(reg, "openai", "gpt-4.1") == pytest.approx((2000 * 2.0 + 3000 * 0.50 + 100 * 8.0) / 1e6)


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


def test_decode_body_and_request_fields():
    raw = b'{"usage":{}}'
    assert decode_body(gzip.compress(raw), "gzip") == raw
    assert decode_body(b"not gzip", "gzip") == b"not gzip"
    big = json.dumps({"text": secrets.token_hex(30000)}).encode()
    partial = decode_body(gzip.compress(big)[:300], "gzip")  # capture cut off mid-stream
    assert 0 < len(partial) < len(big) and big.startswith(partial)
    assert decode_body(zlib.compress(raw), "deflate") == raw
    assert request_fields(b'{"model":"gpt-4o","stream":true}') == ("gpt-4o", True, "")
    assert request_fields(b"garbage") == ("", False, "")


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


# ---- long streams: only the lines that can hold the usage are parsed -------------------------------
def _counting_json(monkeypatch) -> list[str]:
    """Every JSON text the usage reader parses, in order."""
    parsed: list[str] = []

    def loads(text, *args, **kwargs):
        parsed.append(text)
        return json.loads(text, *args, **kwargs)

    monkeypatch.setattr(usage, "json", SimpleNamespace(loads=loads, dumps=json.dumps))
    return parsed


def openai_stream(n: int, with_usage: bool) -> bytes:
    chunks = [{"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o-mini-2024-07-18",
               "choices": [{"index": 0, "delta": {"content": f" word{i}"}}], **({"usage": None} if with_usage else {})}
              for i in range(n)]
    if with_usage:
        chunks.append({"id": "c", "model": "gpt-4o-mini-2024-07-18", "choices": [],
                       "usage": {"prompt_tokens": 9, "completion_tokens": n, "total_tokens": 9 + n}})
    return sse(*chunks)


def test_a_long_stream_costs_a_json_parse_or_two_not_one_per_chunk(monkeypatch):
    parsed = _counting_json(monkeypatch)
    p = parse_response("openai", openai_stream(2000, True), "text/event-stream")
    assert p.known and (p.model, p.tokens.prompt_tokens, p.tokens.completion_tokens) == ("gpt-4o-mini-2024-07-18", 9, 2000)
    assert len(parsed) == 1, parsed[:3]  # the usage chunk, which names the model too

    parsed.clear()  # no usage asked for: the last chunk gives the model, and no line has a usage key
    p = parse_response("openai", openai_stream(2000, False), "text/event-stream")
    assert not p.known and p.model == "gpt-4o-mini-2024-07-18" and len(parsed) == 1

    parsed.clear()
    start = {"type": "message_start", "message": {"model": "claude-sonnet-4-5", "usage": {"input_tokens": 30, "output_tokens": 1}}}
    deltas = [{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f" w{i}"}} for i in range(2000)]
    end = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2000}}
    body = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in [start, *deltas, end]).encode()
    p = parse_response("anthropic", body, "text/event-stream")
    assert p.known and (p.model, p.tokens.prompt_tokens, p.tokens.completion_tokens) == ("claude-sonnet-4-5", 30, 2000)
    assert len(parsed) == 2  # message_start and message_delta

    parsed.clear()
    chunks = [dict(GEMINI_CHUNKS[0], usageMetadata={"promptTokenCount": 5, "candidatesTokenCount": i}) for i in range(1, 2001)]
    p = parse_response("gemini", "".join(f"data: {json.dumps(c)}\r\n\r\n" for c in chunks).encode(), "text/event-stream")
    assert p.known and (p.model, p.tokens.completion_tokens) == ("gemini-2.5-pro", 2000) and len(parsed) == 1


def _every_event(text: str):
    """The reference reading: every `data:` line's JSON, first to last (lines end with CR, LF or CRLF)."""
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        payload = line[5:].strip() if line.startswith("data:") else ""
        if payload and payload != "[DONE]":
            try:
                yield json.loads(payload)
            except ValueError:
                continue


def _reference(fmt: str, body: bytes) -> tuple[str, TokenCounts, bool]:
    """What reading every event of a stream gives (the readers before they skipped lines)."""
    model, tokens, known = "", TokenCounts(), False
    start: dict = {}
    output: int | None = None
    for ev in _every_event(body.decode()):
        if not isinstance(ev, dict):
            continue
        if fmt == "openai":
            if isinstance(ev.get("model"), str) and ev["model"]:
                model = ev["model"]
            resp = ev.get("response") if isinstance(ev.get("response"), dict) else None
            use = ev.get("usage") or (resp or {}).get("usage")
            if resp and isinstance(resp.get("model"), str):
                model = resp["model"]
            if isinstance(use, dict):
                tokens, known = usage.openai_usage(use), True
        elif fmt == "gemini":
            if isinstance(ev.get("modelVersion"), str) and ev["modelVersion"]:
                model = ev["modelVersion"]
            if isinstance(ev.get("usageMetadata"), dict):
                tokens, known = usage.gemini_usage(ev["usageMetadata"]), True
        elif ev.get("type") == "message_start" and isinstance(ev.get("message"), dict):
            model = ev["message"].get("model") or model
            if isinstance(ev["message"].get("usage"), dict):
                start, known = dict(ev["message"]["usage"]), True
        elif ev.get("type") == "message_delta" and isinstance(ev.get("usage"), dict):
            output = usage._int(ev["usage"].get("output_tokens"))
            for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
                if ev["usage"].get(k) is not None:
                    start[k] = ev["usage"][k]
            known = True
    if fmt == "anthropic" and known:
        tokens = usage.anthropic_usage(start, output)
    return model, tokens, known


def _random_event(rng: random.Random, fmt: str) -> str:
    text = rng.choice(["hi", ' the "usage" of "model"', "usage: none", "a\u2028b", "\u00e9t\u00e9", ""])
    maybe = lambda: rng.random() < 0.5  # noqa: E731
    if fmt == "openai":
        ev: dict = {"choices": [{"delta": {"content": text}}]}
        if maybe():
            ev["model"] = rng.choice(["gpt-4o", "gpt-4o-mini", "", None, 7])
        if maybe():
            ev["usage"] = rng.choice([None, {}, {"prompt_tokens": rng.randint(0, 99), "completion_tokens": rng.randint(0, 99)},
                                      {"input_tokens": 3, "output_tokens": 4, "input_tokens_details": {"cached_tokens": 1}}, "x"])
        if rng.random() < 0.2:  # a Responses API event
            ev = {"type": "response.completed", "response": {"model": rng.choice(["gpt-5", ""]),
                                                             "usage": rng.choice([None, {"input_tokens": 8, "output_tokens": 2}])}}
    elif fmt == "gemini":
        ev = {"candidates": [{"content": {"parts": [{"text": text}]}}]}
        if maybe():
            ev["modelVersion"] = rng.choice(["gemini-2.5-pro", "gemini-2.5-flash", ""])
        if maybe():
            ev["usageMetadata"] = rng.choice([{"promptTokenCount": rng.randint(0, 99), "candidatesTokenCount": rng.randint(0, 99)}, None])
    else:
        kind = rng.choice(["message_start", "content_block_delta", "content_block_delta", "message_delta", "ping"])
        ev = {"type": kind}
        if kind == "message_start":
            ev["message"] = {"model": rng.choice(["claude-sonnet-4-5", "claude-3-5-haiku-latest", ""])}
            if maybe():
                ev["message"]["usage"] = {"input_tokens": rng.randint(0, 99), "cache_read_input_tokens": rng.randint(0, 9)}
        elif kind == "content_block_delta":
            ev["delta"] = {"type": "text_delta", "text": text}
        elif kind == "message_delta" and maybe():
            ev["usage"] = {"output_tokens": rng.randint(0, 99), **({"input_tokens": 5} if maybe() else {})}
    line = "data: " + json.dumps(ev, ensure_ascii=rng.random() < 0.5, separators=rng.choice([(",", ":"), (", ", ": ")]))
    return rng.choice([line, line, line, line, line, ": keep-alive", "event: x\n" + line, "data: [DONE]", "data: {not json",
                       line[:len(line) // 2]])


def test_the_stream_readers_agree_with_reading_every_event():
    rng = random.Random(20261206)
    for fmt in ("openai", "anthropic", "gemini"):
        for case in range(400):
            eol = rng.choice(["\n", "\r\n", "\r"])
            body = "".join(_random_event(rng, fmt) + eol + eol for _ in range(rng.randint(0, 12))).encode()
            got = parse_response(fmt, body, "text/event-stream")
            assert (got.model, got.tokens, got.known) == _reference(fmt, body), (fmt, case, body)


# ---- JSON answers longer than the logged body: usage from the tail --------------------------------
def _cut(doc, keep: int = 300) -> tuple[bytes, bytes]:
    """(the logged start, the kept tail) of a JSON answer much longer than both."""
    raw = json.dumps(doc).encode()
    assert len(raw) > 4 * keep
    return raw[:keep], raw[-keep:]


def test_a_cut_json_answer_reads_its_usage_and_model_from_the_tail():
    vectors = [{"object": "embedding", "index": i, "embedding": [0.001 * i] * 40} for i in range(60)]
    cases = [
        ("openai", {"object": "list", "data": vectors, "model": "text-embedding-3-small",
                    "usage": {"prompt_tokens": 812, "total_tokens": 812}}, ("text-embedding-3-small", 812, 0)),
        ("openai", {"id": "c", "model": "gpt-4o", "choices": [{"message": {"content": "x" * 2000}}],
                    "usage": {"prompt_tokens": 9, "completion_tokens": 700}, "service_tier": "default",
                    "system_fingerprint": "fp_1"}, ("gpt-4o", 9, 700)),  # usage followed by more members
        ("openai", {"id": "r", "object": "response", "model": "gpt-5", "output": [{"content": [{"text": "y" * 2000}]}],
                    "usage": {"input_tokens": 5, "output_tokens": 600}, "user": None, "metadata": {}}, ("gpt-5", 5, 600)),
        ("anthropic", {"id": "m", "model": "claude-sonnet-4-5", "content": [{"type": "text", "text": "z" * 2000}],
                       "usage": {"input_tokens": 11, "output_tokens": 650}}, ("claude-sonnet-4-5", 11, 650)),
        ("gemini", {"candidates": [{"content": {"parts": [{"text": "w" * 2000}]}}], "usageMetadata":
                    {"promptTokenCount": 7, "candidatesTokenCount": 640}, "modelVersion": "gemini-2.5-flash",
                    "responseId": "abc"}, ("gemini-2.5-flash", 7, 640)),
        ("gemini", [{"candidates": [{"content": {"parts": [{"text": "v" * 900}]}}], "modelVersion": "gemini-2.5-pro",
                     "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": n}} for n in (100, 200, 300)],
         ("gemini-2.5-pro", 3, 300)),  # streamGenerateContent without SSE: a JSON array, the last chunk counts
    ]
    for fmt, doc, (model, prompt, completion) in cases:
        head, tail = _cut(doc)
        assert not parse_response(fmt, head, "application/json").known  # the start alone has no usage
        p = parse_response(fmt, head, "application/json", tail)
        assert p.known and (p.model, p.tokens.prompt_tokens, p.tokens.completion_tokens) == (model, prompt, completion), fmt


def test_a_nested_usage_in_the_tail_is_not_the_answers():
    # the last "usage" in the text belongs to an object inside `extra`; the answer's own comes before it
    doc = {"model": "m-1", "data": [{"x": "q" * 2000}], "usage": {"prompt_tokens": 1},
           "extra": [{"usage": {"prompt_tokens": 999}, "model": "inner"}]}
    head, tail = _cut(doc, keep=200)
    p = parse_response("openai", head, "application/json", tail)
    assert p.known and p.tokens.prompt_tokens == 1 and p.model == "m-1"
    nested_only = {"data": [{"x": "q" * 1200, "usage": {"prompt_tokens": 999}, "model": "inner"}], "object": "list"}
    head, tail = _cut(nested_only)
    p = parse_response("openai", head, "application/json", tail)
    assert not p.known and p.model == ""
    assert not parse_response("openai", b'{"a": ', "application/json", b'not json at all "usage": 5').known


def test_a_tail_stuffed_with_the_key_costs_a_bounded_number_of_tries(monkeypatch):
    tries = []
    real = json.JSONDecoder.raw_decode
    monkeypatch.setattr(json.JSONDecoder, "raw_decode", lambda self, s, idx=0: (tries.append(idx), real(self, s, idx))[1])
    tail = b'"x": [' + b", ".join(b'{"usage": {"prompt_tokens": 5}}' for _ in range(5000)) + b"]}"
    assert not parse_response("openai", b'{"a": [', "application/json", tail).known
    assert len(tries) <= 2 * usage.LAST_MEMBER_TRIES + 2  # the usage's and the model's tries, and the start's


def test_decoding_for_the_log_stops_at_max_decoded_bytes(monkeypatch):
    monkeypatch.setattr(usage, "MAX_DECODED_BYTES", 1 << 20)
    bomb = gzip.compress(b"\0" * (8 << 20))  # 8 MiB of zeros in a few KiB
    assert len(bomb) < 20_000 and len(decode_body(bomb, "gzip")) == 1 << 20
    tail = usage.TailDecoder(bomb[:100], "gzip")
    assert not tail.failed
    sizes = [len(piece) for piece in tail.decode(bomb[100:])]
    assert tail.failed and sum(sizes) <= 1 << 20 and max(sizes) <= 64 * 1024
    assert list(tail.decode(b"more")) == []
    assert usage.TailDecoder(b"not gzip at all", "gzip").failed
    plain = gzip.compress(b"data: 1\n\n" * 1000)
    ok = usage.TailDecoder(plain[:50], "gzip")
    assert b"".join(ok.decode(plain[50:])).endswith(b"data: 1\n\n") and not ok.failed


def test_json_nested_too_deep_is_an_unknown_usage_not_an_error():
    deep = b"[" * 100_000 + b"]" * 100_000
    assert not parse_response("openai", b'{"usage": ' + deep + b"}", "application/json").known
    assert not parse_response("openai", b'data: {"usage": ' + deep + b"}\n\n", "text/event-stream").known
    assert not parse_response("openai", b'{"a": [', "application/json", b'"usage": {"x": ' + deep + b"}}").known


def test_a_responses_stream_whose_last_event_is_cut_still_gives_its_usage():
    """response.completed repeats the whole answer: in a long one the tail starts inside it."""
    answer = "word " * 60_000  # 300 KB
    events = [{"type": "response.created", "response": {"id": "r", "model": "gpt-5-2025-08-07", "output": [], "usage": None}}]
    events += [{"type": "response.output_text.delta", "delta": "word "} for _ in range(50)]
    events.append({"type": "response.completed", "sequence_number": 99, "response": {
        "id": "r", "model": "gpt-5-2025-08-07", "output": [{"type": "message", "content": [{"type": "output_text", "text": answer}]}],
        "usage": {"input_tokens": 12, "output_tokens": 60_000, "input_tokens_details": {"cached_tokens": 4}},
        "tools": [{"type": "function", "name": "f", "parameters": {"usage": {"type": "object"}}}], "user": None}})
    body = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()
    head, tail = body[:2048], body[-128 * 1024:]
    assert not parse_response("openai", head + b"\n", "text/event-stream").known
    p = parse_response("openai", head, "text/event-stream", tail)
    assert p.known and (p.tokens.prompt_tokens, p.tokens.completion_tokens, p.tokens.cache_read_tokens) == (12, 60_000, 4)
    assert p.model == "gpt-5-2025-08-07"
    # a nested usage deeper in the cut event is not taken for the answer's
    nested_only = body.replace(b'"usage": {"input_tokens": 12', b'"usage_": {"input_tokens": 12')
    assert not parse_response("openai", nested_only[:2048], "text/event-stream", nested_only[-128 * 1024:]).known


def test_an_anthropic_stream_whose_model_is_no_string_still_gives_its_usage_and_a_loggable_event():
    """Every other reader takes a model only when it is a string: one that is not (an odd Anthropic-compatible
    server's {"id": ...}, a number) made RequestLogged refuse it, and the request's whole log event was dropped."""
    from helicone_core import events

    for odd in ({"id": "claude-x"}, 7, ["claude-x"]):
        stream = (
            b'event: message_start\ndata: ' + json.dumps({"type": "message_start", "message": {
                "model": odd, "usage": {"input_tokens": 25, "output_tokens": 1}}}).encode() + b'\n\n'
            b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":15}}\n\n'
        )
        p = parse_response("anthropic", stream, "text/event-stream")
        assert p.known and p.model == "" and (p.tokens.prompt_tokens, p.tokens.completion_tokens) == (25, 15)
        events.RequestLogged(model=p.model or "claude-from-the-request", usage=p.logged_usage())


def test_xai_reasoning_tokens_outside_completion_tokens_are_counted_as_output():
    """xAI counts reasoning apart from completion_tokens (its total_tokens is prompt + completion + reasoning;
    docs.x.ai, "Consumption and rate limits") and bills it as output; OpenAI counts it inside completion_tokens
    (total = prompt + completion). Either way the logged completion tokens and the cost include the reasoning."""
    from helicone_core.cost import CostRegistry

    xai = {"prompt_tokens": 32, "completion_tokens": 9, "total_tokens": 135,
           "completion_tokens_details": {"reasoning_tokens": 94}}  # xAI's own example
    openai = {"prompt_tokens": 32, "completion_tokens": 103, "total_tokens": 135,
              "completion_tokens_details": {"reasoning_tokens": 94}}
    registry = CostRegistry.default()
    for u in (xai, openai):
        body = json.dumps({"model": "grok-3-mini", "usage": u}).encode()
        stream = sse({"model": "grok-3-mini", "choices": [{"delta": {"content": "hi"}}]},
                     {"model": "grok-3-mini", "choices": [], "usage": u})
        for parsed in (parse_response("openai", body, "application/json"), parse_response("openai", stream, "text/event-stream")):
            assert parsed.known and (parsed.tokens.prompt_tokens, parsed.tokens.completion_tokens) == (32, 103)
            assert parsed.logged_usage().total_tokens == 135
            assert registry.cost("xai", "grok-3-mini", parsed.tokens) == pytest.approx((32 * 0.30 + 103 * 0.50) / 1e6)


def test_a_groq_stream_without_include_usage_gives_the_usage_of_its_x_groq_field():
    """Groq closes a stream with its usage under `x_groq` (console.groq.com/docs/api-reference) when the request did
    not ask for stream_options.include_usage: that usage was passed over, and the stream logged with no usage or cost."""
    from helicone_core.cost import CostRegistry

    last = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "llama-3.3-70b-versatile",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "x_groq": {"id": "req_01", "usage": {"queue_time": 0.075, "prompt_tokens": 23, "prompt_time": 0.006,
                                                 "completion_tokens": 19, "completion_time": 0.022, "total_tokens": 42,
                                                 "total_time": 0.028}}}
    body = sse({"id": "chatcmpl-1", "model": "llama-3.3-70b-versatile", "choices": [{"delta": {"content": "hi"}}],
                "x_groq": {"id": "req_01"}}, last)
    p = parse_response("openai", body, "text/event-stream")
    assert p.known and p.model == "llama-3.3-70b-versatile"
    assert (p.tokens.prompt_tokens, p.tokens.completion_tokens) == (23, 19)
    assert CostRegistry.default().cost("groq", p.model, p.tokens) == pytest.approx((23 * 0.59 + 19 * 0.79) / 1e6)
    # asked for include_usage, Groq adds OpenAI's usage chunk after it: that one is read (the same counts)
    both = sse(last, {"id": "chatcmpl-1", "model": "llama-3.3-70b-versatile", "choices": [],
                      "usage": {"prompt_tokens": 23, "completion_tokens": 19, "total_tokens": 42}})
    assert parse_response("openai", both, "text/event-stream").tokens == p.tokens


# ---- Bedrock (docs.aws.amazon.com/bedrock/latest/APIReference: Converse, ConverseStream, InvokeModel*) ----------
from tests.support import bedrock as aws  # noqa: E402

CLAUDE_START = {"type": "message_start", "message": {
    "id": "msg_bdrk_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929", "content": [],
    "usage": {"input_tokens": 20, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1800, "output_tokens": 1}}}
CLAUDE_METRICS = {"inputTokenCount": 20, "outputTokenCount": 42, "invocationLatency": 950, "firstByteLatency": 310,
                  "cacheReadInputTokenCount": 1800, "cacheWriteInputTokenCount": 0}


def claude_invoke_stream(deltas: int) -> bytes:
    return b"".join([aws.chunk(CLAUDE_START),
                     *(aws.chunk({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "word "}})
                       for _ in range(deltas)),
                     aws.chunk({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 42}}),
                     aws.chunk({"type": "message_stop", "amazon-bedrock-invocationMetrics": CLAUDE_METRICS})])


def converse_stream(deltas: int, usage_: dict) -> bytes:
    return b"".join([aws.event("messageStart", {"role": "assistant"}),
                     *(aws.event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "word "}}) for _ in range(deltas)),
                     aws.event("contentBlockStop", {"contentBlockIndex": 0}), aws.event("messageStop", {"stopReason": "end_turn"}),
                     aws.event("metadata", {"usage": usage_, "metrics": {"latencyMs": 420}})])


# Converse's usage counts its input without the cache's: totalTokens = inputTokens + outputTokens + cache reads + writes
CONVERSE_USAGE = {"inputTokens": 12, "outputTokens": 181, "totalTokens": 1207, "cacheReadInputTokens": 0,
                  "cacheWriteInputTokens": 1014}


def test_bedrock_converse_json_and_stream_usage_with_the_cache():
    body = json.dumps({"output": {"message": {"role": "assistant", "content": [{"text": "Hi"}]}}, "stopReason": "end_turn",
                       "usage": CONVERSE_USAGE, "metrics": {"latencyMs": 420}}).encode()
    for p in (parse_response("bedrock", body, "application/json"),
              parse_response("bedrock", converse_stream(50, CONVERSE_USAGE), usage.EVENT_STREAM)):
        assert p.known and p.model == ""  # the path's model id is what Bedrock bills
        assert (p.tokens.prompt_tokens, p.tokens.completion_tokens, p.tokens.cache_write_tokens) == (1026, 181, 1014)


def test_bedrock_invoke_claude_json_keeps_anthropics_cache_counts():
    body = json.dumps({**CLAUDE_START["message"], "content": [{"type": "text", "text": "Hi"}], "stop_reason": "end_turn",
                       "usage": {**CLAUDE_START["message"]["usage"], "output_tokens": 42}}).encode()
    p = parse_response("bedrock", body, "application/json")
    assert p.known and p.model == ""
    assert (p.tokens.prompt_tokens, p.tokens.cache_read_tokens, p.tokens.completion_tokens) == (1820, 1800, 42)


def test_bedrock_invoke_stream_reads_claudes_events_in_the_chunks_bytes():
    p = parse_response("bedrock", claude_invoke_stream(200), usage.EVENT_STREAM)
    assert p.known and (p.tokens.prompt_tokens, p.tokens.cache_read_tokens, p.tokens.completion_tokens) == (1820, 1800, 42)


def test_bedrock_invoke_stream_of_another_model_by_its_invocation_metrics():
    """Meta Llama's stream events carry no usage object but its last chunk's amazon-bedrock-invocationMetrics."""
    body = b"".join([aws.chunk({"generation": "Hello", "prompt_token_count": None, "generation_token_count": 1,
                                "stop_reason": None}),
                     aws.chunk({"generation": "", "prompt_token_count": None, "generation_token_count": 9, "stop_reason": "stop",
                                "amazon-bedrock-invocationMetrics": {"inputTokenCount": 17, "outputTokenCount": 9,
                                                                     "invocationLatency": 600, "firstByteLatency": 200}})])
    p = parse_response("bedrock", body, usage.EVENT_STREAM)
    assert p.known and (p.tokens.prompt_tokens, p.tokens.completion_tokens) == (17, 9)


@pytest.mark.parametrize("cut", [0, 1, 7, 12, 13, 50, 311])
def test_a_bedrock_stream_cut_at_the_logged_limit_is_read_from_its_tails_first_whole_frame(cut):
    """The capture keeps the stream's start and its last 128 KiB, which begins anywhere inside a frame."""
    for body, want in ((claude_invoke_stream(3000), (1820, 42)), (converse_stream(3000, CONVERSE_USAGE), (1026, 181))):
        head, tail = body[:4096], body[-(64 * 1024 + cut):]
        p = parse_response("bedrock", head, usage.EVENT_STREAM, tail)
        assert p.known and (p.tokens.prompt_tokens, p.tokens.completion_tokens) == want


def test_a_bedrock_stream_reads_few_frames_however_long():
    """Frames are found by their lengths; only the first and last few are decoded (a 20,000-frame stream: 12)."""
    body = claude_invoke_stream(20_000)
    decoded = []
    real = usage.event_frame
    usage.event_frame = lambda data, i: decoded.append(i) or real(data, i)
    try:
        assert parse_response("bedrock", body, usage.EVENT_STREAM).known
    finally:
        usage.event_frame = real
    assert len(decoded) <= usage.LAST_FRAMES + usage.FIRST_FRAMES


def test_a_bedrock_stream_is_whole_only_with_its_last_event():
    """Cached only when whole: ConverseStream ends with metadata, InvokeModelWithResponseStream with the chunk carrying
    Bedrock's invocation metrics; a stream cut short, or ended by an exception frame, is not."""
    converse, invoke = converse_stream(5, CONVERSE_USAGE), claude_invoke_stream(5)
    assert usage.answer_whole("bedrock", converse, usage.EVENT_STREAM)
    assert usage.answer_whole("bedrock", invoke, usage.EVENT_STREAM)
    for body in (converse[:-1], invoke[:-40], converse[:len(converse) // 2] + aws.exception(
            "throttlingException", "Too many tokens, please wait before trying again.")):
        assert not usage.answer_whole("bedrock", body, usage.EVENT_STREAM)


def test_vertex_embeddings_predict_usage_is_logged_and_never_priced_per_token():
    body = json.dumps({"predictions": [{"embeddings": {"statistics": {"truncated": False, "token_count": 6},
                                                       "values": [0.1, -0.2]}},
                                       {"embeddings": {"statistics": {"truncated": False, "token_count": 4},
                                                       "values": [0.3, 0.4]}}],
                       "metadata": {"billableCharacterCount": 38}}).encode()
    p = parse_response("gemini", body, "application/json")
    assert p.known and not p.priced and p.tokens.prompt_tokens == 10
    from helicone_core.cost import CostRegistry
    assert p.cost(CostRegistry.default(), "gemini", "text-embedding-004") is None  # free on the Gemini API, not on Vertex
    # Imagen's :predict answers images: no token count, no usage
    images = json.dumps({"predictions": [{"bytesBase64Encoded": "iVBORw0KGgo=", "mimeType": "image/png"}]}).encode()
    assert not parse_response("gemini", images, "application/json").known


def test_whisper_is_read_as_the_seconds_of_audio_it_reports():
    """whisper-1 answers its audio's length, what it is billed by: `usage: {"type": "duration", "seconds": N}` (json and
    verbose_json today), verbose_json's `duration` before that; text, srt and vtt answers give none."""
    from helicone_core.cost import CostRegistry

    reg = CostRegistry.default()
    json_answer = json.dumps({"text": "hello", "usage": {"type": "duration", "seconds": 42}}).encode()
    verbose = json.dumps({"task": "transcribe", "language": "english", "duration": 42.3, "text": "hello", "segments": []}).encode()
    for body, usage_known in ((json_answer, True), (verbose, False)):
        p = parse_response("openai", body, "application/json")
        assert p.known is usage_known and p.tokens.audio_seconds == pytest.approx(float(json.loads(body).get("duration", 42)))
        assert p.cost(reg, "openai", "whisper-1") == pytest.approx(42 / 60 * 0.006)
    for body, ctype in ((b"hello", "text/plain"), (b"1\n00:00:00,000 --> 00:00:01,000\nhello\n", "application/x-subrip"),
                        (json.dumps({"text": "hello"}).encode(), "application/json"),
                        (json.dumps({"text": "hello", "usage": {"type": "duration"}}).encode(), "application/json"),
                        (json.dumps({"text": "hello", "duration": "42"}).encode(), "application/json")):
        assert parse_response("openai", body, ctype).cost(reg, "openai", "whisper-1") is None, body
    # the usage at the end of a verbose answer cut at the logged limit
    long = json.dumps({"task": "transcribe", "duration": 600.0, "text": "word " * 50_000,
                       "usage": {"type": "duration", "seconds": 600}}).encode()
    cut = parse_response("openai", long[:4096], "application/json", tail=long[-4096:])
    assert cut.tokens.audio_seconds == 600 and cut.cost(reg, "openai", "whisper-1") == pytest.approx(0.06)


def test_the_images_apis_usage_counts_image_tokens_apart():
    """gpt-image's usage: input_tokens_details splits text and image tokens; its output tokens are the image's, or
    output_tokens_details splits them. Other answers' details (the Responses API's cached_tokens) are no image."""
    usage_ = {"input_tokens": 373, "input_tokens_details": {"text_tokens": 50, "image_tokens": 323}, "output_tokens": 1056,
              "total_tokens": 1429}
    t = usage.openai_usage(usage_)
    assert (t.prompt_tokens, t.image_prompt_tokens, t.completion_tokens, t.image_completion_tokens) == (373, 323, 1056, 1056)
    split = usage.openai_usage({**usage_, "output_tokens_details": {"image_tokens": 1000, "text_tokens": 56}})
    assert (split.completion_tokens, split.image_completion_tokens) == (1056, 1000)
    responses = usage.openai_usage({"input_tokens": 100, "input_tokens_details": {"cached_tokens": 40}, "output_tokens": 10,
                                    "output_tokens_details": {"reasoning_tokens": 0}})
    assert (responses.cache_read_tokens, responses.image_prompt_tokens, responses.image_completion_tokens) == (40, 0, 0)
    # a gpt-image stream's image_generation.completed event carries the same usage
    stream = sse({"type": "image_generation.partial_image", "b64_json": "iVBO"},
                 {"type": "image_generation.completed", "b64_json": "iVBO", "usage": usage_})
    p = parse_response("openai", stream, "text/event-stream")
    assert p.known and p.tokens.image_prompt_tokens == 323 and p.tokens.image_completion_tokens == 1056
    # an answer of base64 images is cut at the logged limit: its usage, last, is read from the tail
    answer = json.dumps({"created": 1, "data": [{"b64_json": "A" * 200_000}], "usage": usage_}).encode()
    cut = parse_response("openai", answer[:4096], "application/json", tail=answer[-4096:])
    assert cut.known and (cut.tokens.image_prompt_tokens, cut.tokens.image_completion_tokens) == (323, 1056)


def test_the_realtime_apis_usage_counts_image_tokens_apart_cached_ones_too():
    """A Realtime response.done's usage: input_token_details.image_tokens are image tokens, and of the cached ones
    cached_tokens_details tells the kind (text, audio, image), images included; none of them without details."""
    usage_ = {"total_tokens": 1250, "input_tokens": 1200, "output_tokens": 50,
              "input_token_details": {"cached_tokens": 1088, "text_tokens": 150, "audio_tokens": 0, "image_tokens": 1050,
                                      "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 0, "image_tokens": 1024}},
              "output_token_details": {"text_tokens": 10, "audio_tokens": 40}}
    t = usage.openai_usage(usage_)
    assert (t.prompt_tokens, t.cache_read_tokens, t.image_prompt_tokens, t.image_cache_read_tokens) == (1200, 1088, 1050, 1024)
    assert (t.cache_read_split_tokens, t.image_completion_tokens, t.audio_completion_tokens) == (1088, 0, 40)
    unsplit = usage.openai_usage({**usage_, "input_token_details": {"cached_tokens": 1088, "image_tokens": 1050}})
    assert (unsplit.image_prompt_tokens, unsplit.image_cache_read_tokens, unsplit.cache_read_split_tokens) == (1050, 0, 0)


def test_chat_completions_and_responses_image_tokens_stay_text_tokens():
    """gpt-4o / gpt-4.1 bill an image's tokens as input tokens at the text rate: Chat Completions' prompt_tokens_details
    may count them (image_tokens, text_tokens), the Responses API's input_tokens_details does not; neither is an image
    token to price apart."""
    chat = {"prompt_tokens": 1000, "completion_tokens": 10, "total_tokens": 1010,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0, "text_tokens": 235, "image_tokens": 765}}
    responses = {"input_tokens": 1000, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                 "output_tokens": 10, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 1010}
    reg = CostRegistry.default()
    for answer in (chat, responses):
        t = usage.openai_usage(answer)
        assert (t.prompt_tokens, t.image_prompt_tokens, t.image_completion_tokens) == (1000, 0, 0), answer
        assert reg.cost("openai", "gpt-4o", t) == pytest.approx((1000 * 2.50 + 10 * 10.0) / 1e6)
        assert reg.cost("openai", "gpt-4.1", t) == pytest.approx((1000 * 2.0 + 10 * 8.0) / 1e6)


def form(fields: list[tuple[str, bytes]], boundary: str = "b-42", close: bool = True) -> tuple[bytes, str]:
    """A multipart/form-data body of (name, value) parts; a value starting with b"\\x89PNG" is a file."""
    parts = []
    for name, value in fields:
        file = '; filename="in.png"\r\nContent-Type: image/png' if value.startswith(b"\x89PNG") else ""
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{file}\r\n\r\n'.encode() + value + b"\r\n")
    return b"".join(parts) + (f"--{boundary}--\r\n".encode() if close else b""), f"multipart/form-data; boundary={boundary}"


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
FORM_TYPE = form([])[1]


def test_speech_and_image_requests_count_what_they_are_billed_for():
    """tts-1's answer is audio and dall-e's names no usage: what they are billed for is in the request, tts-1's `input`
    characters and dall-e's `n`, `size` and `quality` (each missing one the API's default: 1, 1024x1024, standard)."""
    billed = usage.billed_by_request
    none = usage.Parsed(model="")
    speech = json.dumps({"model": "tts-1", "input": "Héllo there", "voice": "alloy"}).encode()
    p = billed(none, "/v1/audio/speech", speech, "application/json", True)
    assert p.billed and not p.known and p.tokens == TokenCounts(characters=11)  # characters, not UTF-8 bytes
    assert billed(none, "/openai/deployments/tts/audio/speech", speech, "application/json", True).tokens.characters == 11
    generate = json.dumps({"model": "dall-e-3", "prompt": "a cat", "size": "1792x1024", "quality": "hd"}).encode()
    assert billed(none, "/v1/images/generations", generate, "application/json", True).tokens.images == (("hd", "1792x1024", 1),)
    defaults = json.dumps({"model": "dall-e-2", "prompt": "a cat", "n": 3, "size": None}).encode()
    assert billed(none, "/v1/images/generations", defaults, "application/json", True).tokens.images == (("standard", "1024x1024", 3),)
    edit, ctype = form([("model", b"dall-e-2"), ("n", b"2"), ("size", b"512x512"), ("image", PNG), ("prompt", b"blue")])
    assert billed(none, "/v1/images/edits", edit, ctype, True).tokens.images == (("standard", "512x512", 2),)
    variation, ctype = form([("image", PNG), ("model", b"dall-e-2")])
    assert billed(none, "/v1/images/variations", variation, ctype, True).tokens.images == (("standard", "1024x1024", 1),)
    # a streamed upload's logged start, cut in its file after n and size (an SDK sends the fields first): its quality,
    # not told, matters not for dall-e-2 (one quality), for dall-e-3 it would
    from helicone_core.cost import CostRegistry

    cut = form([("model", b"dall-e-2"), ("n", b"2"), ("size", b"512x512"), ("image", PNG)], close=False)[0][:-100]
    p = billed(none, "/v1/images/edits", cut, ctype, True)
    assert p.tokens.images == (("", "512x512", 2),)
    assert p.cost(CostRegistry.default(), "openai", "dall-e-2") == pytest.approx(2 * 0.018)
    wide = billed(none, "/v1/images/edits", cut.replace(b"512x512", b"1024x1024"), ctype, True)
    assert wide.cost(CostRegistry.default(), "openai", "dall-e-3") is None  # standard $0.04 or hd $0.08


@pytest.mark.parametrize("path, body, ctype, answered", [
    ("/v1/audio/speech", b'{"model": "tts-1", "input": "cut at the lo', "application/json", True),  # not JSON: cut
    ("/v1/audio/speech", b'{"model": "tts-1", "input": ["a"]}', "application/json", True),
    ("/v1/audio/speech", b'{"model": "tts-1", "input": "hello"}', "application/json", False),  # a 4xx, cut short
    ("/v1/chat/completions", b'{"model": "tts-1", "input": "hello"}', "application/json", True),
    ("/v1/images/generations", b'{"model": "dall-e-2", "prompt": "x", "n": 0}', "application/json", True),
    ("/v1/images/generations", b'{"model": "dall-e-2", "prompt": "x", "n": 11}', "application/json", True),
    ("/v1/images/generations", b'{"model": "dall-e-2", "prompt": "x", "n": true}', "application/json", True),
    ("/v1/images/generations", b'{"model": "dall-e-2", "prompt": "x", "n": 2.0}', "application/json", True),
    ("/v1/images/generations", b'{"model": "dall-e-3", "prompt": "x", "size": 1024}', "application/json", True),
    # a streamed upload's logged start, cut before its fields: they may say otherwise than the defaults
    ("/v1/images/edits", form([("image", PNG)], close=False)[0], FORM_TYPE, True),
    ("/v1/images/edits", form([("model", b"dall-e-2"), ("n", b"2"), ("image", PNG)], close=False)[0], FORM_TYPE, True),
    ("/v1/images/edits", form([("n", b"x2"), ("image", PNG)])[0], FORM_TYPE, True),
    ("/v1/images/edits", form([("n", "²".encode()), ("image", PNG)])[0], FORM_TYPE, True),  # a digit, not a number
    ("/v1/images/edits", form([("n", b"2"), ("image", PNG)])[0], "multipart/form-data", True),  # no boundary
])
def test_a_request_that_does_not_tell_what_it_was_billed_for_counts_nothing(path, body, ctype, answered):
    p = usage.billed_by_request(usage.Parsed(model="m"), path, body, ctype, answered)
    assert not p.billed and p.tokens == TokenCounts()


def test_an_answer_with_a_usage_or_not_priced_is_not_counted_again_from_its_request():
    speech = b'{"model": "gpt-4o-mini-tts", "input": "hello", "stream_format": "sse"}'
    read = usage.Parsed(model="", tokens=TokenCounts(prompt_tokens=1, completion_tokens=50), known=True)
    assert usage.billed_by_request(read, "/v1/audio/speech", speech, "application/json", True) is read
    failed = usage.Parsed(model="", priced=False)
    assert usage.billed_by_request(failed, "/v1/audio/speech", speech, "application/json", True) is failed


def test_form_fields_reads_a_forms_small_fields_and_whether_it_came_whole():
    body, ctype = form([("model", b"whisper-1"), ("file", PNG), ("n", b"2"), ("prompt", b"x" * 300)])
    assert usage.form_fields(body, ctype, frozenset({b"model", b"n", b"prompt"})) == ({"model": "whisper-1", "n": "2", "prompt": ""}, True)
    cut = body[:len(body) // 2]
    assert usage.form_fields(cut, ctype, frozenset({b"model", b"n"})) == ({"model": "whisper-1"}, False)
    assert usage.form_model(body, ctype) == "whisper-1" and usage.form_model(body, "application/json") == ""


def test_request_fields_are_unicode_text_a_lone_surrogate_written_as_a_question_mark():
    body = b'{"model": "gpt-4o\\ud800", "user": "\\udfffu", "stream": true}'
    assert request_fields(body) == ("gpt-4o?", True, "?u")
    assert usage.unicode_text("caf\u00e9 \u6f22") == "caf\u00e9 \u6f22" and usage.unicode_text("plain") == "plain"


def test_an_unquoted_form_field_name_with_blanks_after_it_is_still_read():
    body = (b"--b\r\nContent-Disposition: form-data; name=model \r\n\r\nwhisper-1\r\n"
            b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF\r\n--b--\r\n")
    assert usage.form_model(body, "multipart/form-data; boundary=b") == "whisper-1"
