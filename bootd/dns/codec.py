"""DNS messages through dnslib's packet layer, pure: bytes -> Query, Reply -> bytes.

dnslib is only the codec here (`DNSRecord.parse`, `pack`): its server and
`ProxyResolver` are threaded and blocking. `DNSRecord.reply()` is not used
either: it drops the EDNS0 OPT record (RFC 6891), and `truncate()` drops the
question, which RFC 1035 4.1.1 and resolvers retrying over TCP expect to see.

Sizes (RFC 6891 6.2.5, the DNS flag day 2020 value): a UDP answer is at most
the client's advertised EDNS0 size, capped at 1232 bytes so that it never
fragments on the admin network; 512 without EDNS0 (RFC 1035 4.2.1). A reply
that does not fit goes out with TC=1, its question and its OPT record and no
records, and the client asks again over TCP (RFC 7766), where 65535 fits.

Garbage raises one exception, `MalformedQuery`, with a short fixed reason (a
log key, never text chosen by the sender). dnslib raises only `DNSError` on
fuzzed input (LAB-NOTES, 200,000 packets); the other types caught below are
belt and braces so that the codec stays total (tests/test_dns.py fuzzes it).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dnslib import EDNS0, QTYPE, RR, DNSError, DNSHeader, DNSQuestion, DNSRecord

from bootd.errors import BootdError

MAX_UDP = 1232
PLAIN_UDP = 512
MAX_TCP = 65535


# What dnslib may raise on bad bytes (only DNSError seen when fuzzed; the rest to stay total).
PARSE_ERRORS = (DNSError, ValueError, IndexError, KeyError, struct.error, UnicodeError)


class MalformedQuery(BootdError):
    """Bytes that are no DNS query; `reason` is a fixed key for counting and logs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed query; `qname` lower case without the root dot ("" for the root or
    no question), `udp_limit` the largest UDP reply this client takes (RFC 6891
    6.2.5), capped at MAX_UDP."""

    record: DNSRecord
    raw: bytes
    question: DNSQuestion | None
    qname: str
    qtype: int
    opts: tuple[RR, ...]
    udp_limit: int

    @property
    def id(self) -> int:
        return int(self.record.header.id)


def parse_query(raw: bytes) -> Query:
    """A query, or MalformedQuery. Responses (QR=1) are refused here: answering
    one would let two servers bounce a packet between them for ever."""
    if len(raw) < 12:
        raise MalformedQuery("short")
    try:
        record = DNSRecord.parse(raw)
    except PARSE_ERRORS:
        raise MalformedQuery("unparseable") from None
    if record.header.qr:
        raise MalformedQuery("response")
    question = record.questions[0] if record.questions else None
    opts = tuple(rr for rr in record.ar if rr.rtype == QTYPE.OPT)
    limit = max(PLAIN_UDP, min(MAX_UDP, int(opts[0].rclass))) if opts else PLAIN_UDP
    try:
        qname = "" if question is None else str(question.qname).rstrip(".").lower()
    except UnicodeError:
        raise MalformedQuery("unparseable") from None
    return Query(record, raw, question, qname, 0 if question is None else int(question.qtype), opts, limit)


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer to `query`; `rcode` may be an extended one (> 15, needs EDNS0)."""

    query: Query
    rcode: int
    authoritative: bool = False
    recursion: bool = False
    answers: tuple[RR, ...] = ()
    authority: tuple[RR, ...] = ()
    additional: tuple[RR, ...] = ()

    def record(self, *, truncated: bool = False) -> DNSRecord:
        q = self.query.record.header
        header = DNSHeader(id=q.id, qr=1, opcode=q.opcode, aa=int(self.authoritative), tc=int(truncated),
                           rd=q.rd, ra=int(self.recursion), rcode=self.rcode & 0xF)
        question = self.query.question
        out = DNSRecord(header, questions=[] if question is None else [question],
                        rr=[] if truncated else list(self.answers),
                        auth=[] if truncated else list(self.authority),
                        ar=[] if truncated else list(self.additional))
        if self.query.opts:
            out.add_ar(EDNS0(udp_len=MAX_UDP, ext_rcode=self.rcode >> 4))
        return out


def pack(reply: Reply, limit: int) -> bytes:
    """The reply's bytes; if they exceed `limit`, the truncated form (TC=1)."""
    data = bytes(reply.record().pack())
    if len(data) <= limit:
        return data
    return bytes(reply.record(truncated=True).pack())


def fit(raw: bytes, query: Query, limit: int) -> bytes:
    """An upstream's answer for our client: its id, and within the client's size."""
    data = query.raw[:2] + raw[2:]
    if len(data) <= limit:
        return data
    return bytes(Reply(query, rcode=raw[3] & 0xF, recursion=True).record(truncated=True).pack())
