"""The delivery stage: next-hop SMTP, local Maildir, LMTP, the office MTA; retries; DSN bounces.

``DeliveryWorker`` claims due deliveries from the queue and hands each
(message, next hop) group to ``deliver_smtp``, ``deliver_lmtp`` or ``deliver_maildir``; each
returns an ``Outcome`` that the worker settles (delivered, deferred by the
retry schedule, or bounced with a DSN from ``build_dsn``).

The names are loaded on first use: a crypto worker process needs the next-hop
names (``delivery.hops``) but not the SMTP client, which costs each process
about 12 MiB.
"""

import importlib

_WHERE = {"build_dsn": "dsn", "header_block": "dsn",
          "Hop": "hops", "LmtpHop": "hops", "MaildirHop": "hops", "RelayHop": "hops", "SmtpHop": "hops",
          "lmtp_hop": "hops", "local_hop": "hops", "maildir_hop": "hops", "parse_hop": "hops",
          "relay_hop": "hops", "smtp_hop": "hops",
          "deliver_lmtp": "lmtp", "deliver_maildir": "maildir", "Outcome": "outcome",
          "deliver_smtp": "smtp", "DeliveryWorker": "worker"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
