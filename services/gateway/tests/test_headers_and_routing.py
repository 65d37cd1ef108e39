import pytest
from helicone_gateway.headers import (
    HeaderError,
    forward_request_headers,
    forward_response_headers,
    narrow_accept_encoding,
    parse_helicone_headers,
)
from helicone_gateway.providers import Router
from helicone_gateway.settings import GatewaySettings


def test_parse_helicone_headers():
    hh = parse_helicone_headers([
        ("helicone-auth", "Bearer sk-helicone-abc"),
        ("helicone-user-id", "alice"),
        ("helicone-session-id", "s-1"),
        ("helicone-session-path", "/plan/step-1"),
        ("helicone-session-name", "Trip planner"),
        ("helicone-property-environment", "prod"),
        ("helicone-property-feature", "chat"),
        ("authorization", "Bearer sk-provider"),
    ])
    assert hh.auth_key == "sk-helicone-abc"
    assert (hh.user_id, hh.session_id, hh.session_path, hh.session_name) == ("alice", "s-1", "/plan/step-1", "Trip planner")
    assert hh.properties == {"environment": "prod", "feature": "chat"}


@pytest.mark.parametrize("headers, message", [
    ([("helicone-auth", "sk-helicone-abc")], "Bearer"),
    ([("helicone-target-url", "ftp://x")], "absolute http"),
    ([("helicone-target-url", "https://u:p@host")], "credentials"),
    ([("helicone-target-url", "http://a\\@b/")], "not a valid URL"),
    # IPv4 addresses spelled so that the resolver, not the gateway, would decode them
    ([("helicone-target-url", "http://2130706433:8000")], "non-standard form"),
    ([("helicone-target-url", "http://0x7f.1/")], "non-standard form"),
    ([("helicone-target-url", "http://127.1/")], "non-standard form"),
    ([("helicone-target-url", "http://0177.0.0.1/")], "non-standard form"),
    ([("helicone-target-url", "http://127.0.0.1./")], "non-standard form"),
    # host names no resolver can be asked about: an empty label, or one over 63 characters
    ([("helicone-target-url", "http://models..example")], "not a valid host name"),
    ([("helicone-target-url", "https://.example")], "not a valid host name"),
    ([("helicone-target-url", f"http://{'a' * 64}.example:8000")], "not a valid host name"),
    ([("helicone-fallbacks", '[{"target-url": "http://models..example"}]')], "not a valid host name"),
    ([("helicone-request-id", "not-a-uuid")], "UUID"),
    ([("helicone-property-", "x")], "name"),
    ([("helicone-user-id", "u" * 600)], "longer"),
])
def test_bad_helicone_headers_are_clear_errors(headers, message):
    with pytest.raises(HeaderError, match=message):
        parse_helicone_headers(headers)


@pytest.mark.parametrize("values", [("Bearer sk-helicone-a", "Bearer sk-helicone-b"), ("Bearer sk-helicone-a", "Bearer sk-helicone-a")])
def test_two_helicone_auth_headers_are_refused(values):
    # which one counts would differ from the api (first) and a proxy in front; one credential, or a 400
    with pytest.raises(HeaderError, match="Helicone-Auth"):
        parse_helicone_headers([("helicone-auth", v) for v in values])


