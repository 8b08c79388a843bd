"""Named SMTP replies: every line the adapter sends, with its enhanced status code.

One place to read what a client can be told: the adapter's own lines, and the
refusals of the policy rules and the crypto stage, each a named ``Reply`` (the type
is in errors.py, so that an error can be built from one), or a small function
where a part varies. Nothing else in securemail/ writes reply text
(tests/unit/test_replies.py). Replies never carry internals (exception types,
paths, versions); ``for_exception`` is the only bridge from an error to the wire,
and it logs the detail instead.
"""

from __future__ import annotations

import logging
import re

from securemail.errors import Reply, SecureMailError

log = logging.getLogger(__name__)


# --- positive -----------------------------------------------------------------
OK = Reply(250, "2.0.0", "OK: queued")
MAIL_OK = Reply(250, "2.1.0", "Sender OK")
RCPT_OK = Reply(250, "2.1.5", "Recipient OK")
NOOP_OK = Reply(250, "2.0.0", "OK")
# an intermediate reply: no enhanced status code (RFC 2034 section 3), so a plain line, not a Reply
START_DATA = "354 End data with <CR><LF>.<CR><LF>"
TLS_READY = Reply(220, "2.0.0", "Ready to start TLS")
BYE = Reply(221, "2.0.0", "Bye")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")


def queued(ids: list[str]) -> Reply:
    """The 250 for a message committed to the queue: its first item's id, and how many more."""
    return Reply(250, "2.0.0", f"OK: queued as {ids[0] if len(ids) == 1 else ids[0] + '+' + str(len(ids) - 1)}")


# --- temporary ----------------------------------------------------------------
TEMP_FAILURE = Reply(451, "4.3.0", "Temporary local problem, try again later")
TIMEOUT = Reply(421, "4.4.2", "Timeout exceeded, closing connection")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections")
# AUTH (smtp/auth.py, authlimit.py): the same answers whether the account exists or not
AUTH_SESSION_FAILURES = Reply(421, "4.7.0", "Too many authentication failures, closing connection")
AUTH_LOCKED = Reply(454, "4.7.0", "Too many authentication failures, try again later")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, closing connection")
TOO_MANY_RCPT = Reply(452, "4.5.3", "Too many recipients")
KEY_CHANGED_HELD = Reply(451, "4.7.1", "recipient key changed; held for operator review")
# the installed federation manifest expired (policy manifest_current): member mail waits for a fresh one
MANIFEST_EXPIRED = Reply(451, "4.7.0", "federation manifest expired; member mail deferred, try again later")

# --- permanent: protocol ------------------------------------------------------
BARE_NEWLINE = Reply(521, "5.5.2", "Bare <CR> or <LF> received, lines must end with <CR><LF>")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
BAD_SYNTAX = Reply(500, "5.5.2", "Error: bad syntax")
BAD_CHARACTERS = Reply(501, "5.5.2", "Control or 8-bit characters not allowed in commands")
DATA_SYNTAX = Reply(501, "5.5.4", "Syntax: DATA")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT = Reply(503, "5.5.1", "Error: need RCPT command")
NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RCPT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")

# --- permanent: message -------------------------------------------------------
TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
# the header block (mail/headers.py), refused whole: never cut short, nothing stored
HEADERS_TOO_BIG = Reply(552, "5.3.4", "Message header block exceeds the fixed maximum size")
TOO_MANY_HEADERS = Reply(552, "5.3.4", "Message header block has too many fields")
MALFORMED_HEADERS = Reply(554, "5.6.0", "Malformed message header block")
DATA_LINE_TOO_LONG = Reply(550, "5.6.0", "Message has a line longer than 1000 octets (RFC 5321 4.5.3.1.6)")

