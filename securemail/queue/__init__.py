"""The durable mail queue: messages, per-recipient deliveries, leases and the retry schedule."""

from securemail.queue.schedule import next_retry
from securemail.queue.store import Claim, NewMessage, Queue

__all__ = ["Claim", "NewMessage", "Queue", "next_retry"]