def test_helicone_and_hop_by_hop_headers_are_not_forwarded():
    fwd = dict(forward_request_headers([
        ("helicone-auth", "Bearer x"), ("helicone-property-a", "b"), ("host", "gw"), ("connection", "keep-alive"),
        ("content-length", "5"), ("authorization", "Bearer sk-provider"), ("x-api-key", "sk-ant"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
    ]))
    assert fwd == {"authorization": "Bearer sk-provider", "x-api-key": "sk-ant", "accept-encoding": "gzip, deflate"}


def test_headers_a_connection_header_names_are_hop_by_hop_both_ways():
    """RFC 9110 7.6.1: a proxy removes the headers Connection names, in requests and in answers."""
    fwd = dict(forward_request_headers([("connection", "keep-alive, X-Hop-Only"), ("connection", "x-other"),
                                        ("x-hop-only", "for the gateway"), ("x-other", "too"), ("x-kept", "1")]))
    assert fwd == {"x-kept": "1"}
    back = forward_response_headers([(b"Connection", b"close, X-Upstream-Only"), (b"X-Upstream-Only", b"1"),
                                     (b"Content-Type", b"application/json")])
    assert back == [(b"content-type", b"application/json")]


def test_accept_encoding_keeps_only_what_the_log_can_decode():
    assert narrow_accept_encoding("br, zstd") == "identity"
    assert narrow_accept_encoding("gzip;q=1.0, br;q=0.5") == "gzip;q=1.0"


def test_routing():
    s = GatewaySettings(openai_url="https://oai.example", anthropic_url="https://ant.example", _env_file=None)
    route = Router(s).route
    assert route("/v1/chat/completions", {}, "") .base_url == "https://oai.example"
    r = route("/v1/messages", {}, "")
    assert (r.provider, r.base_url, r.path, r.usage) == ("anthropic", "https://ant.example", "/v1/messages", "anthropic")
    r = route("/anthropic/v1/messages", {}, "")
    assert (r.provider, r.path) == ("anthropic", "/v1/messages")
    r = route("/openai/v1/embeddings", {}, "")
    assert (r.provider, r.path) == ("openai", "/v1/embeddings")
    assert not r.target
    r = route("/v1/chat/completions", {}, "https://api.together.xyz/")
    assert (r.provider, r.base_url, r.target) == ("openai", "https://api.together.xyz", True)


def test_a_path_not_starting_with_a_slash_stays_on_the_providers_host():
    """Defense in depth behind the HTTP server's refusal: "*@host:port/x" after a base URL would name another host."""
    from yarl import URL

    route = Router(GatewaySettings(openai_url="https://oai.example", _env_file=None)).route
    for target in ("*@10.0.0.5:8443/v1/chat/completions", "*.internal/x", "*"):
        r = route(target, {}, "")
        assert URL(r.base_url + r.path).host == "oai.example" and r.path.startswith("/"), target


def test_routing_by_the_provider_table():
    s = GatewaySettings(provider_urls={"groq": "https://groq.proxy.example/"}, _env_file=None)
    route = Router(s).route
    r = route("/groq/openai/v1/chat/completions", {}, "")
    assert (r.provider, r.base_url, r.path, r.usage) == ("groq", "https://groq.proxy.example", "/openai/v1/chat/completions", "openai")
    r = route("/together/v1/chat/completions", {}, "")
    assert (r.provider, r.base_url, r.path) == ("together", "https://api.together.xyz", "/v1/chat/completions")
    r = route("/gemini/v1beta/models/gemini-2.5-pro:streamGenerateContent", {}, "")
    assert (r.provider, r.base_url, r.usage, r.path_model()) == (
        "gemini", "https://generativelanguage.googleapis.com", "gemini", "gemini-2.5-pro")
    r = route("/gemini/v1beta/openai/chat/completions", {}, "")
    assert (r.provider, r.usage, r.path_model()) == ("gemini", "openai", "")
    # no prefix: Gemini's native path names it (e.g. Vertex AI through Helicone-Target-URL)
    r = route("/v1/projects/p/locations/l/publishers/google/models/gemini-2.5-flash:generateContent", {}, "https://vertex.example")
    assert (r.provider, r.usage, r.target, r.path_model()) == ("gemini", "gemini", True, "gemini-2.5-flash")
    # Azure has no default: Helicone-Target-URL (or HELICONE_PROVIDER_URLS) names the resource
    r = route("/azure/openai/deployments/prod-4o/chat/completions", {}, "")
    assert (r.provider, r.base_url, r.path_model()) == ("azure", "", "prod-4o")
    r = route("/azure/openai/deployments/prod-4o/chat/completions", {}, "https://acme.openai.azure.com")
    assert (r.provider, r.base_url, r.target) == ("azure", "https://acme.openai.azure.com", True)
    assert route("/groqx/v1/chat/completions", {}, "").provider == "openai"  # not a prefix: a path like any other


def test_anthropic_openai_sdk_path_reads_openai_usage_and_names_no_provider():
    """Anthropic's OpenAI SDK layer answers /v1/chat/completions with OpenAI's usage; that path, without a
    prefix, stays OpenAI's (only a marker of a provider's own format names it, as Gemini's :generateContent)."""
    route = Router(GatewaySettings(_env_file=None)).route
    r = route("/anthropic/v1/chat/completions", {}, "")
    assert (r.provider, r.path, r.usage) == ("anthropic", "/v1/chat/completions", "openai")
    assert (route("/anthropic/v1/messages", {}, "").usage, route("/v1/messages", {}, "").usage) == ("anthropic", "anthropic")
    r = route("/v1/chat/completions", {}, "")
    assert (r.provider, r.usage) == ("openai", "openai")
    r = route("/v1/chat/completions", {"anthropic-version": "2023-06-01"}, "")
    assert (r.provider, r.usage) == ("anthropic", "openai")
    assert route("/groq", {}, "").path == "/"


def test_a_path_without_a_colon_is_searched_for_no_custom_method_marker():
    """Gemini's markers (":generateContent" ...) name a custom method, which only a path with a colon calls: the common
    path (/v1/chat/completions) is searched for the other markers only, and each marker still names its provider."""
    searched = []

    class Path(str):
        def __contains__(self, part):
            searched.append(part)
            return super().__contains__(part)

    router = Router(GatewaySettings(_env_file=None))
    assert router.route(Path("/v1/chat/completions"), {}, "").provider == "openai"
    assert searched and [m for m in searched if ":" in m] == [":"]
    assert any(":" in marker for marker, _ in router.markers)
    for marker, owner in router.markers:
        assert router.route(f"/v1/x/m{marker}", {}, "https://t.example").provider == owner, marker


@pytest.mark.parametrize("urls, message", [
    ({"openai": "https://x.example"}, "HELICONE_PROVIDER_URLS: 'openai': set its base URL with HELICONE_OPENAI_URL"),
    ({"cohere": "https://x.example"}, "HELICONE_PROVIDER_URLS: 'cohere' is no provider of the table; accepted: .*'azure'"),
    ({"groq": "groq.example"}, r"HELICONE_PROVIDER_URLS: 'groq': must be an absolute http\(s\) URL"),
])
def test_bad_provider_urls_are_named(urls, message):
    with pytest.raises(ValueError, match=message):
        GatewaySettings(provider_urls=urls, _env_file=None)


@pytest.mark.parametrize("setting, url, message", [
    ("openai_url", "api.openai.com", r"HELICONE_OPENAI_URL: must be an absolute http\(s\) URL: http\(s\)://host"),
    ("anthropic_url", "https://api.anthropic.com?beta=1", "HELICONE_ANTHROPIC_URL: must not have a query or fragment"),
    ("openai_url", "https://svc:s3cret@oai.proxy.internal", "HELICONE_OPENAI_URL: must not contain credentials"),
    ("provider_urls", {"groq": "https://svc:s3cret@groq.proxy.internal/v1"}, "HELICONE_PROVIDER_URLS: 'groq': must not contain credentials"),
    # the rules a Helicone-Target-URL is held to (one base_url_problem): the host a resolver reads is the host written
    ("openai_url", "http://0x7f.1:8000", "HELICONE_OPENAI_URL: host '0x7f.1' is an IPv4 address in a non-standard form"),
    ("provider_urls", {"groq": "https://groq..proxy.internal"}, "HELICONE_PROVIDER_URLS: 'groq': host .* is not a valid host name"),
])
def test_a_base_url_with_credentials_or_that_is_no_url_stops_the_gateway_naming_the_setting(setting, url, message):
    """HELICONE_OPENAI_URL and HELICONE_ANTHROPIC_URL were taken unchecked (a URL without a scheme failed every request
    with a 502; one with a query had each request's path appended to its query), and a base URL with user:password@ was
    taken by every setting: the credentials were never sent to the provider, but were logged as the target_url of every
    request (ClickHouse, the dashboard), where the schema promises a base URL never holds any."""
    with pytest.raises(ValueError, match=message) as raised:
        GatewaySettings(**{setting: url}, _env_file=None)
    assert "s3cret" not in str(raised.value)  # the refusal is printed at start-up: it never repeats the password


def test_proxy_connection_is_hop_by_hop_both_ways():
    """Proxy-Connection (sent by old clients and some HTTP libraries) is a connection option for the next
    hop, never an end-to-end header: not forwarded to the provider, not passed back to the caller."""
    fwd = dict(forward_request_headers([("proxy-connection", "keep-alive"), ("authorization", "Bearer sk-provider")]))
    assert fwd == {"authorization": "Bearer sk-provider"}
    back = forward_response_headers([(b"Proxy-Connection", b"close"), (b"Content-Type", b"application/json")])
    assert back == [(b"content-type", b"application/json")]


# ---- Helicone features this gateway does not have (or has not set up) ---------------------------------------------

UNSUPPORTED_ON = [("Helicone-OpenAI-Api-Base", "https://acme.openai.azure.com", "Helicone-Target-URL")]


@pytest.mark.parametrize("name, value, words", UNSUPPORTED_ON)
def test_a_safety_feature_this_gateway_lacks_is_refused_not_silently_skipped(name, value, words):
    with pytest.raises(HeaderError, match=f"{name} is not supported by this gateway.*{words}"):
        parse_helicone_headers([(name.lower(), value)])


def test_llm_security_is_a_true_or_false_switch():
    assert parse_helicone_headers([("helicone-llm-security-enabled", "TRUE")]).llm_security
    assert not parse_helicone_headers([("helicone-llm-security-enabled", "false")]).llm_security
    with pytest.raises(HeaderError, match="must be 'true' or 'false'"):
        parse_helicone_headers([("helicone-llm-security-enabled", "on")])


# (header, value, words of the 400, whether the refused request is logged: a header refused once the org is known is)
REFUSED_ON = [("Helicone-LLM-Security-Enabled", "TRUE", "HELICONE_LLM_SECURITY_URL is not set", True),
              *[(name, value, words, False) for name, value, words in UNSUPPORTED_ON]]


@pytest.mark.parametrize("name, value, words, logged", REFUSED_ON)
async def test_a_request_asking_for_a_missing_safety_feature_never_reaches_the_provider(tmp_path, name, value, words, logged):
    """Helicone blocks prompt injections (LLM Security) before the provider sees them, and sends oai.helicone.ai
    traffic to Helicone-OpenAI-Api-Base: both were dropped without a word here, so such a request went to the provider
    unchecked (or, for an Azure caller, to OpenAI with its Azure api-key). A gateway without a prompt classifier
    (HELICONE_LLM_SECURITY_URL) still refuses LLM Security, naming the setting. Moderations: test_moderation.py; LLM
    Security with a classifier: test_llm_security.py."""
    from services.gateway.tests.test_proxy import CHAT, started_gateway
    from tests.support.fake_upstream import create_app as create_fake_upstream
    from tests.support.inloop import serve

    fake = create_fake_upstream()
    async with serve(fake) as upstream_url, started_gateway(tmp_path, openai_url=upstream_url,
                                                            anthropic_url=upstream_url) as (client, built):
        r = await client.post("/openai/deployments/prod-4o/chat/completions", json=CHAT,
                              headers={"Helicone-Auth": "Bearer good-key", "api-key": "azure-secret", name: value})
        assert r.status_code == 400 and r.json()["error"]["type"] == "helicone_header_error", r.text
        message = r.json()["error"]["message"]
        assert name in message and words in message
        assert fake.state.received == []
        assert [ev.status for ev in built] == ([400] if logged else [])


# ---- the gateway's own answer headers ------------------------------------------------------------

def test_a_providers_copies_of_the_gateways_own_answer_headers_are_dropped():
    back = forward_response_headers([(b"Helicone-Id", b"other"), (b"helicone-cache", b"HIT"), (b"Helicone-Region", b"us"),
                                     (b"Helicone-RateLimit-Remaining", b"3"), (b"Helicone-Fallback-Index", b"1"),
                                     (b"Helicone-Cache-Bucket-Idx", b"0"), (b"Content-Type", b"application/json")])
    assert back == [(b"content-type", b"application/json")]


async def test_a_target_that_is_itself_a_helicone_gateway_does_not_double_the_answers_helicone_id(tmp_path):
    """A Helicone-Target-URL that answers with Helicone-* headers of its own (another Helicone gateway, one region
    chained to another): the caller got two Helicone-Id headers (an HTTP client reads 'theirs, ours', and the id is
    the key to GET /v1/request/{id}) and, with the cache on, 'HIT' from the other gateway next to this one's 'MISS'."""
    from services.gateway.tests.test_proxy import CHAT, started_gateway
    from tests.support.inloop import serve

    async def other_gateway(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        body = b'{"model": "gpt-4o-mini", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}'
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"helicone-id", b"11111111-1111-1111-1111-111111111111"),
            (b"helicone-cache", b"HIT"), (b"helicone-cache-bucket-idx", b"4")]})
        await send({"type": "http.response.body", "body": body})

    async with serve(other_gateway) as upstream_url, started_gateway(tmp_path, openai_url=upstream_url,
                                                                    anthropic_url=upstream_url) as (client, built):
        r = await client.post("/v1/chat/completions", json=CHAT,
                              headers={"Helicone-Auth": "Bearer good-key", "Helicone-Cache-Enabled": "true"})
        assert r.status_code == 200, r.text
        [ev] = built
        assert r.headers.get_list("helicone-id") == [ev.request_id]
        assert r.headers.get_list("helicone-cache") == ["MISS"] and r.headers.get_list("helicone-cache-bucket-idx") == ["0"]


@pytest.mark.parametrize("name, values", [
    ("helicone-omit-request", ("true", "false")),  # a privacy proxy's 'true', then the app's 'false': the body was logged
    ("helicone-target-url", ("https://a.example", "https://b.example")),
    ("helicone-property-team", ("red", "blue")),
    ("helicone-user-id", ("alice", "alice")),
])
def test_a_helicone_header_sent_twice_is_refused_naming_it_not_the_last_one_taken(name, values):
    """Two copies of one header (an app's and a proxy's) were read last-wins without a word: which one a caller
    meant is unknown, and for Helicone-Omit-Request that decided whether a body the caller hid was stored."""
    with pytest.raises(HeaderError, match=f"{name} was sent more than once"):
        parse_helicone_headers([(name, v) for v in values])
    parse_helicone_headers([(name, values[0]), ("helicone-property-other", "x")])  # once is fine
