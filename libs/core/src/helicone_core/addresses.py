"""Whether an IP address is a public destination, for everything that connects where a user says
(the gateway's Helicone-Target-URL guard, the api's alert webhooks): `classify(ip)` names why an
address is not public (loopback, private, link-local, cloud metadata, ...), looking through the IPv6
forms that embed an IPv4 address (mapped, NAT64, 6to4, Teredo, ...)."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

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

# Why an address is not a public destination (bounded: usable as metric label values).
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
}
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
    ("168.63.129.16/32", CLOUD_METADATA),  # Azure WireServer (platform endpoint in public space)
    ("192.0.0.192/32", CLOUD_METADATA),  # Oracle Cloud Classic (inside 192.0.0.0/24)
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
    ("fd20:ce::254/128", CLOUD_METADATA),  # GCP over IPv6 (inside fc00::/7, as are the next ones)
    ("fd00:c1::a9fe:a9fe/128", CLOUD_METADATA),  # Oracle Cloud Infrastructure over IPv6
    ("fd00:42::42/128", CLOUD_METADATA),  # Scaleway over IPv6
    ("fd00:a9fe:a9fe::1/128", CLOUD_METADATA),  # Akamai / Linode over IPv6
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


_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)", re.IGNORECASE)
_DOTTED_QUAD = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                          r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])")


def noncanonical_ipv4(host: str) -> bool:
    """True for hosts a resolver (or aiohttp) would read as an IPv4 address written some other way than
    a.b.c.d (2130706433, 0x7f.1, 127.1, 0177.0.0.1, 127.0.0.1.): to be refused outright, so that what is
    checked and what is connected to cannot differ."""
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if not all(_NUMERIC_LABEL.fullmatch(label) for label in labels):
        return False  # a name (or an IPv6 literal)
    return not _DOTTED_QUAD.fullmatch(host)


def host_name_problem(host: str) -> str | None:
    """What makes `host` a name no resolver can be asked about (an empty label as in a..b or .a, or one
    over 63 characters: socket.getaddrinfo raises UnicodeError for them, not an OSError), or None."""
    try:
        host.encode("idna")
    except UnicodeError:
        return "is not a valid host name: every label between dots takes 1 to 63 characters"
    return None


def host_port(host: str, port: int) -> str:
    """`host:port` as URLs, Kafka bootstrap lists and gRPC targets spell it: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