# --- permanent: security ------------------------------------------------------
NEED_TLS = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
NEED_AUTH = Reply(530, "5.7.0", "Authentication required")
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
AUTH_INVALID = Reply(535, "5.7.8", "Authentication credentials invalid")
# a session authenticated as a user removed since (users.py): reconnect and AUTH again
AUTH_REVOKED = Reply(530, "5.7.0", "Authentication no longer valid")
# mail from a member domain over a session without that member gateway's client certificate (policy member_cert)
MEMBER_CERT_REQUIRED = Reply(550, "5.7.1", "Mail from a member domain requires its member gateway's TLS client certificate")
MEMBER_CERT_MISMATCH = Reply(550, "5.7.1", "TLS client certificate does not match the sender domain's member gateway")

# --- permanent: policy (policy/rules.py, policy/recipient.py) -----------------
NON_MEMBER_RECIPIENT = Reply(550, "5.7.1", "Recipient domain is not a federation member; plain delivery refused by policy")
ONE_FROM = Reply(550, "5.7.1", "Message must have exactly one valid From address")
MAIL_LOOP = Reply(554, "5.4.6", "Too many Received headers: mail loop")
NOT_AUTH_IDENTITY = Reply(550, "5.7.1", "Authenticated users may only send as themselves")
SENDER_MISALIGNED = Reply(550, "5.7.1", "Envelope sender and From domains differ")
SENDER_NOT_SERVED = Reply(550, "5.7.1", "Sender domain is not served by this gateway")
OWN_DOMAIN_FROM_OUTSIDE = Reply(550, "5.7.1", "Mail from this domain must come from its own office")
SENDER_NOT_MEMBER = Reply(550, "5.7.1", "Sender domain is not a member of the federation")
MEMBER_TLS_REQUIRED = Reply(530, "5.7.10", "TLS is required between member gateways")
# a DNS failure while verifying is temporary (the member retries); a missing or bad signature is not
DKIM_TEMPERROR = Reply(451, "4.7.5", "No valid DKIM signature aligned with the From domain")
DKIM_NOT_ALIGNED = Reply(550, "5.7.20", "No valid DKIM signature aligned with the From domain")
MEMBER_PLAINTEXT = Reply(550, "5.7.1", "Plaintext between member domains is refused: message is not properly OpenPGP encrypted")
MALFORMED_MIME = Reply(550, "5.6.0", "Malformed MIME structure (unparseable or nested too deeply)")

# --- permanent: routes and keys (transform/stage.py, transform/routes.py) -----
NO_NON_MEMBER_ROUTE = Reply(550, "5.7.1", "no route to non-member domains is configured")
NO_SIGNING_KEY = Reply(550, "5.7.1", "sender domain has no signing key here")


def no_key_for(rcpt: str) -> Reply:
    """No key to encrypt to for a recipient at a member domain: never sent in clear."""
    return Reply(550, "5.7.1", f"no usable OpenPGP key for {rcpt}; refusing to send in clear")


def unusable_key(problem: str) -> Reply:
    """A key found but unusable (expired, revoked, ...): ``problem`` says which, never sent in clear."""
    return Reply(550, "5.7.1", f"{problem}; refusing to send in clear")


def no_local_key(rcpt: str) -> Reply:
    """Inbound mail for a local user who has no valid key here."""
    return Reply(550, "5.1.1", f"no valid key for local recipient {rcpt}")


# --- the bridge's submission listener (bridge/submission.py) -------------------
# read by a person in their mail client: each says what happened to the message
BRIDGE_SENT = Reply(250, "2.0.0", "OK: signed, encrypted and submitted")
BRIDGE_UPSTREAM_UNREACHABLE = Reply(451, "4.4.1", "The submission server cannot be reached; nothing was sent")
BRIDGE_UPSTREAM_INSECURE = Reply(
    451, "4.7.0", "The submission server offers no STARTTLS with a trusted certificate; nothing was sent")
BRIDGE_UPSTREAM_AUTH = Reply(451, "4.7.0", "The submission server refused the bridge's login; nothing was sent")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")


def _line(text: str, limit: int = 400) -> str:
    """``text`` as one printable ASCII line of at most ``limit`` characters (a reply line is 512 octets)."""
    one = " ".join(_UNPRINTABLE.sub("?", text).split())
    return one if len(one) <= limit else one[:limit - 3] + "..."


