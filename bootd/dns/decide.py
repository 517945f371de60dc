"""What to do with one query, pure: an authoritative Reply from the zone, a
Reply refusing or rejecting it, or Forward to the upstreams.

- opcode other than QUERY: NOTIMP (RFC 1035 4.1.1); not exactly one question,
  or more than one OPT record: FORMERR (RFC 6891 6.1.1); EDNS version above 0:
  BADVERS (RFC 6891 6.1.3); a class other than IN (or ANY): REFUSED.
- Zone transfers (AXFR, IXFR): REFUSED; secondaries are not part of the design.
- A name in an own zone (or an RFC 6303 zone): answered here, with AA, and
  never forwarded. A missing name is NXDOMAIN, a name without the asked type
  NOERROR with no answer (NODATA, RFC 2308 2.2); both carry the zone's SOA.
- Anything else: forwarded when upstreams are configured, else REFUSED (we are
  no recursive resolver; RFC 8906 section 3 lists REFUSED for that case).
"""

from __future__ import annotations

from dataclasses import dataclass

from dnslib import NS, PTR, QTYPE, RCODE, RR, SOA, A

from bootd.dns.codec import Query, Reply
from bootd.dns.zone import Found, Kind, Zone

CLASS_IN, CLASS_ANY = 1, 255
BADVERS = 16
# SOA timers: a secondary never exists, so refresh/retry/expire only have to be sane;
# the minimum is the negative-caching TTL (RFC 2308 5) and equals the record TTL.
REFRESH, RETRY, EXPIRE = 3600, 600, 86400


@dataclass(frozen=True, slots=True)
class Forward:
    query: Query


def decide(query: Query, zone: Zone, *, forwarding: bool, ttl: int) -> Reply | Forward:
    record = query.record
    if record.header.opcode != 0:
        return Reply(query, RCODE.NOTIMP, recursion=forwarding)
    opts = query.opts
    if len(record.questions) != 1 or len(opts) > 1:
        return Reply(query, RCODE.FORMERR, recursion=forwarding)
    if opts and (int(opts[0].ttl) >> 16) & 0xFF != 0:
        return Reply(query, BADVERS, recursion=forwarding)
    question = record.questions[0]
    if int(question.qclass) not in (CLASS_IN, CLASS_ANY) or query.qtype in (QTYPE.AXFR, QTYPE.IXFR):
        return Reply(query, RCODE.REFUSED, recursion=forwarding)
    found = zone.find(query.qname)
    if found is None:
        return Forward(query) if forwarding else Reply(query, RCODE.REFUSED)
    return _authoritative(query, zone, found, forwarding, ttl)


def _authoritative(query: Query, zone: Zone, found: Found, forwarding: bool, ttl: int) -> Reply:
    owner = query.question.qname if query.question is not None else query.qname
    qtype, apex, kind = query.qtype, found.apex, found.kind
    answers: list[RR] = []
    additional: list[RR] = []
    if query.qname == apex:
        ns_name = zone.ns_name(apex, kind)
        if qtype in (QTYPE.SOA, QTYPE.ANY):
            answers.append(_soa(zone, apex, kind, ttl))
        if qtype in (QTYPE.NS, QTYPE.ANY):
            answers.append(RR(owner, QTYPE.NS, rdata=NS(ns_name + "."), ttl=ttl))
            if kind is Kind.FORWARD:  # glue: the NS target's address, in the same answer
                glue = A(str(zone.config.admin_address))
                additional.append(RR(ns_name + ".", QTYPE.A, rdata=glue, ttl=ttl))
    elif not found.exists:
        return Reply(query, RCODE.NXDOMAIN, authoritative=True, recursion=forwarding,
                     authority=(_soa(zone, apex, kind, ttl),))
    elif found.address is not None and qtype in (QTYPE.A, QTYPE.ANY):
        answers.append(RR(owner, QTYPE.A, rdata=A(str(found.address)), ttl=ttl))
    elif found.target is not None and qtype in (QTYPE.PTR, QTYPE.ANY):
        answers.append(RR(owner, QTYPE.PTR, rdata=PTR(found.target + "."), ttl=ttl))
    if not answers:  # NODATA
        return Reply(query, RCODE.NOERROR, authoritative=True, recursion=forwarding,
                     authority=(_soa(zone, apex, kind, ttl),))
    return Reply(query, RCODE.NOERROR, authoritative=True, recursion=forwarding, answers=tuple(answers),
                 additional=tuple(additional))


def _soa(zone: Zone, apex: str, kind: Kind, ttl: int) -> RR:
    mname = zone.ns_name(apex, kind)
    # RFC 6303 section 3: locally served empty zones say "nobody.invalid." as RNAME.
    rname = "nobody.invalid." if kind is Kind.LOCAL else f"hostmaster.{apex}."
    serial = 1 if kind is Kind.LOCAL else zone.serial
    return RR(apex + ".", QTYPE.SOA, rdata=SOA(mname + ".", rname, (serial, REFRESH, RETRY, EXPIRE, ttl)),
              ttl=ttl)
