"""Status headers and the signer binding as pure functions: nobody's status passes, valid means bound."""

from __future__ import annotations

import pytest

from securemail.transform.hops import RelayHop, parse_hop, relay_hop
from securemail.transform.status import inner_from, securemail_status, without_status
from securemail.mail.signer import SIGNER_MISMATCH, check_sender, from_address, uid_address

ALICE_UIDS = ("Alice Martin <alice@interieur.gouv.fr>",)
MINISTRE = "Le Ministre <ministre@justice.gouv.fr>"


@pytest.mark.parametrize("uid, address", [
    ("alice@interieur.gouv.fr", "alice@interieur.gouv.fr"),
    ("Alice Martin <Alice@Interieur.gouv.fr>", "alice@interieur.gouv.fr"),
    ('"ministre@justice.gouv.fr" <alice@interieur.gouv.fr>', None),   # display name faking an address
    ("ministre@justice.gouv.fr <alice@interieur.gouv.fr>", None),
    ("alice@interieur.gouv.fr, ministre@justice.gouv.fr", None),       # several addresses
    ("<alice@interieur.gouv.fr> <ministre@justice.gouv.fr>", None),
    ("Alice Martin", None),
    ("", None),
])
def test_a_user_id_binds_exactly_one_address_or_none(uid, address):
    assert uid_address(uid) == address


def test_from_address_is_the_single_addr_spec_in_lower_case():
    assert from_address('"alice@interieur.gouv.fr" <Ministre@Justice.gouv.fr>') == "ministre@justice.gouv.fr"
    assert from_address("a@x.fr, b@y.fr") is None
    assert from_address("") is None and from_address(None) is None
    assert from_address("not an address") is None


def test_valid_only_when_a_user_id_of_the_signer_is_the_from_shown():
    ok = check_sender("valid", ALICE_UIDS, "ALICE@interieur.gouv.fr", "alice@interieur.gouv.fr")
    assert ok.signature == "valid" and not ok.from_mismatch
    bad = check_sender("valid", ALICE_UIDS, MINISTRE, "alice@interieur.gouv.fr")
    assert bad.signature == SIGNER_MISMATCH and bad.from_mismatch
    assert bad.signer_addresses == ("alice@interieur.gouv.fr",) and bad.shown == "ministre@justice.gouv.fr"
    # a user ID that names the minister in its display name does not speak for the minister
    faked = check_sender("valid", ('"ministre@justice.gouv.fr" <alice@interieur.gouv.fr>',), MINISTRE, MINISTRE)
    assert faked.signature == SIGNER_MISMATCH and not faked.from_mismatch
    several = check_sender("valid", ("alice@interieur.gouv.fr, ministre@justice.gouv.fr",), MINISTRE, MINISTRE)
    assert several.signature == SIGNER_MISMATCH


def test_other_statuses_stay_and_a_domain_key_speaks_for_its_domain_only():
    assert check_sender("invalid", ALICE_UIDS, MINISTRE, MINISTRE).signature == "invalid"
    assert check_sender("unknown-key", (), MINISTRE, MINISTRE).signature == "unknown-key"
    justice = lambda d: d == "justice.gouv.fr"  # noqa: E731
    assert check_sender("valid", (), MINISTRE, MINISTRE, justice).signature == "valid"
    assert check_sender("valid", (), "ceo@culture.gouv.fr", "ceo@culture.gouv.fr", justice).signature == SIGNER_MISMATCH
    # the same address with another display name is not a mismatch
    assert not check_sender("valid", ALICE_UIDS, "Chef <alice@interieur.gouv.fr>",
                            "alice@interieur.gouv.fr").from_mismatch


FORGED = (b"Authentication-Results: gw.interieur.gouv.fr; dkim=pass\r\n"
          b"From: Le Ministre <ministre@justice.gouv.fr>\r\n"
          b"Securemail-Status: encrypted=yes;\r\n signature=valid; signer=AAAA\r\n"
          b"Subject: s\r\n\r\nSecuremail-Status: in the body stays\r\n")


def test_status_fields_leave_the_header_block_with_their_continuation_lines():
    out = without_status(FORGED)
    assert out == (b"From: Le Ministre <ministre@justice.gouv.fr>\r\nSubject: s\r\n\r\n"
                   b"Securemail-Status: in the body stays\r\n")
    lf = without_status(FORGED.replace(b"\r\n", b"\n"))
    assert lf == out.replace(b"\r\n", b"\n")
    assert without_status(b"From: a@x.fr\r\n\r\nbody") is None
    assert without_status(b"plain text first\nSecuremail-Status: x\n") is None  # not a header block
    assert inner_from(FORGED) == "Le Ministre <ministre@justice.gouv.fr>"


def test_securemail_status_says_signer_mismatch_with_the_signers_addresses():
    class Sig:
        status, signer = "valid", "F" * 40
    check = check_sender("valid", ALICE_UIDS + ("x <evil;signature=valid@x.fr>",), MINISTRE,
                         "alice@interieur.gouv.fr")
    name, value = securemail_status(True, check, Sig(), decrypted=True, removed=True)
    assert name == "Securemail-Status"
    assert value == (f"encrypted=yes; signature=signer-mismatch; signer={'F' * 40}; "
                     "signer-addresses=alice@interieur.gouv.fr; warning=from-mismatch,sender-status-removed")
    assert securemail_status(True, None, None, decrypted=False)[1] == "encrypted=yes; signature=unchecked"


def test_the_office_hop_that_decrypts_at_delivery_round_trips():
    hop = relay_hop("127.0.0.1", 2525, decrypt=True)
    assert str(hop) == "relay-decrypt:127.0.0.1:2525"
    assert parse_hop(str(hop)) == RelayHop("127.0.0.1", 2525, True)
    assert parse_hop(str(relay_hop("127.0.0.1", 2525))) == RelayHop("127.0.0.1", 2525, False)


@pytest.mark.parametrize("value", [
    "Bruno Petit <bruno@justice.gouv.fr>", '"Martin, Alice" <a@x.fr>', "a@x.fr", " A <A@X.FR> ",
    "a@x.fr, b@y.fr", "Bob <b@y.fr>, Carol <c@z.fr>", "Le Ministre, <alice@x.fr>",
    '"ministre@j.fr" <alice@x.fr>', "=?utf-8?q?=C3=89mile?= <e@x.fr>", "(comment) a@x.fr",
    "a@x.fr (Alice)", "<a@x.fr>", "x <a@b@c.fr>", "Le Ministre <ministre@j.fr> <alice@x.fr>"])
def test_the_fast_from_reading_agrees_with_the_header_parser(value):
    from email import policy
    addrs = policy.default.header_factory("from", value).addresses
    expected = addrs[0].addr_spec.lower() if len(addrs) == 1 and addrs[0].username and addrs[0].domain else None
    assert from_address(value) == expected
