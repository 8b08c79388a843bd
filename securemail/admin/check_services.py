"""gateway check: what the gateway binds and dials: its listeners, the office MTA (``relay_to``) and
an LMTP server (``delivery.lmtp``), each probe bounded by a short timeout.

A listener is judged as ``admin.ports.collisions`` judges it (a port two listeners share, or that
another process holds: the ``COLLISION`` lines), then by a bind for the other reasons a bind fails
(an address this host does not have, a privileged port). An SMTP or LMTP server is greeted as the
delivery step would: its 220 greeting, EHLO (LHLO), QUIT; nothing is sent.
"""

from __future__ import annotations

import errno
import os
import smtplib
import socket
from collections.abc import Callable, Iterable

from ..config import Listener
from .ports import collisions, in_use
from ..net import join_hostport, split_hostport
from .result import Check, passed, problem

PROBE_TIMEOUT = 3.0   # seconds for each network operation of a probe


def bind_error(host: str, port: int) -> OSError | None:
    """Why a listener could not bind ``host:port``, other than the port being in use (``ports.in_use``
    says that): an address this host does not have, a name that does not resolve, a privileged port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        return None if e.errno == errno.EADDRINUSE else e
    return None


def listener_checks(listeners: Iterable[Listener], busy: Callable[[str, int], bool] = in_use,
                    cannot_bind: Callable[[str, int], OSError | None] = bind_error) -> list[Check]:
    """``ok listener NAME HOST:PORT``, or ``COLLISION listener NAME HOST:PORT: why`` as before, or a
    PROBLEM when the address cannot be bound at all."""
    pairs = [(li.name, li.host, li.port) for li in listeners]
    found = dict(collisions(pairs, busy))
    out = []
    for name, host, port in pairs:
        at, check = f"{host}:{port}", f"listener {name}"
        shared = [n for n, _, p in pairs if p == port and n != name]
        if name in found:
            fix = (f"give [listeners.{name}] or [listeners.{shared[0]}] a port of its own" if shared else
                   f"stop what holds {at} (`ss -ltnp 'sport = :{port}'` names it) or give [listeners.{name}] "
                   "another port; if it is this gateway, it is running already")
            out.append(problem(check, f"{at}: {found[name]}", fix, word="COLLISION"))
        elif (err := cannot_bind(host, port)) is not None:
            fix = ("run serve as root or with CAP_NET_BIND_SERVICE, or use a port above 1023"
                   if err.errno == errno.EACCES else
                   f"give [listeners.{name}] an address of this host (`ip -brief address` lists them)")
            out.append(problem(check, f"{at}: cannot listen there: {err.strerror or err}", fix))
        else:
            out.append(passed(check, at))
    return out


# --- probes -------------------------------------------------------------------------------------
def probe(target: tuple[str, int] | str, hostname: str, *, lmtp: bool = False,
          timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    """Greet an SMTP server (an LMTP one with ``lmtp``; ``target`` a unix socket path or
    ``(host, port)``): its 220 greeting, EHLO (LHLO) answered 250, QUIT.
    ``(True, greeting)`` or ``(False, what went wrong)``; each read or write waits ``timeout`` s."""
    where = target if isinstance(target, str) else join_hostport(*target)
    host, port = (target, 0) if isinstance(target, str) else target
    client = (smtplib.LMTP if lmtp else smtplib.SMTP)(local_hostname=hostname, timeout=timeout)
    try:
        code, greeting = client.connect(host, port)
        if code != 220:
            return False, f"{where} greeted with {code} {_line(greeting)}"
        code, reply = client.ehlo()
        if code != 250:
            return False, f"{where} answered {'LHLO' if lmtp else 'EHLO'} with {code} {_line(reply)}"
        client.quit()
        return True, f"{where} answered: {code_line(220, greeting)}"
    except smtplib.SMTPServerDisconnected as e:  # smtplib's word for a read that timed out, too
        if isinstance(e.__context__, TimeoutError):
            return False, f"{where} did not answer within {timeout:g} s"
        return False, f"{where} closed the connection"
    except ConnectionRefusedError:
        return False, f"{where} refused the connection: nothing listens there"
    except TimeoutError:
        return False, f"{where} did not answer within {timeout:g} s"
    except OSError as e:
        return False, f"{where}: {e.strerror or e}"
    finally:
        client.close()


def _line(reply: bytes) -> str:
    """The first line of a server's reply text, printable and short."""
    text = reply.decode("ascii", "replace").splitlines()[0] if reply else ""
    return "".join(c if c.isprintable() else "?" for c in text)[:80]


def code_line(code: int, reply: bytes) -> str:
    return f"{code} {_line(reply)}".rstrip()


def lmtp_target(value) -> tuple[str, int] | str | None:
    """``delivery.lmtp`` as the probe dials it: ``(host, port)`` from ``HOST:PORT`` (or a pair), or
    the path of a unix socket; None when it is neither."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return str(value[0]), int(value[1])
    if not isinstance(value, (str, os.PathLike)):
        return None
    text = os.fspath(value)
    return text if text.startswith("/") else split_hostport(text)


def delivery_checks(config, timeout: float = PROBE_TIMEOUT, greet=probe) -> list[Check]:
    """``relay_to`` (the office MTA) when it is set; the LMTP server when ``delivery.lmtp`` is."""
    out = []
    if config.relay_to is not None:
        ok, detail = greet(config.relay_to, config.hostname, timeout=timeout)
        out.append(passed("relay_to", detail) if ok else problem(
            "relay_to", detail, "start the office MTA, or correct delivery.relay_to (HOST:PORT); until it "
            "answers, mail for it is deferred and retried"))
    lmtp = getattr(config, "lmtp", None)  # delivery.lmtp: the LMTP delivery mode's server
    if lmtp is not None:
        target = lmtp_target(lmtp)
        if target is None:
            out.append(problem("lmtp", f"delivery.lmtp is {lmtp!r}", 'delivery.lmtp = "HOST:PORT" or "/unix/path"'))
        else:
            ok, detail = greet(target, config.hostname, lmtp=True, timeout=timeout)
            out.append(passed("lmtp", detail) if ok else problem(
                "lmtp", detail, "start the LMTP server (dovecot-lmtpd, say), or correct delivery.lmtp "
                "(HOST:PORT or /unix/path); until it answers, local mail is deferred and retried"))
    return out
