"""OpenAI's endpoints other than chat completions (files, uploads, audio speech, images, responses, embeddings,
moderations) through the real gateway (its own HTTP server) with the official openai SDK pointed at it by base_url,
against the fake provider on loopback: the bytes each way, and what the log keeps."""

import asyncio
import contextlib
import hashlib
import json

import httpx
import openai
import pytest
import websockets
from helicone_gateway.app import create_app
from helicone_gateway.http_server import HttpServer
from helicone_gateway.settings import GatewaySettings

from services.gateway.tests.test_http_server import running
from services.gateway.tests.test_proxy import StubKeys
from tests.support.fake_upstream import (
    IMAGE_INPUT_TOKENS,
    IMAGE_TOKENS,
    SPEECH_TOKENS_PER_WORD,
    WHISPER_SECONDS,
    binary_bytes,
)
from tests.support.fake_upstream import create_app as create_fake_upstream
from tests.support.inloop import serve

LOGGED = 4096  # HELICONE_MAX_LOGGED_BODY_BYTES of these gateways


@contextlib.asynccontextmanager
async def gateway_for(tmp_path, **settings):
    """(openai SDK client, fake provider, built events, gateway URL): the gateway's app on its own HTTP server in front
    of the fake provider, with a stub key store and a publisher that records the events it builds."""
    fake = create_fake_upstream()
    async with serve(fake) as upstream_url:
        config = GatewaySettings(
            data_dir=tmp_path,
            _env_file=None,
            openai_url=upstream_url,
            kafka_bootstrap="127.0.0.1:1",
            port=0,
            max_logged_body_bytes=LOGGED,
            **settings,
        )
        app = create_app(config)
        gw = app.state.gateway
        gw.keys = StubKeys()
        built: list = []
        async with running(server=HttpServer.for_settings(app, config)) as server:
            gw.publisher.submit = lambda builder, size=0: built.append(builder())
            url = f"http://127.0.0.1:{server.bound[1]}"
            client = openai.AsyncOpenAI(
                base_url=url + "/v1", api_key="sk-provider", max_retries=0, default_headers={"Helicone-Auth": "Bearer good-key"}
            )
            async with client:
                yield client, fake, built, url


@pytest.fixture
async def gateway(tmp_path):
    async with gateway_for(tmp_path) as stack:
        yield stack


async def logged(built: list, n: int = 1) -> list:
    """The first `n` events, once built (the log is written after the answer went out)."""
    for _ in range(200):
        if len(built) >= n:
            return built[:n]
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(built)} events logged, {n} expected")


async def test_an_image_edit_is_logged_with_the_model_of_its_form(gateway):
    """images.edit is multipart/form-data, its model a form field and the answer naming none: the model was read from
    the form only on the audio paths, so an edit was logged with no model at all."""
    client, fake, built, _ = gateway
    image = binary_bytes(5000)
    answer = await client.images.edit(model="gpt-image-1", image=("cat.png", image, "image/png"), prompt="make it blue")
    assert answer.data[0].b64_json and answer.usage.output_tokens > 0
    assert fake.state.received[-1]["body"]["model"] == "gpt-image-1"
    [ev] = await logged(built)
    assert (ev.status, ev.model, ev.path) == (200, "gpt-image-1", "/v1/images/edits")
    assert ev.usage.known and ev.cost_known  # its image tokens at gpt-image-1's prices: test_gpt_image_models_...


async def test_a_streamed_speech_is_priced_as_gpt_4o_mini_tts_and_a_binary_one_is_unknown(gateway):
    """gpt-4o-mini-tts with stream_format "sse" ends with speech.audio.done and its usage in tokens (audio tokens out:
    $12 per 1M, text in $0.60; platform.openai.com/docs/pricing). The registry had no entry for it, so its name's
    longest known prefix, gpt-4o-mini, priced it at $0.15 / $0.60: a cost 20 times too low. The binary answer
    (audio/mpeg, no usage) is relayed byte for byte and its cost is unknown."""
    client, fake, built, _ = gateway
    text = "one two three four five"
    async with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="alloy", input=text, stream_format="sse"
    ) as resp:
        events = b"".join([piece async for piece in resp.iter_bytes()])
    assert b"speech.audio.done" in events
    audio = await client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input=text)
    assert audio.content == binary_bytes(len(audio.content)) and len(audio.content) > LOGGED
    sse, mp3 = await logged(built, 2)
    words = len(text.split())
    assert (sse.model, sse.usage.prompt_tokens, sse.usage.completion_tokens) == (
        "gpt-4o-mini-tts",
        words,
        SPEECH_TOKENS_PER_WORD * words,
    )
    assert sse.cost_known and sse.cost_usd == pytest.approx((words * 0.60 + SPEECH_TOKENS_PER_WORD * words * 12.0) / 1e6)
    assert (mp3.model, mp3.usage.known, mp3.cost_known) == ("gpt-4o-mini-tts", False, False)
    assert mp3.inline.response_content_type == "audio/mpeg" and mp3.inline.response_truncated
    assert mp3.inline.response_body == binary_bytes(LOGGED)  # the start of the audio as sent, not text


