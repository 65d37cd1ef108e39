"""The Helicone-Target-URL egress guard: address classification, the operator's policy, and the
connect-time check in the upstream pool's socket factory. Connections are faked: the socket factory's open_socket is a
recorder that notes the address it would connect to and raises, so nothing leaves this process."""

import contextlib
from ipaddress import ip_address

import aiohttp
import pytest
from helicone_gateway import egress
from helicone_gateway.egress import (
    CONNECTING,
    REASONS,
    EgressPolicy,
    TargetConnect,
    classify,
    guarded_socket_factory,
    noncanonical_ipv4,
    parse_allowlist_entry,
)
from helicone_gateway.settings import GatewaySettings, env_name
from helicone_gateway.upstream import UpstreamPool
from pydantic import ValidationError

from tests.support.fake_network import FakeResolver, Recorder

CLASSIFIED = [
    # loopback, unspecified
    ("127.0.0.1", "loopback"), ("127.255.255.254", "loopback"), ("::1", "loopback"),
    ("0.0.0.0", "unspecified"), ("0.1.2.3", "unspecified"), ("::", "unspecified"),
    # private, CGNAT, unique-local
    ("10.0.0.5", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"), ("192.168.1.1", "private"),
    ("100.64.0.1", "cgnat"), ("100.127.255.255", "cgnat"),
    ("fc00::1", "unique_local"), ("fd12:3456::1", "unique_local"),
    # link-local
    ("169.254.1.1", "link_local"), ("fe80::1", "link_local"), ("fe80::1%eth0", "link_local"),
    # cloud metadata, even inside link-local, CGNAT and unique-local space
    ("169.254.169.254", "cloud_metadata"), ("169.254.170.2", "cloud_metadata"), ("169.254.170.23", "cloud_metadata"),
    ("100.100.100.200", "cloud_metadata"), ("fd00:ec2::254", "cloud_metadata"), ("fd00:ec2::23", "cloud_metadata"),
    # ... and the platform addresses outside link-local: Azure's WireServer (public space), Oracle Classic,
    # and the IPv6 metadata servers of GCP, OCI, Scaleway and Akamai (all unique-local, which allow_private opens)
    ("168.63.129.16", "cloud_metadata"), ("192.0.0.192", "cloud_metadata"), ("::ffff:168.63.129.16", "cloud_metadata"),
    ("fd20:ce::254", "cloud_metadata"), ("fd00:c1::a9fe:a9fe", "cloud_metadata"), ("fd00:42::42", "cloud_metadata"),
    ("fd00:a9fe:a9fe::1", "cloud_metadata"),
    # multicast, broadcast, reserved, documentation, benchmarking
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("ff02::1", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"), ("192.0.0.8", "reserved"), ("192.88.99.1", "reserved"), ("100::1", "reserved"),
    ("4000::1", "reserved"), ("fec0::1", "reserved"), ("2001:10::1", "reserved"), ("5f00::1", "reserved"),
    ("192.0.2.1", "documentation"), ("198.51.100.7", "documentation"), ("203.0.113.9", "documentation"),
    ("2001:db8::1", "documentation"), ("3fff::1", "documentation"),
    ("198.18.0.1", "benchmarking"), ("198.19.255.255", "benchmarking"), ("2001:2::1", "benchmarking"),
    # IPv6 forms carrying an IPv4 address: the IPv4 address decides
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:7f00:1", "loopback"), ("::ffff:169.254.169.254", "cloud_metadata"),
    ("::ffff:10.0.0.5", "private"), ("::ffff:0.0.0.0", "unspecified"),
    ("::ffff:0:127.0.0.1", "loopback"),  # IPv4-translated
    ("::127.0.0.1", "loopback"), ("::10.0.0.1", "private"),  # IPv4-compatible
    ("2002:7f00:1::", "loopback"), ("2002:a9fe:a9fe::1", "cloud_metadata"), ("2002:c0a8:101::1", "private"),  # 6to4
    ("64:ff9b::127.0.0.1", "loopback"), ("64:ff9b::10.1.2.3", "private"), ("64:ff9b::169.254.169.254", "cloud_metadata"),
    ("64:ff9b:1::a9fe:a9fe", "cloud_metadata"), ("64:ff9b:1::7f00:1", "loopback"),
    ("64:ff9b:1::808:808", "local_nat64"),  # embedding offset is site-specific: never opened by the address
    # Teredo: server 65.54.227.120, client 127.0.0.1 (stored inverted) / server 10.0.0.1, client 8.8.8.8
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"), ("2001:0:a00:1::f7f7:f7f7", "private"),
    # public
    ("8.8.8.8", None), ("1.1.1.1", None), ("93.184.216.34", None), ("172.32.0.1", None), ("100.128.0.1", None),
    ("2606:4700:4700::1111", None), ("::ffff:8.8.8.8", None), ("64:ff9b::8.8.8.8", None), ("2002:808:808::1", None),
    ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", None),
]


@pytest.mark.parametrize("ip, reason", CLASSIFIED)
def test_classify(ip, reason):
    assert classify(ip) == reason


def test_every_reason_is_reachable_and_described():
    produced = {reason for _, reason in CLASSIFIED if reason} | {egress.NOT_ALLOWLISTED}
    assert produced == set(REASONS)
    assert egress.OPENED_BY_ALLOW_PRIVATE == {"private", "cgnat", "unique_local"}


@pytest.mark.parametrize("host, odd", [
    ("2130706433", True), ("0x7f.1", True), ("0X7F000001", True), ("127.1", True), ("0177.0.0.1", True),
    ("127.0.0.1.", True), ("0", True), ("1.2.3.4.5", True), ("256.0.0.1", True), ("127.00.0.1", True),
    ("127.0.0.1", False), ("10.0.0.5", False), ("0.0.0.0", False), ("api.openai.com", False), ("0x7f.example", False),
    ("1e100.net", False), ("::1", False), ("localhost.", False),
])
def test_noncanonical_ipv4_spellings(host, odd):
    assert noncanonical_ipv4(host) is odd


@pytest.mark.parametrize("entry, parsed", [
    ("models.internal", ("models.internal", None)), ("Models.Internal.:8000", ("models.internal", 8000)),
    ("127.0.0.1:4000", ("127.0.0.1", 4000)), ("[::1]:8080", ("::1", 8080)), ("[0:0::1]", ("::1", None)),
    ("*", ("*", None)),
])
def test_allowlist_entries(entry, parsed):
    assert parse_allowlist_entry(entry) == parsed


@pytest.mark.parametrize("entry, message", [
    ("http://models.internal", "not a host"), ("models.internal:abc", "port"), ("host:99999", "Port"),
    ("::1", "brackets"), ("[::1", "IPv6"), ("", "not a host"), ("127.1:80", "a.b.c.d"),
])
def test_bad_allowlist_entries_are_refused_at_startup_naming_the_entry(entry, message):
    with pytest.raises(ValidationError, match=message) as info:
        GatewaySettings(target_url_allowlist=[entry], _env_file=None)
    assert "target_url_allowlist" in str(info.value)


def test_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv(env_name("target_url_allowlist"), '["[::1]:8080", "models.internal"]')
    monkeypatch.setenv(env_name("target_url_allow_private"), "true")
    s = GatewaySettings(_env_file=None)
    assert (s.target_url_allowlist, s.target_url_allow_private) == (["[::1]:8080", "models.internal"], True)
    assert env_name("target_url_allowlist") == "HELICONE_TARGET_URL_ALLOWLIST"


def test_policy():
    default = EgressPolicy([], allow_private=False)
    assert default.refusal("api.together.xyz", 443) is None  # names: their addresses are checked at connect time
    assert default.refusal("127.0.0.1", 8000) == "loopback"
    assert default.refusal("api.together.xyz", 443, ip_address("10.0.0.5")) == "private"
    private = EgressPolicy([], allow_private=True)
    assert private.refusal("10.0.0.5", 80) is None and private.refusal("fd12::1", 80) is None
    assert private.refusal("100.64.0.1", 80) is None
    for shut in ("127.0.0.1", "0.0.0.0", "169.254.1.1", "169.254.169.254", "100.100.100.200", "fd00:ec2::254", "::ffff:127.0.0.1",
                 "fd20:ce::254", "fd00:c1::a9fe:a9fe", "fd00:42::42", "fd00:a9fe:a9fe::1", "168.63.129.16"):
        assert private.refusal(shut, 80) is not None, shut
    listed = EgressPolicy(["127.0.0.1:4000", "models.internal", "[::1]:8080"], allow_private=False)
    assert listed.refusal("127.0.0.1", 4000) is None
    assert listed.refusal("127.0.0.1", 4001) == "not_allowlisted"  # listed host, other port
    assert listed.refusal("models.internal", 9999, ip_address("169.254.169.254")) is None  # explicitly trusted
    assert listed.refusal("::1", 8080) is None and listed.refusal("api.together.xyz", 443) == "not_allowlisted"
    opened = EgressPolicy(["*", "127.0.0.1:4000"], allow_private=False)
    assert opened.refusal("api.together.xyz", 443) is None
    assert opened.refusal("127.0.0.1", 4001) == "loopback"  # listed host, other port: back to the address rules


# ---- the upstream pool's socket factory, with a fake resolver and no real connection -------------


class GuardedSession:
    """Requests through an UpstreamPool with the guarded socket factory, as the gateway sends Target-URL traffic."""

    def __init__(self, pool, factory):
        self.pool, self.factory = pool, factory

    async def get(self, url):
        return await self.pool.request("GET", url, [], b"", socket_factory=self.factory)


@contextlib.asynccontextmanager
async def guarded(policy, answers):
    resolver, recorder = FakeResolver(answers), Recorder()
    pool = UpstreamPool(limit=10, connect_timeout=5, read_timeout=5, dns_ttl=0, resolver=resolver)
    try:
        yield GuardedSession(pool, guarded_socket_factory(policy, open_socket=recorder)), resolver, recorder
    finally:
        await pool.close()


async def attempt(session, url, host, port):
    """A request as the gateway makes it (CONNECTING set); returns what the socket factory noted."""
    target = TargetConnect(host, port)
    token = CONNECTING.set(target)
    try:
        with pytest.raises(aiohttp.ClientConnectorError):
            await session.get(url)
    finally:
        CONNECTING.reset(token)
    return target


ANSWERS = {
    "internal.example": [["10.0.0.5"]],
    "metadata.example": [["169.254.169.254"]],
    "mapped.example": [["::ffff:10.0.0.5"]],
    "mixed.example": [["10.0.0.5", "93.184.216.34"]],
    "models.internal": [["10.0.0.5"]],
    "rebind.example": [["93.184.216.34"], ["127.0.0.1"]],
}


@pytest.mark.parametrize("host, reason", [
    ("internal.example", "private"), ("metadata.example", "cloud_metadata"), ("mapped.example", "private")])
async def test_names_resolving_to_refused_addresses_are_never_connected(host, reason):
    async with guarded(EgressPolicy([], allow_private=False), ANSWERS) as (session, resolver, recorder):
        target = await attempt(session, f"http://{host}/v1/chat/completions", host, 80)
    assert (target.refused, target.opened) == (reason, 0)
    assert resolver.asked == [host] and recorder.addresses == []


async def test_a_refused_address_is_skipped_and_the_public_one_tried():
    async with guarded(EgressPolicy([], allow_private=False), ANSWERS) as (session, _, recorder):
        target = await attempt(session, "http://mixed.example/", "mixed.example", 80)
    assert target.refused == "private" and target.opened
    assert set(recorder.addresses) == {("93.184.216.34", 80)}


async def test_ip_literals_skip_the_resolver_but_not_the_check():
    async with guarded(EgressPolicy([], allow_private=False), ANSWERS) as (session, resolver, recorder):
        target = await attempt(session, "http://10.0.0.5:8000/", "10.0.0.5", 8000)
        v6 = await attempt(session, "http://[::ffff:169.254.169.254]/", "::ffff:a9fe:a9fe", 80)
    assert resolver.asked == [] and recorder.addresses == []
    assert (target.refused, v6.refused) == ("private", "cloud_metadata")


async def test_dns_rebinding_is_checked_on_every_new_connection():
    async with guarded(EgressPolicy([], allow_private=False), ANSWERS) as (session, _, recorder):
        first = await attempt(session, "http://rebind.example/", "rebind.example", 80)
        second = await attempt(session, "http://rebind.example/", "rebind.example", 80)
    assert (first.opened, second.opened, second.refused) == (1, 0, "loopback")
    assert recorder.addresses == [("93.184.216.34", 80)]


async def test_allow_private_opens_private_ranges_but_never_metadata():
    async with guarded(EgressPolicy([], allow_private=True), ANSWERS) as (session, _, recorder):
        private = await attempt(session, "http://internal.example/", "internal.example", 80)
        metadata = await attempt(session, "http://metadata.example/", "metadata.example", 80)
    assert (private.opened, metadata.refused) == (1, "cloud_metadata")
    assert recorder.addresses == [("10.0.0.5", 80)]


async def test_allowlisted_host_port_is_opened_only_on_that_port():
    async with guarded(EgressPolicy(["models.internal:8000"], allow_private=False), ANSWERS) as (session, _, recorder):
        listed = await attempt(session, "http://models.internal:8000/", "models.internal", 8000)
        other_port = await attempt(session, "http://models.internal:8001/", "models.internal", 8001)
    assert (listed.opened, other_port.refused) == (1, "not_allowlisted")
    assert recorder.addresses == [("10.0.0.5", 8000)]


async def test_without_the_request_context_the_connector_fails_closed():
    async with guarded(EgressPolicy(["models.internal"], allow_private=False), ANSWERS) as (session, _, recorder):
        with pytest.raises(aiohttp.ClientConnectorError, match="not in the allowlist"):
            await session.get("http://models.internal/")
    async with guarded(EgressPolicy([], allow_private=False), ANSWERS) as (session, _, recorder):
        with pytest.raises(aiohttp.ClientConnectorError, match="private"):
            await session.get("http://internal.example/")
    assert recorder.addresses == []
