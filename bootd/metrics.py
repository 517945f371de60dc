"""The daemon's metrics: one object holding a prometheus-client registry of its own.

app.py makes one Metrics per daemon and hands it to each service
(ARCHITECTURE, "Observability is passed in"); nothing registers in
prometheus-client's global REGISTRY, so two daemons (or two tests) in one
process never see each other's numbers.

Two kinds of instruments, chosen by where the events happen:
- Counters the services already keep for their logs (DHCP verdicts and drop
  reasons, TFTP results and refusal reasons, the policy's refusals) are read
  at scrape time by collectors (`watch_dhcp`, `watch_tftp`, `watch_policy`):
  the packet hot path gains no metric call, and the log line and the metric
  can never disagree. Nodes per state are counted at scrape time from the
  policy's in-memory directory (kept current by the change feed and, for the
  CLI's writes, the inventory-stamp poll): no database query per scrape.
- Events that happen once per request, transfer, transition or BMC call are
  observed where they happen (HTTP middleware, TFTP transfer end, the
  lifecycle service, the power service), with a histogram where latency
  matters. Label values come from small fixed sets (enums, route patterns,
  never a raw path, a MAC or a file name), so a flood cannot grow the series.

The model is Kea's statistics (pkt4-*-received/sent, pkt4-receive-drop,
assigned-addresses and total-addresses per pool); names follow Prometheus
conventions (`bootd_` prefix, `_total` counters, seconds).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bootd.dhcp.outcome import Verdict
from bootd.model.states import NodeState

# Boot files are KiB to hundreds of MiB; HTTP requests are mostly milliseconds.
TRANSFER_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BMC_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class PoolStats:
    """One dynamic pool at scrape time (Kea's total-addresses / assigned-addresses)."""

    subnet: str
    pool: str  # "first-last"
    total: int
    assigned: int  # bound, unexpired leases in the pool
    probed_free: int | None = None  # conflict-checked addresses in stock; None: checks off


class DhcpSource(Protocol):
    """What the DHCP collector reads (bootd.dhcp.server.DhcpService satisfies it).
    Counter keys: "received", "received-<type>", a Verdict's value, "dropped-<Drop>",
    "sent-<verdict>", "send_errors", "probed", "probe-conflicts"."""

    @property
    def counters(self) -> Mapping[str, int]: ...

    def pools(self) -> Sequence[PoolStats]: ...


class DnsSource(Protocol):
    """What the DNS collector reads (bootd.dns.server.DnsService satisfies it): queries
    by (qtype, rcode) as dnslib names them, drops by reason: fixed sets, counted on
    the hot path without a metric call."""

    @property
    def queries(self) -> Mapping[tuple[str, str], int]: ...

    @property
    def drops(self) -> Mapping[str, int]: ...


def dns_families(dns: DnsSource) -> Iterable[Metric]:
    queries = CounterMetricFamily("bootd_dns_queries", "DNS queries by query type and response code",
                                  labels=["qtype", "rcode"])
    for (qtype, rcode), n in sorted(dns.queries.items()):
        queries.add_metric([qtype, rcode], n)
    yield queries
    drops = CounterMetricFamily("bootd_dns_dropped", "DNS packets dropped, by reason", labels=["reason"])
    for reason, n in sorted(dns.drops.items()):
        drops.add_metric([reason], n)
    yield drops


class TftpSource(Protocol):
    """What the TFTP collector reads (bootd.tftp.server.TftpService satisfies it)."""

    @property
    def counters(self) -> Mapping[str, int]: ...

    def refusal_counts(self) -> Mapping[str, int]: ...

    def running(self) -> int: ...


class PolicySource(Protocol):
    """What the policy collector reads (bootd.policy.Policy satisfies it)."""

    @property
    def refused(self) -> Mapping[str, int]: ...

    def census(self) -> Mapping[NodeState, int]: ...


class RogueSource(Protocol):
    """What the rogue DHCP collector reads (bootd.fleet.findings.Findings satisfies it)."""

    @property
    def answers(self) -> int: ...

    def servers(self) -> int: ...


def rogue_families(rogue: RogueSource) -> Iterable[Metric]:
    yield GaugeMetricFamily("bootd_rogue_dhcp_servers", "Other DHCP servers seen on the admin interfaces "
                            "in the last 24 hours", value=rogue.servers())
    yield CounterMetricFamily("bootd_rogue_dhcp_answers", "OFFERs/ACKs from other DHCP servers seen",
                              value=rogue.answers)


class _Read(Collector):
    """A collector that builds its families from a function at scrape time."""

    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        return list(self._read())


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter("bootd_http_requests", "HTTP requests by route pattern and status",
                                     ["method", "route", "status"], registry=r)
        self.http_seconds = Histogram("bootd_http_request_duration_seconds",
                                      "HTTP request latency by route pattern", ["method", "route"],
                                      buckets=REQUEST_BUCKETS, registry=r)
        self.tftp_seconds = Histogram("bootd_tftp_transfer_duration_seconds",
                                      "TFTP transfer time, first packet to end, by result", ["result"],
                                      buckets=TRANSFER_BUCKETS, registry=r)
        self.transitions = Counter("bootd_node_transitions", "Node state changes by from and to state",
                                   ["from_state", "to_state"], registry=r)
        self.callbacks = Counter("bootd_node_callbacks", "Nodes' own state reports, by state and result",
                                 ["state", "result"], registry=r)
        self.stalls = Counter("bootd_node_stalls", "Nodes found past their state's timeout, by state",
                              ["state"], registry=r)
        self.bmc_operations = Counter("bootd_bmc_operations", "BMC operations by operation and result",
                                      ["op", "result"], registry=r)
        self.bmc_seconds = Histogram("bootd_bmc_operation_duration_seconds", "BMC operation latency",
                                     ["op"], buckets=BMC_BUCKETS, registry=r)
        # For the DNS server: count each answered query with dns_query(qtype, rcode).

    def exposition(self) -> bytes:
        """The Prometheus text format of everything in this registry."""
        return generate_latest(self.registry)

    # -- observed where they happen ---------------------------------------------------

    def http_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_seconds.labels(method, route).observe(seconds)

    def tftp_transfer(self, result: str, seconds: float) -> None:
        self.tftp_seconds.labels(result).observe(seconds)

    def transition(self, before: NodeState, after: NodeState | None) -> None:
        self.transitions.labels(before.value, "deleted" if after is None else after.value).inc()

    def callback(self, state: NodeState, accepted: bool) -> None:
        self.callbacks.labels(state.value, "accepted" if accepted else "refused").inc()

    def stall(self, state: NodeState) -> None:
        self.stalls.labels(state.value).inc()

    def bmc_operation(self, op: str, result: str, seconds: float) -> None:
        self.bmc_operations.labels(op, result).inc()
        self.bmc_seconds.labels(op).observe(seconds)

    # -- read at scrape time ----------------------------------------------------------

    def watch_dhcp(self, dhcp: DhcpSource) -> None:
        self.registry.register(_Read(lambda: dhcp_families(dhcp)))

    def watch_tftp(self, tftp: TftpSource) -> None:
        self.registry.register(_Read(lambda: tftp_families(tftp)))

    def watch_policy(self, policy: PolicySource) -> None:
        self.registry.register(_Read(lambda: policy_families(policy)))

    def watch_dns(self, dns: DnsSource) -> None:
        self.registry.register(_Read(lambda: dns_families(dns)))

    def watch_rollouts(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Nodes of running and paused rollouts per outcome, as of the driver's last pass."""
        def families() -> Iterable[Metric]:
            gauge = GaugeMetricFamily("bootd_rollout_nodes", "Nodes of live rollouts per outcome",
                                      labels=["outcome"])
            for outcome, n in sorted(counts().items()):
                gauge.add_metric([outcome], n)
            yield gauge
        self.registry.register(_Read(families))

    def watch_rogue(self, rogue: RogueSource) -> None:
        self.registry.register(_Read(lambda: rogue_families(rogue)))


def _prefixed(counters: Mapping[str, int], prefix: str) -> list[tuple[str, int]]:
    return sorted((k[len(prefix):], v) for k, v in counters.items() if k.startswith(prefix))


def dhcp_families(dhcp: DhcpSource) -> Iterable[Metric]:
    c = dhcp.counters
    received = CounterMetricFamily("bootd_dhcp_packets_received",
                                   "DHCP packets received, by message type (unparsed: malformed)",
                                   labels=["type"])
    for kind, n in _prefixed(c, "received-"):
        received.add_metric([kind], n)
    yield received
    sent = CounterMetricFamily("bootd_dhcp_packets_sent", "DHCP replies sent, by verdict",
                               labels=["verdict"])
    for verdict, n in _prefixed(c, "sent-"):
        sent.add_metric([verdict], n)
    yield sent
    dropped = CounterMetricFamily("bootd_dhcp_packets_dropped", "DHCP packets dropped, by reason",
                                  labels=["reason"])
    for reason, n in _prefixed(c, "dropped-"):
        dropped.add_metric([reason], n)
    yield dropped
    shed = CounterMetricFamily("bootd_dhcp_packets_shed", "DHCP packets left unanswered under overload "
                               "(waited too long, or the backlog was full), by reason", labels=["reason"])
    for reason, n in _prefixed(c, "shed-"):
        shed.add_metric([reason], n)
    yield shed
    verdicts = CounterMetricFamily("bootd_dhcp_decisions", "DHCP decisions, by verdict", labels=["verdict"])
    for verdict in Verdict:
        verdicts.add_metric([verdict.value], c.get(verdict.value, 0))
    yield verdicts
    yield CounterMetricFamily("bootd_dhcp_send_errors", "DHCP replies the socket refused",
                              value=c.get("send_errors", 0))
    yield CounterMetricFamily("bootd_dhcp_conflict_probes", "Addresses probed (ARP/ICMP) before offering",
                              value=c.get("probed", 0))
    yield CounterMetricFamily("bootd_dhcp_conflicts", "Probed addresses found in use, skipped",
                              value=c.get("probe-conflicts", 0))
    total = GaugeMetricFamily("bootd_dhcp_pool_addresses", "Addresses in each dynamic pool",
                              labels=["subnet", "pool"])
    assigned = GaugeMetricFamily("bootd_dhcp_pool_assigned", "Bound, unexpired leases in each dynamic pool",
                                 labels=["subnet", "pool"])
    free = GaugeMetricFamily("bootd_dhcp_pool_probed_free", "Conflict-checked free addresses in stock",
                             labels=["subnet", "pool"])
    for pool in dhcp.pools():
        total.add_metric([pool.subnet, pool.pool], pool.total)
        assigned.add_metric([pool.subnet, pool.pool], pool.assigned)
        if pool.probed_free is not None:
            free.add_metric([pool.subnet, pool.pool], pool.probed_free)
    yield from (total, assigned, free)


def tftp_families(tftp: TftpSource) -> Iterable[Metric]:
    c = tftp.counters
    for name, key, text in (
            ("requests", "requests", "Requests read on port 69"),
            ("transfers_started", "started", "Transfers started"),
            ("transfers_completed", "complete", "Transfers the client acknowledged to the end"),
            ("transfers_declined", "declined", "Transfers the client declined after the options"),
            ("transfers_failed", "failed", "Transfers that timed out or lost the client"),
            ("refused", "refused", "Requests refused with an error"),
            ("sent_bytes", "bytes", "File bytes sent by finished transfers")):
        yield CounterMetricFamily(f"bootd_tftp_{name}", text, value=c.get(key, 0))
    refused = CounterMetricFamily("bootd_tftp_refusals", "Refused requests, by reason", labels=["reason"])
    for reason, n in sorted(tftp.refusal_counts().items()):
        refused.add_metric([reason], n)
    yield refused
    yield GaugeMetricFamily("bootd_tftp_transfers_in_flight", "Transfers running now", value=tftp.running())


def policy_families(policy: PolicySource) -> Iterable[Metric]:
    refused = CounterMetricFamily("bootd_policy_refused", "Boot requests the policy refused, by reason",
                                  labels=["reason"])
    for reason, n in sorted(policy.refused.items()):
        refused.add_metric([reason], n)
    yield refused
    census = policy.census()
    nodes = GaugeMetricFamily("bootd_nodes", "Known nodes (with a MAC) per state", labels=["state"])
    for state in NodeState:
        nodes.add_metric([state.value], census.get(state, 0))
    yield nodes


class Stopwatch:
    """time.perf_counter() at creation; `seconds` since. For latency observations."""

    __slots__ = ("start",)

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
