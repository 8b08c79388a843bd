"""The delivery stage: claim due deliveries, send each to its next hop, settle; retries; DSNs.

``worker.DeliveryWorker`` claims from the queue, parses each row's next hop once
(``transform.hops.parse_hop``) and hands the typed hop to ``smtp.deliver_smtp`` /
``pool.SessionPool`` (member gateways, the office MTA), ``lmtp.deliver_lmtp`` (the office's
mailbox server, a status for each recipient) or ``maildir.deliver_maildir``;
each returns an ``outcome.Outcome`` that the worker settles (delivered, deferred by the
retry schedule, or bounced with a DSN from ``dsn.build_dsn``, queued by ``bounces.Bounces``).
``keycheck.KeyCheck`` vetoes a send whose recipient key changed since it was queued.
"""
