"""The gauges read when Prometheus asks, in the serve process that answers: the queue, the federation
manifest, and how long the TLS certificate and the domains' OpenPGP keys have left.

They describe shared state (one database, one home), so they are read, not counted: any serve
process gives the same answer, and nothing is summed across processes (metrics.py).
A part that cannot be read is left out of the answer and logged; ``securemail_database_up``
says whether the queue could be read.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from cryptography import x509
from prometheus_client.core import GaugeMetricFamily

from ..crypto.keys import Key
from ..errors import SecureMailError
from ..queue.census import census
from .health import timestamp

log = logging.getLogger(__name__)


class StateGauges:
    """A prometheus-client collector (``collect``) over the gateway's state."""

    def __init__(self, *, engine, manifest: Callable[[], object], certificate: Path,
                 domain_keys: dict[str, Key], clock: Callable[[], float] = time.time) -> None:
        self.engine, self.manifest, self.certificate = engine, manifest, Path(certificate)
        self.domain_keys, self.clock = domain_keys, clock

    def collect(self):
        now = self.clock()
        yield from self._queue(now)
        yield from self._manifest(now)
        yield from self._expiries(now)

    def _queue(self, now: float):
        up = GaugeMetricFamily("securemail_database_up", "Whether the queue could be read at this scrape")
        try:
            c = census(self.engine, now)
        except SecureMailError as e:
            log.warning("metrics: the queue cannot be read: %s", e.detail or e.message)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        states = GaugeMetricFamily("securemail_queue_deliveries", "Deliveries still to settle, by state "
                                   "(queued, deferred after a failed try, held)", labels=["state"])
        for state, n in c.by_state.items():
            states.add_metric([state], n)
        yield states
        yield GaugeMetricFamily("securemail_queue_oldest_due_seconds", "How long the longest-waiting due "
                                "delivery has waited to be claimed (0: none due)", value=c.oldest_due)
        yield GaugeMetricFamily("securemail_queue_oldest_seconds", "Since the oldest delivery still to "
                                "settle was queued (0: none)", value=c.oldest)

    def _manifest(self, now: float):
        try:
            m = self.manifest()
            created, expires = (timestamp(m.created), timestamp(getattr(m, "expires", None))) if m else (None, None)
        except (SecureMailError, ValueError) as e:
            log.warning("metrics: the federation manifest cannot be read: %s", getattr(e, "message", e))
            return
        if m is None:
            return
        yield GaugeMetricFamily("securemail_manifest_serial", "Serial of the installed federation manifest",
                                value=m.serial)
        yield GaugeMetricFamily("securemail_manifest_age_seconds", "Since the installed manifest was made",
                                value=now - created)
        if expires is not None:
            yield GaugeMetricFamily("securemail_manifest_expiry_seconds", "Until the installed manifest "
                                    "expires (negative: expired)", value=expires - now)

    def _expiries(self, now: float):
        try:
            cert = x509.load_pem_x509_certificate(self.certificate.read_bytes())
        except (OSError, ValueError) as e:
            log.warning("metrics: the TLS certificate cannot be read: %s", e)
        else:
            g = GaugeMetricFamily("securemail_tls_certificate_expiry_seconds", "Until the listeners' TLS "
                                  "certificate expires (negative: expired)", labels=["file"])
            g.add_metric([self.certificate.name], cert.not_valid_after_utc.timestamp() - now)
            yield g
        g = GaugeMetricFamily("securemail_openpgp_key_expiry_seconds", "Until each served domain's OpenPGP "
                              "key expires (a key without expiry is not listed)", labels=["domain"])
        for domain, key in sorted(self.domain_keys.items()):
            if key.status.expires is not None:
                g.add_metric([domain], key.status.expires - now)
        yield g
