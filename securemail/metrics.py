"""The gateway's metrics: every Prometheus metric by name, one object per process, handed down by app.py.

The serve process, its crypto workers and its delivery child (and, with ``serve --processes N``,
N serve processes behind one SO_REUSEPORT metrics port, any of which may answer a scrape) each
count what they do. They share the counts through prometheus-client's multiprocess mode: each
process writes its values to memory-mapped files of its own in ``PROMETHEUS_MULTIPROC_DIR``
(``metrics/`` in the home), and whichever serve process is scraped sums every file. We chose
it over collecting in one place because the counting happens where the work is (a crypto
worker times its DKIM checks, the delivery child its settles) and no process has to forward
anything: a child killed mid-way keeps the counts it wrote, and no new channel between the
processes is needed. What it costs:

- the environment variable is global state, and prometheus-client reads it at its import to
  choose how values are stored (``values.ValueClass``). ``securemail serve`` sets it
  (``share_between_processes``, which has prometheus-client choose again, before any metric
  exists) and its children inherit it; no other global exists here. A process without it (a
  test's in-process gateway) keeps its values in this object's registry.
- the directory is emptied when the top serve process starts (a run's counters start at 0, as
  Prometheus expects of a restart), and a child's files stay after it ends, so that the totals
  never go down; the live gauge (``securemail_processes``) of a child that ended is removed by its
  supervisor (``process_ended``: ``mark_process_dead``).

Gauges of state (the queue, the manifest, certificates) are not kept here: procs/scrape.py reads
them when Prometheus asks, in the process that answers.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
REPLY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DELIVERY_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0, 5 * 86400.0)
CPU_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
OTHER = "other"   # the domain label of a domain neither ours nor a member's (bounded cardinality)

# the reason class of a refusal, by the rule (policy/rules.py, policy/recipient.py) that refused
REASON_CLASS = {
    "rcpt_syntax": "address", "relay": "relay", "non_member_recipient": "relay",
    "one_from": "sender", "auth_identity": "sender", "sender_alignment": "sender",
    "office_sender": "sender", "remote_sender": "sender", "mail_loop": "loop",
    "member_tls": "member_tls", "member_cert": "member_tls", "member_dkim": "dkim",
    "member_encrypted": "encryption", "mime_structure": "format", "header_block": "format",
    "crypto": "crypto", "key_changed": "key_change", "temporary": "temporary",
    "manifest_current": "manifest",
}


def reason_class(rule: str) -> str:
    return REASON_CLASS.get(rule, OTHER)


def share_between_processes(directory: Path, *, fresh: bool) -> None:
    """Make this process and the children it starts count in ``directory`` (multiprocess mode);
    ``fresh``: empty it first (the top serve process, once per run). Call it before any metric
    of this process exists: values made before it stay in memory, unseen by a scrape."""
    directory = Path(directory)
    if fresh and directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ[ENV] = str(directory)
    if not values.ValueClass._multiprocess:  # chosen at import, before the variable was set
        values.ValueClass = values.get_value_class()


def shared() -> bool:
    """Whether this process counts in the shared directory (``share_between_processes``, inherited)."""
    return bool(values.ValueClass._multiprocess) and bool(os.environ.get(ENV))


class Metrics:
    """Every metric a process writes; ``role`` is this process's (serve, crypto, delivery, supervisor).
    ``known_domains()`` are the domains a delivery is labelled with (ours and the members'); any other
    is ``other``, so that mail to the whole Internet does not make a series per domain."""

    def __init__(self, role: str, known_domains: Callable[[], Iterable[str]] = frozenset) -> None:
        self.role, self.known_domains = role, known_domains
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter("securemail_messages", "Messages answered at DATA, by listener, verdict "
                                "(accepted, refused, held, deferred) and reason class",
                                ["listener", "verdict", "reason"], registry=r)
        self.recipients_refused = Counter("securemail_recipients_refused", "Recipients refused at RCPT, by "
                                          "listener and reason class", ["listener", "reason"], registry=r)
        self.time_to_250 = Histogram("securemail_time_to_250_seconds", "From the end of DATA to the 250 "
                                     "(policy, crypto, durable commit)", ["listener"], buckets=REPLY_BUCKETS,
                                     registry=r)
        self.deliveries = Counter("securemail_deliveries", "Delivery attempts settled, by outcome and "
                                  "recipient domain (ours or a member's; other)", ["outcome", "domain"], registry=r)
        self.time_to_delivered = Histogram("securemail_time_to_delivered_seconds", "From the 250 to the "
                                           "delivery", ["domain"], buckets=DELIVERY_BUCKETS, registry=r)
        self.crypto_seconds = Histogram("securemail_crypto_seconds", "OpenPGP work per message, by "
                                        "operation", ["operation"], buckets=CPU_BUCKETS, registry=r)
        self.dkim_seconds = Histogram("securemail_dkim_seconds", "DKIM verification and signing time",
                                      ["operation"], buckets=CPU_BUCKETS, registry=r)
        self.dkim_results = Counter("securemail_dkim_results", "DKIM verifications of member mail, by result",
                                    ["result"], registry=r)
        self.key_changes_held = Counter("securemail_key_changes_held", "Messages held (451) because a "
                                        "recipient's pinned key changed", registry=r)
        self.restarts = Counter("securemail_process_restarts", "Child processes started again after they "
                                "ended, by role", ["role"], registry=r)
        self.processes = Gauge("securemail_processes", "Processes running, by role", ["role"],
                               multiprocess_mode="livesum", registry=r)
        self.processes.labels(role).set(1)

    # --- what the stages report --------------------------------------------------------------
    def answered(self, listener: str, verdict: str, rule: str = "", seconds: float | None = None) -> None:
        """A message answered at DATA; ``seconds`` from the end of DATA to an accepting 250."""
        self.messages.labels(listener, verdict, reason_class(rule) if rule else "").inc()
        if seconds is not None:
            self.time_to_250.labels(listener).observe(max(seconds, 0.0))

    def recipient_refused(self, listener: str, rule: str) -> None:
        self.recipients_refused.labels(listener, reason_class(rule)).inc()

    def key_change_held(self) -> None:
        self.key_changes_held.inc()

    def settled(self, outcome: str, domain: str, seconds: float | None = None) -> None:
        """A delivery settled (delivered, deferred, bounced, held); ``seconds`` since it was queued,
        for a delivered one."""
        label = domain if domain in set(self.known_domains()) else OTHER
        self.deliveries.labels(outcome, label).inc()
        if seconds is not None:
            self.time_to_delivered.labels(label).observe(max(seconds, 0.0))

    def crypto(self, operation: str, seconds: float) -> None:
        self.crypto_seconds.labels(operation).observe(seconds)

    def dkim(self, operation: str, seconds: float, result: str | None = None) -> None:
        self.dkim_seconds.labels(operation).observe(seconds)
        if result is not None:
            self.dkim_results.labels(result).inc()

    def timed(self, kind: str, operation: str, fn: Callable):
        """``fn``, each call's time counted as ``operation`` of ``kind`` ("crypto" or "dkim")."""
        histogram = {"crypto": self.crypto_seconds, "dkim": self.dkim_seconds}[kind].labels(operation)

        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                histogram.observe(time.perf_counter() - start)
        return run

    # --- the supervisors ----------------------------------------------------------------------
    def restarted(self, role: str) -> None:
        self.restarts.labels(role).inc()

    def process_ended(self, pid: int | None) -> None:
        """A child ended: its live gauges go (its counters stay in the totals)."""
        if pid is not None and shared():
            multiprocess.mark_process_dead(pid)

    # --- the scrape ---------------------------------------------------------------------------
    def exposition(self, *collectors) -> bytes:
        """The text format of every process's metrics (or this one's) and of ``collectors``."""
        registry = CollectorRegistry()
        if shared():
            multiprocess.MultiProcessCollector(registry)
        else:
            registry.register(_Own(self.registry))
        for c in collectors:
            registry.register(c)
        return generate_latest(registry)


class _Own:
    """This process's registry as one collector of a scrape's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self):
        return self.registry.collect()
