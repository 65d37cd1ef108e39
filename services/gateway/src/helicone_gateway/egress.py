"""Where Helicone-Target-URL traffic may go (the gateway's SSRF guard).

A caller chooses the host of a Target-URL request, so without a guard any key holder could make the
gateway call its own loopback ports, the cluster network or a cloud metadata endpoint. The rules:

- `classify(ip)` names why an address is not a public destination (loopback, private, metadata, ...),
  looking through the IPv6 forms that embed an IPv4 address (mapped, NAT64, 6to4, Teredo, ...).
- `EgressPolicy.refusal(host, port, ip)` applies the operator's settings on top: allowlisted
  `host`/`host:port` entries are opened whatever their address; `allow_private` opens only the
  private ranges (RFC 1918, CGNAT, IPv6 unique-local), never loopback, link-local or metadata.
- The check runs on the address actually connected to: Target-URL traffic has its own aiohttp
  connector whose socket factory sees the final sockaddr of every connection attempt (after DNS,
  for names and IP literals alike), so DNS rebinding cannot get around it. Redirects are never
  followed by the gateway (allow_redirects=False), so a 30x cannot lead anywhere either.
"""

from __future__ import annotations

import errno
import re
import socket
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import aiohttp
from yarl import URL

# ---- address classification -----------------------------------------------------------------

LOOPBACK = "loopback"
UNSPECIFIED = "unspecified"
LINK_LOCAL = "link_local"
CLOUD_METADATA = "cloud_metadata"
PRIVATE = "private"
CGNAT = "cgnat"
UNIQUE_LOCAL = "unique_local"
MULTICAST = "multicast"
BROADCAST = "broadcast"
RESERVED = "reserved"
DOCUMENTATION = "documentation"
BENCHMARKING = "benchmarking"
LOCAL_NAT64 = "local_nat64"
NOT_ALLOWLISTED = "not_allowlisted"

# Every reason a Target-URL is refused (also the bounded label set of the refusal metric).
REASONS: dict[str, str] = {
    LOOPBACK: "a loopback address",
    UNSPECIFIED: "an unspecified address (0.0.0.0/8 or ::)",
    LINK_LOCAL: "a link-local address",
    CLOUD_METADATA: "a cloud metadata address",
    PRIVATE: "a private (RFC 1918) address",
    CGNAT: "a shared carrier-grade NAT address (100.64.0.0/10)",
    UNIQUE_LOCAL: "a unique-local IPv6 address (fc00::/7)",
    MULTICAST: "a multicast address",
    BROADCAST: "the broadcast address",
    RESERVED: "a reserved address",
    DOCUMENTATION: "a documentation-only address",
    BENCHMARKING: "a benchmarking-only address",
    LOCAL_NAT64: "a local-use NAT64 address (64:ff9b:1::/48)",
    NOT_ALLOWLISTED: "not in the allowlist",
}
# What target_url_allow_private opens: ranges a self-hosted model can live on. Loopback, link-local,
# metadata and the rest stay closed (they reach the gateway's own host or the cloud's control plane).
OPENED_BY_ALLOW_PRIVATE = frozenset({PRIVATE, CGNAT, UNIQUE_LOCAL})

IPAddress = IPv4Address | IPv6Address


def _table(rows: list[tuple[str, object]]) -> list[tuple[int, int, object]]:
    out = []
    for cidr, action in rows:
        net = ip_network(cidr)
        out.append((int(net.network_address), int(net.netmask), action))
    return out


# First match wins, so specific ranges come before the ranges that contain them.
_V4 = _table([
    ("169.254.169.254/32", CLOUD_METADATA),  # AWS, GCP, Azure, OCI, DigitalOcean, ...
    ("169.254.170.2/32", CLOUD_METADATA),  # AWS ECS task credentials
    ("169.254.170.23/32", CLOUD_METADATA),  # AWS EKS pod identity
    ("100.100.100.200/32", CLOUD_METADATA),  # Alibaba Cloud (inside CGNAT space)
    ("0.0.0.0/8", UNSPECIFIED),  # "this network": 0.0.0.0 reaches the local host on Linux
    ("127.0.0.0/8", LOOPBACK),
    ("169.254.0.0/16", LINK_LOCAL),
    ("10.0.0.0/8", PRIVATE),
    ("172.16.0.0/12", PRIVATE),
    ("192.168.0.0/16", PRIVATE),
    ("100.64.0.0/10", CGNAT),
    ("192.0.0.0/24", RESERVED),  # IETF protocol assignments
    ("192.0.2.0/24", DOCUMENTATION),
    ("198.51.100.0/24", DOCUMENTATION),
    ("203.0.113.0/24", DOCUMENTATION),
    ("198.18.0.0/15", BENCHMARKING),
    ("192.88.99.0/24", RESERVED),  # former 6to4 relay anycast
    ("224.0.0.0/4", MULTICAST),
    ("255.255.255.255/32", BROADCAST),
    ("240.0.0.0/4", RESERVED),
])

