"""Threat agent: an attacker on the network between gateways, and between a sender's script and its gateway.

Every test drives the real gateways of the conftest as this agent would and
asserts a promise of docs/security-target.md.
"""

from __future__ import annotations

import pytest

from tests.hostile import ALICE, BRUNO, GATEWAY_PEER, JUSTICE, OFFICE, OWN, STRANGER  # noqa: F401

pytestmark = pytest.mark.timeout(300)


# --- finding 9: securemail send never lets the SMTP password cross in clear -----------------------------
import base64 as _f9_base64  # noqa: E402
import socket as _f9_socket  # noqa: E402
import threading as _f9_threading  # noqa: E402

from tests.conftest import run_cli as _f9_run_cli  # noqa: E402
from tests.hostile.conftest import PASSWORD as _F9_PASSWORD  # noqa: E402
from tests.integration.gateways import free_port as _f9_free_port  # noqa: E402


class _F9Tap:
    """A TCP relay on loopback that records what the client sends: the network attacker's view."""

    def __init__(self, target: int) -> None:
        self.target, self.sent, self.connections = target, bytearray(), 0
        self.server = _f9_socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        _f9_threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            upstream = _f9_socket.create_connection(("127.0.0.1", self.target))
            _f9_threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            _f9_threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src, dst, record: bool) -> None:
        try:
            while data := src.recv(65536):
                if record:
                    self.sent += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(_f9_socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.server.close()

    def saw_credentials(self) -> bool:
        plain = _f9_base64.b64encode(f"\0{ALICE}\0{_F9_PASSWORD}".encode())
        login = _f9_base64.b64encode(_F9_PASSWORD.encode())
        return any(s in bytes(self.sent) for s in (_F9_PASSWORD.encode(), plain, login, b"AUTH "))


def _f9_send(gw, tmp_path, port: int, *extra: str):
    """``securemail send`` as alice, with her submission password, to ``127.0.0.1:port``."""
    pw = tmp_path / "smtp-pw"
    pw.write_text(_F9_PASSWORD + "\n")
    body = tmp_path / "body.txt"
    body.write_text("Note de service.\n")
    return _f9_run_cli(gw.tmp / f"person-{ALICE}", "send", "--from", ALICE, "--to", ALICE, "--subject", "Note",
                       "--body-file", str(body), "--server", f"127.0.0.1:{port}", "--username", ALICE,
                       "--password-file", str(pw), *extra)


def test_send_by_default_uses_starttls_and_the_password_never_crosses_in_clear(gw, tmp_path):
    tap = _F9Tap(gw.a.submission)
    try:
        res = _f9_send(gw, tmp_path, tap.port, "--cafile", str(gw.a.cert))
    finally:
        tap.close()
    assert res.exit_code == 0 and "sent to" in res.stdout, (res.stdout, res.stderr)
    assert b"STARTTLS\r\n" in tap.sent
    assert not tap.saw_credentials()
    clear = bytes(tap.sent).split(b"STARTTLS\r\n", 1)[1]
    assert clear[:1] == b"\x16"  # what follows STARTTLS is a TLS handshake record, not SMTP


def _f9_plain_server():
    """A real SMTP server without TLS that offers AUTH in clear and records any attempt."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    seen: list = []

    class Sink:
        async def handle_DATA(self, server, session, envelope):
            seen.append(("DATA", envelope.content))
            return "250 OK"

    def authenticator(server, session, envelope, mechanism, auth_data):
        seen.append(("AUTH", auth_data))
        return AuthResult(success=True)

    port = _f9_free_port()
    ctl = Controller(Sink(), hostname="127.0.0.1", port=port, auth_require_tls=False,
                     authenticator=authenticator)
    ctl.start()
    return ctl, port, seen


def test_send_refuses_a_server_without_starttls_before_any_credential(gw, tmp_path):
    ctl, port, seen = _f9_plain_server()
    tap = _F9Tap(port)
    try:
        res = _f9_send(gw, tmp_path, tap.port, "--cafile", str(gw.a.cert))
        plain = _f9_send(gw, tmp_path, tap.port, "--insecure-plain")
        connections_after_plain = tap.connections
    finally:
        tap.close()
        ctl.stop()
    assert res.exit_code == 1 and "does not offer STARTTLS" in res.stderr and "nothing was sent" in res.stderr
    assert plain.exit_code == 2 and "--insecure-plain never sends credentials" in plain.stderr
    assert connections_after_plain == 1  # the --insecure-plain run never even connected
    assert seen == [] and not tap.saw_credentials() and b"MAIL FROM" not in tap.sent


def test_send_refuses_a_certificate_it_cannot_verify(gw, tmp_path):
    tap = _F9Tap(gw.a.submission)
    try:
        wrong = _f9_send(gw, tmp_path, tap.port, "--cafile", str(gw.j.cert))  # another gateway's certificate
        system = _f9_send(gw, tmp_path, tap.port)  # a self-signed certificate is no system CA's
    finally:
        tap.close()
    for res in (wrong, system):
        assert res.exit_code == 1 and "is not trusted" in res.stderr and "nothing was sent" in res.stderr, \
            res.stderr
    assert not tap.saw_credentials() and b"MAIL FROM" not in tap.sent
