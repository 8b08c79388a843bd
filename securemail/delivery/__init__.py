"""The delivery stage: next-hop SMTP, local Maildir, the office MTA; retries; DSN bounces.

``DeliveryWorker`` claims due deliveries from the queue and hands each
(message, next hop) group to ``deliver_smtp`` or ``deliver_maildir``; both
return an ``Outcome`` that the worker settles (delivered, deferred by the
retry schedule, or bounced with a DSN from ``build_dsn``).
"""

from securemail.delivery.dsn import build_dsn, header_block, queue_bounce_sender
from securemail.delivery.hops import (Hop, MaildirHop, RelayHop, SmtpHop, maildir_hop, parse_hop,
                                      relay_hop, smtp_hop)
from securemail.delivery.maildir import deliver_maildir
from securemail.delivery.outcome import Outcome
from securemail.delivery.smtp import deliver_smtp, spki_sha256
from securemail.delivery.worker import DeliveryWorker

__all__ = ["DeliveryWorker", "Hop", "MaildirHop", "Outcome", "RelayHop", "SmtpHop", "build_dsn",
           "deliver_maildir", "deliver_smtp", "header_block", "maildir_hop", "parse_hop",
           "queue_bounce_sender", "relay_hop", "smtp_hop", "spki_sha256"]