_MASK32 = 0xFFFFFFFF


def _last32(n: int) -> tuple[int, ...]:
    return (n & _MASK32,)


def _sixtofour(n: int) -> tuple[int, ...]:
    return ((n >> 80) & _MASK32,)  # 2002:AABB:CCDD::/48


def _teredo(n: int) -> tuple[int, ...]:
    return (~n & _MASK32, (n >> 64) & _MASK32)  # client (obfuscated), server


_V6 = _table([
    ("fd00:ec2::254/128", CLOUD_METADATA),  # AWS IMDS over IPv6 (inside fc00::/7)
    ("fd00:ec2::23/128", CLOUD_METADATA),  # AWS EKS pod identity over IPv6
    ("::/128", UNSPECIFIED),
    ("::1/128", LOOPBACK),
    # IPv6 addresses that carry an IPv4 address: the IPv4 one decides.
    ("::ffff:0:0/96", _last32),  # IPv4-mapped
    ("::ffff:0:0:0/96", _last32),  # IPv4-translated (SIIT)
    ("::/96", _last32),  # IPv4-compatible (deprecated)
    ("64:ff9b::/96", _last32),  # NAT64 well-known prefix
    ("64:ff9b:1::/48", _last32),  # local-use NAT64, see _classify_v6
    ("2002::/16", _sixtofour),
    ("2001::/32", _teredo),
    ("2001:2::/48", BENCHMARKING),
    ("2001::/23", RESERVED),  # IETF protocol assignments
    ("2001:db8::/32", DOCUMENTATION),
    ("3fff::/20", DOCUMENTATION),
    ("5f00::/16", RESERVED),  # SRv6 SIDs
    ("fc00::/7", UNIQUE_LOCAL),
    ("fe80::/10", LINK_LOCAL),
    ("fec0::/10", RESERVED),  # deprecated site-local
    ("ff00::/8", MULTICAST),
])
_LOCAL_NAT64 = int(IPv6Address("64:ff9b:1::"))
_V6_GLOBAL_NET, _V6_GLOBAL_MASK = int(IPv6Address("2000::")), int(IPv6Address("e000::"))


def _classify_v4(n: int) -> str | None:
    for net, mask, label in _V4:
        if n & mask == net:
            return label  # type: ignore[return-value]
    return None


def _classify_v6(n: int) -> str | None:
    for net, mask, action in _V6:
        if n & mask != net:
            continue
        if isinstance(action, str):
            return action
        for embedded in action(n):  # type: ignore[operator]
            label = _classify_v4(embedded)
            if label:
                return label
        # The local-use NAT64 prefix may embed the IPv4 address at other offsets (RFC 6052,
        # prefix lengths /48../96) depending on the site: it cannot be verified, so it stays shut.
        return LOCAL_NAT64 if net == _LOCAL_NAT64 else None
    if n & _V6_GLOBAL_MASK != _V6_GLOBAL_NET:
        return RESERVED  # outside 2000::/3 nothing else is assigned for global unicast
    return None


def classify(ip: IPAddress | str) -> str | None:
    """Why `ip` is not a public destination (a key of REASONS), or None if it is one."""
    if isinstance(ip, str):
        ip = ip_address(ip)
    if ip.version == 4:
        return _classify_v4(int(ip))
    return _classify_v6(int(ip))  # int() ignores a %zone suffix


# ---- host spellings ----------------------------------------------------------------------------

_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)", re.IGNORECASE)
_DOTTED_QUAD = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                          r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])")


def noncanonical_ipv4(host: str) -> bool:
    """True for hosts the system resolver would read as an IPv4 address written some other way
    than a.b.c.d (2130706433, 0x7f.1, 127.1, 0177.0.0.1, 127.0.0.1.): refused outright, so that what
    the gateway checks and what the resolver connects to cannot differ."""
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if not all(_NUMERIC_LABEL.fullmatch(label) for label in labels):
        return False  # a name (or an IPv6 literal)
    return not _DOTTED_QUAD.fullmatch(host)


def ip_literal(host: str) -> IPAddress | None:
    try:
        return ip_address(host)
    except ValueError:
        return None


def normalize_host(raw_host: str) -> str:
    """The form hosts are compared in: lower case, no trailing dot, IP addresses canonical."""
    host = raw_host.lower()
    if host.endswith("."):
        host = host[:-1]
    ip = ip_literal(host)
    return str(ip) if ip is not None else host


