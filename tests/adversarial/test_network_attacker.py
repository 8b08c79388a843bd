"""Threat agent: an attacker on the network between gateways, and between a sender's script and its gateway.

Every test drives the real gateways of the conftest as this agent would and
asserts a promise of docs/security-target.md.
"""

from __future__ import annotations

import pytest

from tests.hostile import ALICE, BRUNO, GATEWAY_PEER, JUSTICE, OFFICE, OWN, STRANGER  # noqa: F401

pytestmark = pytest.mark.timeout(300)


# --- issue 10, finding 6: member mail needs the member gateway's certificate, and DKIM oversigns -----
import uuid as _f6_uuid  # noqa: E402

from securemail.smtp import replies as _f6_replies  # noqa: E402
from tests.hostile import Raw as _F6Raw  # noqa: E402
from tests.hostile.test_message_hostile import from_member as _f6_from_member  # noqa: E402
from tests.hostile.test_message_hostile import pgp_mime as _f6_pgp_mime, armored_of as _f6_armored  # noqa: E402
from tests.support import audit_records as _f6_audit  # noqa: E402
from tests.unit.test_member_auth import make_cert as _f6_make_cert  # noqa: E402


def _f6_real_member_message(gw) -> bytes:
    """A message justice's gateway really sent to A: DKIM-signed with J's keys, accepted over a session
    with J's certificate. Its bytes are what an attacker on the path copies."""
    tag = _f6_uuid.uuid4().hex
    data = gw.signed(_f6_pgp_mime(_f6_armored(gw)).replace(b"Message-ID: <", f"Message-ID: <{tag}.".encode(), 1))
    reply, added = _f6_from_member(gw, data, sign=False)
    assert reply.startswith("250 2.0.0 OK: queued as ") and len(added) == 1, reply
    return data


def _f6_send_raw(gw, client: _F6Raw, data: bytes) -> str:
    client.envelope(BRUNO, [ALICE])
    client.send(data.replace(b"\r\n.", b"\r\n..") + b".\r\n")
    return client.reply()


@pytest.mark.parametrize("shown", ["no certificate", "self-made certificate for gw.justice.gouv.fr"])
def test_copied_member_message_from_a_session_without_justices_certificate_is_refused(
        gw, raw, record, tmp_path, shown):
    """The attacker replays, over STARTTLS from justice's own address, the exact bytes (valid DKIM)
    of a message justice's gateway sent, showing no certificate or one it made itself with
    justice's gateway name: 550 5.7.1, nothing queued, and the refusal audited with its reason."""
    data = _f6_real_member_message(gw)
    cert = None
    if shown != "no certificate":
        pem, key = _f6_make_cert("gw.justice.gouv.fr")
        (tmp_path / "c.pem").write_bytes(pem)
        (tmp_path / "c.key").write_bytes(key)
        cert = (tmp_path / "c.pem", tmp_path / "c.key")
    before, audited = gw.queued(), len(_f6_audit(gw.a.home, "refused"))
    client = raw(gw.a.relay, GATEWAY_PEER)
    client.greet(tls=True, cert=cert)
    reply = _f6_send_raw(gw, client, data)
    record(f"member mail with valid DKIM, {shown} (network attacker)", reply)
    want = _f6_replies.MEMBER_CERT_REQUIRED if cert is None else _f6_replies.MEMBER_CERT_MISMATCH
    assert reply == want and reply.startswith("550 5.7.1 ")
    assert gw.queued() == before
    [line] = _f6_audit(gw.a.home, "refused")[audited:]
    assert line["fields"]["rule"] == "member_cert" and line["fields"]["sender_domain"] == JUSTICE
    assert line["fields"]["reason"] == ("no client certificate" if cert is None
                                        else f"client certificate of no member, not {JUSTICE}")


_F6_DKIM = "550 5.7.20 No valid DKIM signature aligned with the From domain"
_F6_PLAINTEXT = ("550 5.7.1 Plaintext between member domains is refused: "
                 "message is not properly OpenPGP encrypted")


@pytest.mark.parametrize("field, refusals", [
    ("Subject: Urgent: wire the funds today", {_F6_DKIM}),
    (f"Reply-To: <attacker-{_f6_uuid.uuid4().hex[:6]}@example.org>", {_F6_DKIM}),
    # the encryption check reads the first Content-Type: it may refuse before DKIM is verified
    ("Content-Type: text/plain; charset=us-ascii", {_F6_DKIM, _F6_PLAINTEXT}),
], ids=["Subject", "Reply-To", "Content-Type"])
def test_a_header_prepended_to_a_signed_member_message_is_refused(gw, record, field, refusals):
    """A Subject, Reply-To or Content-Type added on top of a message justice's gateway signed would
    be what the reader sees: every signed name is oversigned, so A's DKIM check of the result fails
    and A refuses it (sent with justice's real certificate, so that the certificate rule lets it
    through), and nothing is queued."""
    from securemail.crypto.dkim import manifest_dnsfunc, verify_dkim
    from securemail.federation import load_installed
    signed = gw.signed(_f6_pgp_mime(_f6_armored(gw)))
    forged = field.encode() + b"\r\n" + signed
    records = load_installed(gw.a.home / "federation.json").dkim_records()
    assert verify_dkim(signed, manifest_dnsfunc(records)).status == "pass"
    assert verify_dkim(forged, manifest_dnsfunc(records)).status == "fail"
    reply, added = _f6_from_member(gw, forged, sign=False)
    record(f"{field.split(':')[0]} prepended to a signed member message", reply)
    assert reply in refusals
    assert added == set()


# --- finding 9: securemail send never lets the SMTP password cross in clear -----------------------------
import base64 as _f9_base64  # noqa: E402
import socket as _f9_socket  # noqa: E402
import threading as _f9_threading  # noqa: E402

from tests.conftest import run_cli as _f9_run_cli  # noqa: E402
from tests.hostile.conftest import PASSWORD as _F9_PASSWORD  # noqa: E402
from tests.support import free_port as _f9_free_port  # noqa: E402


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
