"""The forwarder: queries outside our zones, asked of the configured upstreams.

One UDP socket for all queries in flight; each goes out under a fresh random
id (RFC 5452 9.2) and is matched on the way back by id, source address and
port, and question, so a reply from anyone else or for another question is
dropped. Upstreams are tried in order, each for `timeout` seconds; when none
answers the client gets SERVFAIL, never NXDOMAIN (dnslib's ProxyResolver says
NXDOMAIN on a timeout, which a resolver would cache as "does not exist").
A truncated upstream reply (TC=1) to a client that asked over TCP is asked
again of the same upstream over TCP (RFC 7766 5). At most `max_pending`
queries wait at once; beyond that the client gets SERVFAIL at once.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from dnslib import DNSRecord

from bootd.dns.codec import PARSE_ERRORS, Query

Upstream = tuple[str, int]
_Key = tuple[str, int, int]


def _key(record: DNSRecord) -> _Key | None:
    if len(record.questions) != 1:
        return None
    q = record.questions[0]
    return str(q.qname).lower(), int(q.qtype), int(q.qclass)


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[bytes]
    upstream: Upstream
    key: _Key | None


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.forwarder.received(data, (addr[0], addr[1]))


class Forwarder:
    def __init__(self, upstreams: Sequence[Upstream], *, timeout: float = 2.0,
                 max_pending: int = 4096) -> None:
        self.upstreams = tuple(upstreams)
        self.timeout = timeout
        self.max_pending = max_pending
        self._pending: dict[int, _Pending] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self.counters = {"sent": 0, "answered": 0, "timeouts": 0, "stray": 0, "busy": 0, "tcp": 0}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: _Socket(self),
                                                                 local_addr=("0.0.0.0", 0))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        for pending in self._pending.values():
            pending.future.cancel()
        self._pending.clear()

    async def ask(self, query: Query, *, tcp: bool = False) -> bytes | None:
        """The first upstream's reply (with the upstream's id), or None: SERVFAIL."""
        if self._transport is None or len(self._pending) >= self.max_pending:
            self.counters["busy"] += 1
            return None
        for upstream in self.upstreams:
            raw = await self._udp(query, upstream)
            if raw is None:
                continue
            if tcp and raw[2] & 0x02:  # TC: the client can take the whole answer over TCP
                raw = await self._tcp(query, upstream) or raw
            self.counters["answered"] += 1
            return raw
        return None

    async def _udp(self, query: Query, upstream: Upstream) -> bytes | None:
        assert self._transport is not None
        qid = secrets.randbelow(65536)
        while qid in self._pending:
            qid = secrets.randbelow(65536)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[qid] = _Pending(future, upstream, _key(query.record))
        try:
            self._transport.sendto(qid.to_bytes(2, "big") + query.raw[2:], upstream)
            self.counters["sent"] += 1
            return await asyncio.wait_for(future, self.timeout)
        except TimeoutError:
            self.counters["timeouts"] += 1
            return None
        except OSError:  # unreachable upstream: try the next one
            return None
        finally:
            self._pending.pop(qid, None)

    def received(self, data: bytes, addr: Upstream) -> None:
        pending = self._pending.get(int.from_bytes(data[:2], "big")) if len(data) >= 12 else None
        if pending is None or pending.upstream != addr or pending.future.done() or not data[2] & 0x80:
            self.counters["stray"] += 1
            return
        try:
            key = _key(DNSRecord.parse(data))
        except PARSE_ERRORS:
            key = None
        if key is None or key != pending.key:
            self.counters["stray"] += 1
            return
        pending.future.set_result(data)

    async def _tcp(self, query: Query, upstream: Upstream) -> bytes | None:
        self.counters["tcp"] += 1
        writer = None
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(*upstream)
                writer.write(len(query.raw).to_bytes(2, "big") + query.raw)
                size = int.from_bytes(await reader.readexactly(2), "big")
                data = await reader.readexactly(size)
            if len(data) < 12 or data[:2] != query.raw[:2] or not data[2] & 0x80:
                return None  # shorter than a DNS header, another id, or not a response
            return data
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            return None
        finally:
            if writer is not None:
                writer.close()