async def test_tts_1_whisper_1_and_dall_e_are_priced_by_what_openai_bills_them(gateway):
    """Their answers carry no tokens, and their cost was unknown. tts-1 is billed per character of its input ($15 per
    1M, tts-1-hd $30), whisper-1 per minute of audio ($0.006, by its answer's usage.seconds; a text answer gives none:
    unknown), DALL-E per image by size and quality (dall-e-3 standard 1024x1024 $0.04, hd 1792x1024 $0.12, a request
    naming neither gets the API's defaults, standard 1024x1024; dall-e-2 256x256 $0.016 each of n)."""
    client, _fake, built, _ = gateway
    text = "Héllo there, what a day"  # characters, not UTF-8 bytes
    for model in ("tts-1", "tts-1-hd"):
        audio = await client.audio.speech.create(model=model, voice="alloy", input=text)
        assert audio.content == binary_bytes(len(audio.content))
    transcript = await client.audio.transcriptions.create(model="whisper-1", file=("a.wav", binary_bytes(2000), "audio/wav"))
    assert transcript.usage.seconds == WHISPER_SECONDS
    plain = await client.audio.transcriptions.create(model="whisper-1", file=("a.wav", binary_bytes(2000), "audio/wav"),
                                                     response_format="text")
    assert isinstance(plain, str)
    await client.images.generate(model="dall-e-3", prompt="a cat", size="1792x1024", quality="hd")
    await client.images.generate(model="dall-e-3", prompt="a cat")
    three = await client.images.generate(model="dall-e-2", prompt="a cat", n=3, size="256x256")
    assert len(three.data) == 3
    events = await logged(built, 7)
    assert [(ev.model, ev.status) for ev in events] == [
        ("tts-1", 200), ("tts-1-hd", 200), ("whisper-1", 200), ("whisper-1", 200), ("dall-e-3", 200), ("dall-e-3", 200),
        ("dall-e-2", 200)]
    costs = [ev.cost_usd if ev.cost_known else None for ev in events]
    assert costs == pytest.approx([len(text) * 15.0 / 1e6, len(text) * 30.0 / 1e6, WHISPER_SECONDS / 60 * 0.006, None,
                                   0.12, 0.04, 3 * 0.016])
    # no tokens were reported: the usage stays unknown, the cost is what the request was billed for
    assert [ev.usage.known for ev in events] == [False, False, True, False, False, False, False]


async def test_gpt_image_models_are_priced_by_their_text_and_image_tokens(gateway):
    """gpt-image-1's usage splits its input into text and image tokens ($5 and $10 per 1M) and its output is image
    tokens ($40 per 1M); gpt-image-1-mini $2, $2.50, $8. They had no price: their cost was unknown."""
    client, _fake, built, _ = gateway
    generated = await client.images.generate(model="gpt-image-1", prompt="a cat on a mat", n=2)
    assert generated.usage.output_tokens == 2 * IMAGE_TOKENS
    edited = await client.images.edit(model="gpt-image-1-mini", image=("cat.png", binary_bytes(5000), "image/png"),
                                      prompt="make it blue")
    assert edited.usage.input_tokens_details.image_tokens == IMAGE_INPUT_TOKENS
    generate, edit = await logged(built, 2)
    assert generate.cost_known and generate.cost_usd == pytest.approx((5 * 5.0 + 2 * IMAGE_TOKENS * 40.0) / 1e6)
    assert edit.model == "gpt-image-1-mini" and edit.cost_known
    assert edit.cost_usd == pytest.approx((3 * 2.0 + IMAGE_INPUT_TOKENS * 2.50 + IMAGE_TOKENS * 8.0) / 1e6)


