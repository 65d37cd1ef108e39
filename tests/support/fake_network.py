"""Faked connections for address-check tests (the gateway's Target-URL guard, the api's webhooks): a
resolver that answers from a table, and a socket opener that records the address and connects nowhere,
so no test ever sends a packet to a non-loopback address."""

from __future__ import annotations

import socket

from aiohttp.abc import AbstractResolver


class FakeResolver(AbstractResolver):
    """Answers from a table; each answer list is used in turn (the last one repeats): DNS rebinding."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def resolve(self, host, port=0, family=socket.AF_INET):
        self.asked.append(host)
        host.encode("idna")  # as socket.getaddrinfo does before asking anyone: UnicodeError for a..b
        rounds = self.answers[host]
        ips = rounds.pop(0) if len(rounds) > 1 else rounds[0]
        return [{"hostname": host, "host": ip, "port": port, "family": socket.AF_INET6 if ":" in ip else socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST} for ip in ips]

    async def close(self):
        pass


class Recorder:
    """Stands in for opening the socket: records the address and fails the attempt."""

    def __init__(self) -> None:
        self.addresses: list[tuple[str, int]] = []

    def __call__(self, addr_info):
        self.addresses.append(addr_info[4][:2])
        raise OSError("test: not connecting")