def bridge_not_identity(identity: str) -> Reply:
    """A MAIL FROM or a From that is not the address the bridge was set up with."""
    return Reply(550, "5.7.1", _line(f"This bridge sends only as {identity}"))


def bridge_no_key(address: str, why: str, temporary: bool = False) -> Reply:
    """A recipient without a usable key (``why``: the key lookup's words): never sent in clear."""
    text = why if address.lower() in why.lower() else f"{address}: {why}"
    return Reply(451, "4.7.1", _line(text)) if temporary else Reply(550, "5.7.1", _line(text))


def bridge_upstream_refused(code: int | None, status: str | None, text: str, sent: list[str]) -> Reply:
    """The submission server did not take a copy: its code and words (``text``), and the recipients
    whose copies it took before (``sent``), so that the person knows who already has it."""
    code = code if code is not None and 400 <= code < 600 else 451
    enhanced = status if status and status[0] == str(code)[0] else f"{str(code)[0]}.0.0"
    if status and text.startswith(status):
        text = text[len(status):].strip()
    note = f"; already sent to {', '.join(sent)}" if sent else "; nothing was sent"
    return Reply(code, enhanced, _line(f"The submission server refused: {text}{note}"))

# aiosmtpd's own reply lines (1.4.6) that lack an enhanced code or say too much,
# mapped to ours. The server rewrites them as they are pushed.
AIOSMTPD_REWRITES: dict[str, Reply] = {
    "500 Command line too long": LINE_TOO_LONG,
    "500 Error: bad syntax": BAD_SYNTAX,
    "500 Error: strict ASCII mode": BAD_CHARACTERS,
    "530 Must issue a STARTTLS command first": NEED_TLS,
    "552 Error: message size exceeds fixed maximum message size": TOO_BIG,
    "503 Error: need MAIL command": NEED_MAIL,
    "503 Error: nested MAIL command": NESTED_MAIL,
    "220 Ready to start TLS": TLS_READY,
    "221 Bye": BYE,
    "250 OK": NOOP_OK,
}

# aiosmtpd's other refusals (syntax errors, unknown commands, parameters) carry no
# enhanced code; they get one from their reply code (RFC 3463) as they are pushed.
_ENHANCED_FOR_CODE = {"454": "4.7.0", "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1",
                      "504": "5.5.4", "530": "5.7.0", "535": "5.7.8", "552": "5.3.4", "553": "5.1.3",
                      "555": "5.5.4"}
_NO_ENHANCED = re.compile(r"([45][0-9][0-9]) (?![2-5]\.[0-9]{1,3}\.[0-9]{1,3} )")


def with_enhanced_code(reply: str) -> str:
    """``reply`` with an enhanced status code after the reply code when a refusal has none."""
    m = _NO_ENHANCED.match(reply)
    if m is None:
        return reply
    code = m.group(1)
    return f"{code} {_ENHANCED_FOR_CODE.get(code, code[0] + '.0.0')} {reply[4:]}"


_WELL_FORMED = re.compile(r"[2-5][0-9][0-9] [2-5]\.[0-9]{1,3}\.[0-9]{1,3} [\x20-\x7e]*\Z")


def for_exception(exc: BaseException) -> Reply:
    """The reply for an error: its own for a SecureMailError, 451 for anything else.

    The detail goes to the log, never to the client.
    """
    if isinstance(exc, SecureMailError):
        log.info("refused: %s (%s)", exc.smtp_reply(), exc.detail or type(exc).__name__)
        return checked(exc.smtp_reply())
    log.error("unexpected error, answering %r", TEMP_FAILURE, exc_info=exc)
    return TEMP_FAILURE


def checked(reply: object) -> str:
    """``reply`` if it is one well-formed reply line with an enhanced code, else 451."""
    if isinstance(reply, str) and _WELL_FORMED.match(reply):
        return reply
    log.error("malformed reply %r replaced by %r", reply, TEMP_FAILURE)
    return TEMP_FAILURE