def parse_allowlist_entry(entry: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]` or `[v6]:port` (or `*`) as (normalized host, port or None)."""
    text = entry.strip()
    if text == "*":
        return "*", None
    accepted = "accepted forms: host, host:port, [IPv6], [IPv6]:port or *"
    if not text or any(c in text for c in "/?#@ "):
        raise ValueError(f"target_url_allowlist entry {entry!r} is not a host; {accepted}")
    if text.count(":") > 1 and not text.startswith("["):
        raise ValueError(f"target_url_allowlist entry {entry!r}: write IPv6 addresses in brackets; {accepted}")
    try:
        url = URL("http://" + text)  # the parser aiohttp uses for the request URLs themselves
    except ValueError as exc:
        raise ValueError(f"target_url_allowlist entry {entry!r}: {exc}; {accepted}") from None
    if not url.raw_host:
        raise ValueError(f"target_url_allowlist entry {entry!r} has no host; {accepted}")
    if noncanonical_ipv4(url.raw_host):
        raise ValueError(f"target_url_allowlist entry {entry!r}: write IPv4 addresses as a.b.c.d")
    return normalize_host(url.raw_host), url.explicit_port


# ---- policy -------------------------------------------------------------------------------------

_ANY_PORT = 0


class EgressPolicy:
    """The operator's Target-URL settings, parsed once at startup."""

    def __init__(self, allowlist: list[str], allow_private: bool) -> None:
        self.allow_private = allow_private
        self.any_host = not allowlist  # an empty allowlist restricts no host (addresses are still checked)
        self._ports: dict[str, set[int]] = {}
        for entry in allowlist:
            host, port = parse_allowlist_entry(entry)
            if host == "*":
                self.any_host = True
            else:
                self._ports.setdefault(host, set()).add(_ANY_PORT if port is None else port)

    def refusal(self, host: str | None, port: int, ip: IPAddress | None = None) -> str | None:
        """Why a connection to `host` (normalized; None if unknown) on `port`, at address `ip`, is
        refused, or None. Without `ip` a name is only checked against the allowlist (its addresses
        are checked at connect time) and an IP literal is classified itself."""
        ports = self._ports.get(host) if host is not None else None
        if ports is not None and (_ANY_PORT in ports or port in ports):
            return None  # explicitly opened by the operator, whatever the address
        if not self.any_host:
            return NOT_ALLOWLISTED
        if ip is None:
            ip = ip_literal(host) if host is not None else None
            if ip is None:
                return None
        label = classify(ip)
        if label is None or (self.allow_private and label in OPENED_BY_ALLOW_PRIVATE):
            return None
        return label


# ---- the connect-time check ----------------------------------------------------------------------


@dataclass(eq=False)
class TargetConnect:
    """One Target-URL request attempt, seen by the socket factory through CONNECTING."""

    host: str  # normalized host from the URL being requested
    port: int
    refused: str = ""  # the reason of the last address refused
    opened: int = 0  # sockets opened (addresses that passed)


# Set around the creation of the task that sends a Target-URL request; tasks copy the context, so
# the connector's socket factory (run inside that task or its happy-eyeballs subtasks) sees it.
CONNECTING: ContextVar[TargetConnect | None] = ContextVar("helicone_target_connect", default=None)


class TargetRefused(OSError):
    """Raised by the socket factory instead of opening a socket (aiohttp tries the next address)."""


AddrInfo = tuple[int, int, int, str, tuple]


def _open_socket(addr_info: AddrInfo) -> socket.socket:
    family, type_, proto, _, _ = addr_info
    return socket.socket(family=family, type=type_, proto=proto)


def guarded_socket_factory(policy: EgressPolicy, open_socket: Callable[[AddrInfo], socket.socket] | None = None
                           ) -> Callable[[AddrInfo], socket.socket]:
    """A TCPConnector socket_factory that refuses addresses the policy refuses. It runs for every
    new connection, with the sockaddr the socket is about to connect to. open_socket defaults to
    this module's _open_socket, looked up per call (tests replace it so nothing leaves loopback)."""

    def factory(addr_info: AddrInfo) -> socket.socket:
        sockaddr = addr_info[4]
        target = CONNECTING.get()
        host = target.host if target is not None else None  # unknown: fail closed to address rules
        reason = policy.refusal(host, sockaddr[1], ip_address(sockaddr[0]))
        if reason is not None:
            if target is not None:
                target.refused = reason
            raise TargetRefused(errno.EACCES, f"Helicone-Target-URL address refused: {REASONS[reason]}")
        if target is not None:
            target.opened += 1
        return (open_socket or _open_socket)(addr_info)

    return factory


def target_connector(policy: EgressPolicy, *, open_socket: Callable[[AddrInfo], socket.socket] | None = None,
                     **kwargs) -> aiohttp.TCPConnector:
    """The connector of the Target-URL session (kwargs as for aiohttp.TCPConnector)."""
    return aiohttp.TCPConnector(socket_factory=guarded_socket_factory(policy, open_socket), **kwargs)
