"""Where Helicone-Target-URL traffic may go (the gateway's SSRF guard).

A caller chooses the host of a Target-URL request, so without a guard any key holder could make the
gateway call its own loopback ports, the cluster network or a cloud metadata endpoint. The rules:

- `classify(ip)` (helicone_core.addresses) names why an address is not a public destination (loopback,
  private, metadata, ...), looking through the IPv6 forms that embed an IPv4 address.
- `EgressPolicy.refusal(host, port, ip)` applies the operator's settings on top: allowlisted
  `host`/`host:port` entries are opened whatever their address; `allow_private` opens only the
  private ranges (RFC 1918, CGNAT, IPv6 unique-local), never loopback, link-local or metadata.
- The check runs on the address actually connected to: Target-URL connections are opened by
  `guarded_socket_factory` (upstream.UpstreamPool pools them apart from the others), which sees the
  final sockaddr of every connection attempt (after DNS, for names and IP literals alike), so DNS
  rebinding cannot get around it. The gateway never follows redirects, so a 30x cannot lead anywhere
  either.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from ipaddress import ip_address

from helicone_core.addresses import CGNAT, LOOPBACK, PRIVATE, UNIQUE_LOCAL, IPAddress, classify, noncanonical_ipv4
from helicone_core.addresses import REASONS as ADDRESS_REASONS
from yarl import URL

# ---- address classification (helicone_core.addresses) ----------------------------------------

NOT_ALLOWLISTED = "not_allowlisted"
# Every reason a Target-URL is refused (also the bounded label set of the refusal metric).
REASONS: dict[str, str] = {**ADDRESS_REASONS, NOT_ALLOWLISTED: "not in the allowlist"}
# What target_url_allow_private opens: ranges a self-hosted model can live on. Loopback, link-local,
# metadata and the rest stay closed (they reach the gateway's own host or the cloud's control plane).
OPENED_BY_ALLOW_PRIVATE = frozenset({PRIVATE, CGNAT, UNIQUE_LOCAL})


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
        url = URL("http://" + text)  # the parser the upstream pool uses for the request URLs themselves
    except ValueError as exc:
        raise ValueError(f"target_url_allowlist entry {entry!r}: {exc}; {accepted}") from None
    if not url.raw_host:
        raise ValueError(f"target_url_allowlist entry {entry!r} has no host; {accepted}")
    if noncanonical_ipv4(url.raw_host):
        raise ValueError(f"target_url_allowlist entry {entry!r}: write IPv4 addresses as a.b.c.d")
    return normalize_host(url.raw_host), url.explicit_port


# Where a service the deployment names for itself (the LLM security classifier) may be: a public address, the gateway's
# own host (a sidecar) or its network (an in-cluster service); never an address that is no service's own (link-local,
# cloud metadata, unspecified, multicast, reserved, documentation).
SERVICE_ADDRESSES = frozenset({LOOPBACK, *OPENED_BY_ALLOW_PRIVATE})


def service_address_problem(raw_host: str) -> str | None:
    """Why a deployment service URL's host, an IP address, is no service's address (SERVICE_ADDRESSES), or None. A name
    is not resolved here: its addresses are the operator's DNS, as for the providers' base URLs."""
    ip = ip_literal(normalize_host(raw_host.strip("[]")))
    label = classify(ip) if ip is not None else None
    if label is None or label in SERVICE_ADDRESSES:
        return None
    return f"host {raw_host[:64]!r} is {ADDRESS_REASONS[label]}, not a service's address"


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


# Set by the handler around its await of a Target-URL request (Gateway._send_upstream); the socket
# factory runs in that same task and context, so it sees it.
CONNECTING: ContextVar[TargetConnect | None] = ContextVar("helicone_target_connect", default=None)


class TargetRefused(OSError):
    """Raised by the socket factory instead of opening a socket (the pool tries the next address)."""


AddrInfo = tuple[int, int, int, str, tuple]


def _open_socket(addr_info: AddrInfo) -> socket.socket:
    family, type_, proto, _, _ = addr_info
    return socket.socket(family=family, type=type_, proto=proto)


def guarded_socket_factory(policy: EgressPolicy, open_socket: Callable[[AddrInfo], socket.socket] | None = None
                           ) -> Callable[[AddrInfo], socket.socket]:
    """An UpstreamPool socket_factory that refuses addresses the policy refuses. It runs for every
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