def edit_form(fields: dict[str, str], image: bytes, fields_first: bool, boundary: str = "edit-b1") -> tuple[bytes, str]:
    """An image edit's multipart body: its fields before the image (as the SDKs send them) or after it."""
    text = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items())
    file = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="in.png"\r\n'
            "Content-Type: image/png\r\n\r\n").encode() + image + b"\r\n"
    parts = [text.encode(), file] if fields_first else [file, text.encode()]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def test_a_dall_e_edit_streamed_as_a_large_upload_is_priced_only_from_the_fields_its_logged_start_holds(gateway):
    """An upload of a megabyte or more is streamed and only its start is kept: n and size sent before the image (as the
    SDKs send them) price it (dall-e-2 512x512, $0.018 each); sent after it, the start does not tell them, and the
    cost is unknown rather than the defaults' (1 image, 1024x1024)."""
    client, fake, built, url = gateway
    image = binary_bytes(1536 * 1024)
    answer = await client.images.edit(model="dall-e-2", image=("big.png", image, "image/png"), prompt="blue", n=2,
                                      size="512x512")
    assert len(answer.data) == 2
    body, ctype = edit_form({"model": "dall-e-2", "prompt": "blue", "n": "2", "size": "512x512"}, image, fields_first=False)
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(url + "/v1/images/edits", content=body,
                            headers={"Helicone-Auth": "Bearer good-key", "Authorization": "Bearer sk-provider", "Content-Type": ctype})
    assert r.status_code == 200 and len(r.json()["data"]) == 2 and fake.state.received[-1]["body"]["bytes"] == len(body)
    sdk, fields_last = await logged(built, 2)
    assert sdk.inline.request_truncated and fields_last.inline.request_truncated  # streamed: their start kept
    assert (sdk.model, sdk.cost_known) == ("dall-e-2", True) and sdk.cost_usd == pytest.approx(2 * 0.018)
    assert (fields_last.model, fields_last.status, fields_last.cost_known) == ("", 200, False)


