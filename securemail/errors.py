"""The one root error type: every error knows its SMTP reply and whether it is temporary.

Modelled on maddy's exterrors: code, enhanced code, a short public message and a
temporary flag. ``str(err)`` is the public message and is safe to show to a
remote peer; ``err.detail`` is for the log (never plaintext or secrets).
"""

from __future__ import annotations


class Reply(str):
    """One complete single-line SMTP reply, typed: ``Reply(250, "2.0.0", "OK: queued")``.

    The named replies are in smtp/replies.py; the type is here, below it, so that an error can
    give its own (``smtp_reply``) and be built from one. It is its own wire line
    (``str(r) == "250 2.0.0 OK: queued"``), so the adapter pushes it as it is and a test compares
    it with what the client read; it also knows its parts and whether it is temporary.
    Whitespace in the text is collapsed: no CR or LF reaches the wire.
    """

    __slots__ = ()

    def __new__(cls, code: int, enhanced: str, text: str) -> Reply:
        return super().__new__(cls, f"{code} {enhanced} {' '.join(text.split())}")

    def __reduce__(self):  # rebuilt from its parts: verdicts cross from the crypto workers
        return Reply, (self.code, self.enhanced, self.text)

    @property
    def code(self) -> int:
        return int(self[:3])

    @property
    def enhanced(self) -> str:
        return self.split(" ", 2)[1]

    @property
    def text(self) -> str:
        return self.split(" ", 2)[2]

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500


class SecureMailError(Exception):
    """Root of every error securemail raises on purpose."""

    code: int = 451
    enhanced: str = "4.3.0"
    temporary: bool = True
    default_message: str = "temporary local problem, try again later"

    def __init__(self, message: str | None = None, *, detail: str | None = None,
                 reply: Reply | None = None, temporary: bool | None = None) -> None:
        """``reply``: a named reply of smtp/replies.py, this error's code, enhanced code and message."""
        if reply is not None:
            self.code, self.enhanced, message = reply.code, reply.enhanced, reply.text
            self.temporary = reply.temporary
        self.message = message or self.default_message
        self.detail = detail
        if temporary is not None:
            self.temporary = temporary
        super().__init__(self.message)

    def __reduce__(self):
        """Pickle with every attribute (code, detail, a subclass's own fields), whatever ``__init__`` takes:
        errors cross from the crypto worker processes to the SMTP process."""
        return _rebuild, (type(self), self.args, self.__dict__)

    def smtp_reply(self) -> Reply:
        """The full SMTP reply line: code, enhanced status code, public message (no CR/LF in it)."""
        return Reply(self.code, self.enhanced, self.message)


class Permanent(SecureMailError):
    code = 554
    enhanced = "5.0.0"
    temporary = False
    default_message = "permanent failure"


# --- configuration and usage -------------------------------------------------
class ConfigError(Permanent):
    enhanced = "5.3.5"
    default_message = "invalid configuration"


class UsageError(Permanent):
    default_message = "invalid usage"


# --- keys ----------------------------------------------------------------------
class KeyProblem(Permanent):
    enhanced = "5.7.0"
    default_message = "key problem"


class KeyRefused(KeyProblem):
    """A key that must not be imported: broken self-signature, weak algorithm, garbage."""
    default_message = "key refused"


class KeyNotFound(KeyProblem):
    enhanced = "5.1.1"
    default_message = "no key found"


class KeyUnusable(KeyProblem):
    """The key exists but cannot be used now: expired, revoked, no usable subkey."""
    default_message = "key unusable"


class KeyChanged(KeyProblem):
    """The key offered for an address is not the one pinned for it; a person must accept it first."""
    default_message = "recipient key changed"

    def __init__(self, address: str, pinned: str, offered: str) -> None:
        self.address, self.pinned, self.offered = address, pinned, offered
        super().__init__(
            f"the key for {address} changed: pinned {pinned}, now offered {offered}; nothing was "
            f"sent. Check the new key with its owner, then accept it: "
            f"securemail keys accept {address} {offered}")


class PassphraseError(KeyProblem):
    default_message = "wrong or missing passphrase"


# --- messages ------------------------------------------------------------------
class CryptoError(Permanent):
    enhanced = "5.7.0"
    default_message = "cryptographic failure"


class NotEncrypted(CryptoError):
    """The message is not a properly integrity-protected OpenPGP encrypted message."""
    code = 550
    enhanced = "5.7.1"
    default_message = "message is not encrypted"


class IntegrityError(CryptoError):
    """No MDC, MDC mismatch, AEAD failure, malformed packets."""
    default_message = "message integrity check failed"


class DecryptionFailed(CryptoError):
    default_message = "message cannot be decrypted with the available keys"


class LimitExceeded(CryptoError):
    code = 552
    enhanced = "5.3.4"
    default_message = "message exceeds a processing limit"


class MalformedMessage(Permanent):
    code = 550
    enhanced = "5.6.0"
    default_message = "malformed message"


# --- policy and transport -------------------------------------------------------
class PolicyRefusal(Permanent):
    code = 550
    enhanced = "5.7.1"
    default_message = "refused by policy"


class TemporaryFailure(SecureMailError):
    """Database down, disk full, key unreadable: 4xx, try again later."""


class LocateError(TemporaryFailure):
    """A member's key directory could not be asked or answered badly (network, TLS pin, HTTP status)."""
    default_message = "key directory unavailable"


class DeliveryError(SecureMailError):
    default_message = "delivery failed"


def _rebuild(cls: type, args: tuple, state: dict) -> SecureMailError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err
