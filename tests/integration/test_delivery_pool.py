"""Session reuse to next hops: one TLS handshake for many messages, stale sessions replaced, never resent."""

from __future__ import annotations

import asyncio

import pytest

from securemail.transform.hops import smtp_hop
from securemail.delivery.pool import SessionPool

from .test_delivery_smtp import BODY, RCPT, SENDER, server, tls  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(60)



def run(coro):
    return asyncio.run(coro)


def test_many_messages_share_one_session(server, tls):
    ctx, pin, _ = tls
    port, sink = server(tls_context=ctx, require_starttls=True)
    pool = SessionPool()
    hop = smtp_hop("127.0.0.1", port, pin)

    async def main():
        outs = []
        for i in range(5):
            body = BODY.replace(b"<m1@", f"<m{i}@".encode())
            outs.append(await pool.deliver(hop, SENDER, RCPT, body, helo="gw.a.gov.test", timeout=10))
        await pool.close()
        return outs

    outs = run(main())
    assert [o.kind for o in outs] == ["delivered"] * 5
    assert pool.opened == 1
    assert len(sink.received) == 5 and all(tls_up for *_, tls_up in sink.received)


def test_concurrent_deliveries_open_parallel_sessions_then_reuse_them(server, tls):
    ctx, pin, _ = tls
    port, sink = server(tls_context=ctx, require_starttls=True)
    pool = SessionPool()
    hop = smtp_hop("127.0.0.1", port, pin)

    async def main():
        for _ in range(3):
            await asyncio.gather(*(pool.deliver(hop, SENDER, RCPT, BODY, helo="gw", timeout=10)
                                   for _ in range(4)))
        await pool.close()

    run(main())
    assert len(sink.received) == 12 and pool.opened <= 4


def test_dead_session_is_replaced_before_any_data(server, tls):
    ctx, pin, _ = tls
    port, sink = server(tls_context=ctx, require_starttls=True)
    pool = SessionPool()
    hop = smtp_hop("127.0.0.1", port, pin)

    async def main():
        first = await pool.deliver(hop, SENDER, RCPT, BODY, helo="gw", timeout=10)
        for _, client in pool._idle[(hop, None)]:  # the server side goes away while the session idles
            client.transport.abort()
        second = await pool.deliver(hop, SENDER, RCPT, BODY, helo="gw", timeout=10)
        await pool.close()
        return first, second

    first, second = run(main())
    assert first.kind == second.kind == "delivered"
    assert pool.opened == 2 and len(sink.received) == 2


def test_wrong_pin_is_never_pooled_and_never_sent(server, tls):
    ctx, pin, other_pin = tls
    port, sink = server(tls_context=ctx, require_starttls=True)
    pool = SessionPool()

    async def main():
        out = await pool.deliver(smtp_hop("127.0.0.1", port, other_pin), SENDER, RCPT, BODY,
                                 helo="gw", timeout=10)
        return out, dict(pool._idle)

    out, idle = run(main())
    assert out.kind == "temporary" and "pinned key" in out.message
    assert not any(idle.values()) and sink.received == []


def test_drop_after_data_on_a_reused_session_is_not_resent(server, tls):
    ctx, pin, _ = tls
    port, sink = server(tls_context=ctx, require_starttls=True)
    pool = SessionPool()
    hop = smtp_hop("127.0.0.1", port, pin)

    async def main():
        await pool.deliver(hop, SENDER, RCPT, BODY, helo="gw", timeout=10)
        sink.drop_after_data = True
        out = await pool.deliver(hop, SENDER, RCPT, BODY, helo="gw", timeout=10)
        await pool.close()
        return out

    out = run(main())
    assert out.kind == "temporary"
    assert pool.opened == 1  # no second session: the message is settled as deferred, not resent