def upload_body(size: int, boundary: str = "helicone-upload-b1") -> tuple[bytes, str]:
    """A file upload as an SDK sends it (purpose, then the file): `size` bytes of file, binary."""
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--{boundary}\r\n'
        'Content-Disposition: form-data; name="file"; filename="big.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'
    )
    return head.encode() + binary_bytes(size) + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def raw_post(url: str, path: str, head_extra: str, body: bytes):
    """(reader, writer) of a connection to the gateway on which the request's head has been sent, its body not yet."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        (
            f"POST {path} HTTP/1.1\r\nhost: gw\r\nhelicone-auth: Bearer good-key\r\nauthorization: Bearer sk-provider\r\n"
            f"content-length: {len(body)}\r\n{head_extra}\r\n"
        ).encode()
    )
    await writer.drain()
    return reader, writer


async def test_an_upload_over_the_request_limit_goes_through_byte_for_byte_and_its_start_is_logged(tmp_path):
    """Uploads were read whole into the gateway's memory (about four times their size at the peak) before being sent,
    so HELICONE_MAX_REQUEST_BYTES (32 MiB) refused them past it with a 413: the SDK's uploads.upload_file_chunked sends
    64 MiB parts, and OpenAI takes files of up to 512 MB. A large multipart upload is now streamed to the provider as
    it arrives: it reaches the provider byte for byte, and the log keeps its start, flagged cut."""
    async with gateway_for(tmp_path, max_request_bytes=1024 * 1024) as (client, fake, built, url):
        part = binary_bytes(3 * 1024 * 1024)
        answer = await client.uploads.parts.create(upload_id="upload_abc", data=part)
        assert answer.upload_id == "upload_abc"
        received = fake.state.received[-1]
        assert received["path"] == "/v1/uploads/upload_abc/parts" and received["headers"]["authorization"] == "Bearer sk-provider"
        assert received["body"]["bytes"] == int(received["headers"]["content-length"]) > len(part)
        body, ctype = upload_body(3 * 1024 * 1024 + 17)
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.post(
                url + "/v1/files", content=body, headers={"Helicone-Auth": "Bearer good-key", "Content-Type": ctype}
            )
        assert r.status_code == 200 and r.json()["bytes"] == len(body)
        assert fake.state.received[-1]["body"] == {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        parts, files = await logged(built, 2)
    assert (parts.status, parts.path, parts.inline.request_truncated) == (200, "/v1/uploads/upload_abc/parts", True)
    assert len(parts.inline.request_body) == LOGGED and parts.inline.request_body.startswith(b"--")
    assert (files.status, files.path, files.model) == (200, "/v1/files", "")
    assert (files.inline.request_body, files.inline.request_truncated) == (body[:LOGGED], True)
    assert files.inline.request_content_type == ctype and files.inline.response_body == r.content


async def test_an_upload_reaches_the_provider_while_the_caller_is_still_sending_it(gateway):
    """The gateway holds no upload whole: the provider has the first megabytes before the caller sends the rest (the
    gateway's memory for it is its buffers, not the upload's size)."""
    _client, fake, built, url = gateway
    body, ctype = upload_body(6 * 1024 * 1024)
    first = 3 * 1024 * 1024
    reader, writer = await raw_post(url, "/v1/files", f"content-type: {ctype}\r\n", body)
    writer.write(body[:first])
    for _ in range(300):  # the provider reads the first part while the rest has not been sent
        if fake.state.upload_progress >= 2 * 1024 * 1024:
            break
        await asyncio.sleep(0.01)
    assert fake.state.upload_progress >= 2 * 1024 * 1024, "the provider got nothing before the whole upload was sent"
    writer.write(body[first:])
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200")
    assert fake.state.received[-1]["body"] == {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    [ev] = await logged(built)
    assert ev.status == 200 and ev.inline.request_body == body[:LOGGED]


async def test_a_caller_that_leaves_mid_upload_cuts_the_providers_upload_and_is_logged_499_with_its_start(gateway):
    _client, fake, built, url = gateway
    body, ctype = upload_body(4 * 1024 * 1024)
    reader, writer = await raw_post(url, "/v1/files", f"content-type: {ctype}\r\n", body)
    writer.write(body[: 2 * 1024 * 1024])
    await writer.drain()
    for _ in range(300):
        if fake.state.upload_progress >= 1024 * 1024:
            break
        await asyncio.sleep(0.01)
    writer.transport.abort()
    [ev] = await logged(built)
    assert ev.status == 499 and "client disconnected" in ev.error
    assert (ev.inline.request_body, ev.inline.request_truncated) == (body[:LOGGED], True)
    for _ in range(300):
        if fake.state.received and fake.state.received[-1]["body"].get("cut"):
            break
        await asyncio.sleep(0.01)
    assert fake.state.received[-1]["body"]["cut"] and fake.state.received[-1]["body"]["bytes"] < len(body)


async def test_a_provider_that_refuses_an_upload_before_reading_it_is_answered_at_once(gateway):
    """A provider may answer an upload before reading it (a 413, a 401): the caller gets that answer, and the gateway
    stops sending the rest."""
    _client, fake, built, url = gateway
    body, ctype = upload_body(8 * 1024 * 1024)
    reader, writer = await raw_post(url, "/v1/files", f"content-type: {ctype}\r\nx-fake-reject: 413\r\n", body)
    writer.write(body[: 2 * 1024 * 1024])
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 413")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    assert b"upload refused" in await asyncio.wait_for(reader.readexactly(length), 10)
    writer.transport.abort()
    [ev] = await logged(built)
    assert ev.status == 413 and fake.state.received[-1]["body"] == {"rejected": True}


async def test_a_json_body_over_the_request_limit_is_still_a_413_naming_the_setting(tmp_path):
    """JSON bodies are read whole (their model, a prompt, the cache key, retries): the limit holds for them."""
    async with gateway_for(tmp_path, max_request_bytes=64 * 1024) as (client, _fake, built, _url):
        with pytest.raises(openai.APIStatusError) as info:
            await client.embeddings.create(model="text-embedding-3-small", input=["word " * 20_000])
    assert info.value.status_code == 413 and "HELICONE_MAX_REQUEST_BYTES" in info.value.message


async def test_a_realtime_websocket_to_a_provider_without_it_gets_the_providers_status(gateway):
    """The Realtime API is a WebSocket (GET /v1/realtime, Upgrade: websocket): the gateway relays it
    (test_realtime.py); a provider that does not upgrade it answers the SDK with its own HTTP status, logged."""
    client, _fake, built, _url = gateway
    with pytest.raises(websockets.InvalidStatus) as info:
        async with asyncio.timeout(5):
            async with client.realtime.connect(model="gpt-realtime"):
                pass
    response = info.value.response
    # the fake provider's server has no WebSocket route: it refuses the upgrade with a 403
    assert response.status_code == 403, response.body
    assert "WebSocket handshake with 403" in json.loads(response.body)["error"]["message"]
    [ev] = await logged(built)
    assert (ev.status, ev.model, ev.path) == (403, "gpt-realtime", "/v1/realtime")


async def test_a_batch_or_a_stored_response_retrieved_is_logged_without_its_usage_never_priced_again(gateway):
    """A batch object carries its model and its whole batch's usage (billed at the batch API's half prices), and a
    stored response the usage of the call that made it: each batches.retrieve poll, a cancel, and each
    responses.retrieve was logged with that usage priced at the standard rate, once more every time."""
    client, _fake, built, _url = gateway
    created = await client.batches.create(input_file_id="file-abc", endpoint="/v1/chat/completions", completion_window="24h")
    for _ in range(2):  # polled until done
        assert (await client.batches.retrieve(created.id)).usage.output_tokens == 50_000
    assert (await client.batches.cancel(created.id)).status == "completed"
    assert (await client.responses.retrieve("resp_abc")).usage.input_tokens == 1000
    events = await logged(built, 5)
    assert [ev.path for ev in events] == [
        "/v1/batches",
        f"/v1/batches/{created.id}",
        f"/v1/batches/{created.id}",
        f"/v1/batches/{created.id}/cancel",
        "/v1/responses/resp_abc",
    ]
    for ev in events:
        assert ev.status == 200 and not ev.usage.known and not ev.cost_known and ev.cost_usd == 0, ev
    assert [ev.model for ev in events[1:]] == ["gpt-4o-mini"] * 4  # the model each names is still logged


async def test_files_content_responses_embeddings_and_moderations_through_the_sdk(gateway):
    """What was found right, kept so: a file's binary content comes back byte for byte and is logged as bytes (its start,
    flagged cut); the Responses API's usage is read from the JSON answer and from response.completed; the SDK's base64
    embeddings carry their usage; a moderation has none (cost unknown)."""
    client, fake, built, _ = gateway
    content = await client.files.content("file-abc", extra_headers={"x-fake-bytes": str(300_000)})
    assert content.content == binary_bytes(300_000)
    answer = await client.responses.create(model="gpt-4o-mini", input="one two three")
    assert answer.output_text == "Hello from the fake upstream model"
    stream = await client.responses.create(model="gpt-4o-mini", input="one two three", stream=True)
    assert [e.type async for e in stream][-1] == "response.completed"
    vectors = await client.embeddings.create(model="text-embedding-3-small", input=["a b c", "d"])
    assert len(vectors.data[1].embedding) == 8 and fake.state.received[-1]["body"]["encoding_format"] == "base64"
    await client.moderations.create(model="omni-moderation-latest", input="hello")
    download, json_answer, sse, embeddings, moderation = await logged(built, 5)
    assert (download.status, download.usage.known, download.inline.response_content_type) == (
        200,
        False,
        "application/octet-stream",
    )
    assert (download.inline.response_body, download.inline.response_truncated) == (binary_bytes(LOGGED), True)
    for ev in (json_answer, sse):
        assert (ev.model, ev.usage.prompt_tokens, ev.usage.completion_tokens) == ("gpt-4o-mini", 3, 6)
        assert ev.cost_known and ev.cost_usd == pytest.approx((3 * 0.15 + 6 * 0.60) / 1e6)
    assert sse.streamed and not json_answer.streamed
    assert (embeddings.model, embeddings.usage.prompt_tokens) == ("text-embedding-3-small", 4)
    assert embeddings.cost_known and embeddings.cost_usd == pytest.approx(4 * 0.02 / 1e6)
    assert (moderation.model, moderation.usage.known, moderation.cost_known) == ("omni-moderation-latest", False, False)


async def test_openai_cache_writes_are_logged_and_priced_at_the_models_cache_write_price(gateway):
    """GPT-5.6 and later bill prompt tokens written to the cache at 1.25x input; OpenAI reports them apart from the cached
    ones (prompt_tokens_details / input_tokens_details.cache_write_tokens). Chat Completions (JSON and a stream) and the
    Responses API log them as cache writes, priced at gpt-6.2-sol's $2.50 per 1M, not its $2 input."""
    client, _, built, _ = gateway
    cache = {"extra_headers": {"x-fake-cache": json.dumps({"cached_tokens": 4, "cache_write_tokens": 3})}}
    words = "one two three four five six seven eight nine ten"
    await client.chat.completions.create(model="gpt-6.2-sol", messages=[{"role": "user", "content": words}], **cache)
    stream = await client.chat.completions.create(model="gpt-6.2-sol", messages=[{"role": "user", "content": words}],
                                                  stream=True, stream_options={"include_usage": True}, **cache)
    assert [c async for c in stream]
    await client.responses.create(model="gpt-6.2-sol", input=words, **cache)
    for ev in await logged(built, 3):
        assert (ev.model, ev.usage.prompt_tokens, ev.usage.cache_read_tokens, ev.usage.cache_write_tokens) == ("gpt-6.2-sol", 10, 4, 3)
        assert ev.cost_known and ev.cost_usd == pytest.approx((3 * 2.0 + 4 * 0.10 + 3 * 2.50 + 6 * 10.0) / 1e6)
