"""Proof of reliability and security: crash, storage, next-hop and key faults against real gateways.

Each harness drives real ``securemail serve`` processes (or gateways built in
this process) on loopback, injects one fault, and checks the invariants of
issue 4: acknowledged ⊆ stored ⊆ delivered ∪ queued ∪ bounced; no plaintext
of member-bound mail leaves the gateway or reaches a reply, a DSN or a log
line; the gateway answers the next session after the fault. Figures are
recorded for ``proof/run.py`` (``make proof``), which writes docs/reliability.md.

``SECUREMAIL_PROOF=full`` raises the run counts and adds the faults that
disturb shared services (stopping PostgreSQL); the default is a fast subset.
"""
