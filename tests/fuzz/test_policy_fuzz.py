"""Fuzzing the decisions: address syntax, relay control at RCPT, facts.gather and the rule chain.

Envelopes are generated with hostile addresses (percent hacks, routes, quotes,
control and 8-bit characters, case games) and header sections (several From
headers, encoded words, folding, Received loops, garbage). Properties: nothing
raises; every refusal is a Verdict whose reply is one well-formed SMTP line
with a matching enhanced code; relay control never lets a stranger relay;
what ``split`` accepts is a plain dot-atom address.
"""

from __future__ import annotations

import re
import string

from hypothesis import given
from hypothesis import strategies as st

from securemail.envelope import Envelope
from securemail.mail.headers import HeaderBlockError
from securemail.policy import Verdict, rules
from securemail.policy.address import MEMBER, OTHER, OWN, classify, domain_of, split
from securemail.policy.encryption import EncryptionCheck
from securemail.policy.facts import OFFICE, REMOTE, Facts, Headers, gather
from securemail.policy.recipient import decide_rcpt
from securemail.smtp import replies

from . import fuzz, only_ours

OWN_D = ("interieur.gouv.fr",)
MEMBERS = frozenset({"justice.gouv.fr", "armees.gouv.fr"})
REPLY = re.compile(r"([45])[0-9]{2} ([45])\.[0-9]{1,3}\.[0-9]{1,3} [\x20-\x7e]+\Z")

_LOCAL = st.one_of(st.sampled_from(["alice", "Bruno.Petit", "u%ext.example.org", '"u@x"', "a!b", "", "x" * 70,
                                    "=?utf-8?b?YWxpY2U=?=", "alice\x00", "jos\u00e9", ".dot", "a..b"]),
                   st.text(alphabet=string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~.-\"@\\ ",
                           max_size=20))
_DOMAIN = st.one_of(st.sampled_from(["interieur.gouv.fr", "INTERIEUR.Gouv.FR", "justice.gouv.fr", "example.org",
                                     "[127.0.0.1]", "gouv.fr.", "-x.fr", "x" * 64 + ".fr", "", "int\u00e9rieur.fr"]),
                    st.text(alphabet=string.ascii_lowercase + string.digits + ".-[]:", max_size=30))
ADDRESS = st.one_of(st.builds(lambda l, d: f"{l}@{d}", _LOCAL, _DOMAIN),
                    st.builds(lambda d, l, d2: f"@{d}:{l}@{d2}", _DOMAIN, _LOCAL, _DOMAIN),
                    st.text(max_size=60))


def well_formed(v) -> None:
    assert isinstance(v, Verdict), v
    m = REPLY.match(v.reply)
    assert m and m.group(1) == m.group(2), v.reply  # 5xx with 5.x.x, 4xx with 4.x.x
    assert replies.checked(v.reply) == v.reply
    assert v.rule and v.reason is not None
    assert v.temporary == v.reply.startswith("4")


# --- addresses and RCPT --------------------------------------------------------------------------
@fuzz(300)
@given(ADDRESS)
def test_split_accepts_only_plain_dot_atom_addresses(address):
    parts = split(address)
    if parts is None:
        return
    local, domain = parts
    assert f"{local}@{domain}".lower() == address.lower()
    assert not set(local) & set('%!"\\ @\x00') and local.isascii() and local.isprintable()
    assert ".." not in local and not local.startswith(".") and not local.endswith(".")
    assert domain == domain.lower() and domain.isascii() and not domain.endswith(".")
    assert domain_of(address) == domain


@fuzz(300)
@given(ADDRESS, st.booleans(), st.sampled_from(["refuse", "allow-plain"]))
def test_relay_control_never_lets_a_stranger_relay(address, office, policy):
    v = decide_rcpt(address, office=office, own_domains=OWN_D, members=MEMBERS, non_member_policy=policy)
    if v is not None:
        well_formed(v)
        return
    local, domain = split(address)  # accepted: a plain address...
    cls = classify(domain, OWN_D, MEMBERS)
    if not office:
        assert cls == OWN  # ...and strangers and member gateways only reach our own domains
    if cls == OTHER:
        assert office and policy == "allow-plain"


# --- facts and the chain ----------------------------------------------------------------------------
_FROM_VALUE = st.one_of(
    st.sampled_from(["bruno@justice.gouv.fr", "Bruno <bruno@justice.gouv.fr>", "<alice@interieur.gouv.fr>",
                     '"alice@interieur.gouv.fr" <mallory@example.org>', "a@b.fr, c@d.fr", "Group:;",
                     "=?utf-8?b?YWxpY2VAaW50ZXJpZXVyLmdvdXYuZnIA?=@justice.gouv.fr", "undisclosed",
                     "=?utf-8?q?alice=40interieur.gouv.fr=00?= <bruno@justice.gouv.fr>", "<>", ""]),
    ADDRESS, st.text(max_size=80))


@st.composite
def header_section(draw) -> bytes:
    lines = [f"From: {f}" for f in draw(st.lists(_FROM_VALUE, min_size=0, max_size=3))]
    lines += ["Received: from x by y"] * draw(st.sampled_from([0, 1, 30, 31, 200]))
    lines += draw(st.lists(st.sampled_from(["Subject: x", " folded continuation", "\tfolded", "no colon here",
                                            "From : spaced@justice.gouv.fr", "FROM: upper@justice.gouv.fr",
                                            "X-\u00e9: 8bit", ":", ""]), max_size=4))
    draw(st.randoms()).shuffle(lines)
    head = "\r\n".join(lines).encode("utf-8", "surrogateescape")
    return head + draw(st.sampled_from([b"\r\n\r\nbody\r\n", b"", b"\r\n", b"\r\n\r\n"])) + draw(st.binary(max_size=40))


ENCRYPTION = st.one_of(st.builds(EncryptionCheck, st.booleans(), st.sampled_from(["pgp/mime", "inline", "none"]),
                                 st.text(max_size=20), st.tuples(st.text(max_size=16)), st.binary(max_size=8),
                                 st.booleans()),
                       st.just(EncryptionCheck(False, "none", "message cannot be parsed", malformed=True)))


@st.composite
def envelope(draw) -> Envelope:
    return Envelope(mail_from=draw(st.one_of(st.just(""), ADDRESS)),
                    rcpt_tos=tuple(draw(st.lists(ADDRESS, min_size=1, max_size=4))),
                    data=draw(st.one_of(header_section(), st.binary(max_size=300))),
                    peer_ip=draw(st.sampled_from(["127.0.0.1", "10.1.2.3", "::1", "garbage"])),
                    peer_port=25, tls=draw(st.booleans()), tls_peer_cert_der=None,
                    auth_user=draw(st.one_of(st.none(), ADDRESS)), helo="x", received_at=0.0)


@fuzz(300)
@given(envelope(), st.booleans(), ENCRYPTION, st.sampled_from(["pass", "fail", "none", "temperror", "permerror"]),
       st.frozensets(st.sampled_from(["justice.gouv.fr", "interieur.gouv.fr", "example.org", ""]), max_size=2),
       st.sampled_from(["refuse", "allow-plain"]))
def test_gather_and_the_chain_never_raise_and_answer_well(env, trusted, enc, dkim, dkim_domains, policy):
    try:
        f = gather(env, listener="relay", trusted=trusted, own_domains=OWN_D, members=MEMBERS, encryption=enc,
                   dkim_status=dkim, dkim_domains=dkim_domains, non_member_policy=policy)
    except HeaderBlockError as e:  # the one header-block parse refuses it whole, with a named reply
        assert e.smtp_reply() in (replies.HEADERS_TOO_BIG, replies.TOO_MANY_HEADERS, replies.MALFORMED_HEADERS)
        return
    assert f.origin in (OFFICE, REMOTE)
    assert set(f.recipients.values()) <= {OWN, MEMBER, OTHER}
    v = rules.evaluate(f)
    if v is None:
        # Accepted: one plain From address, and never plaintext from a member gateway.
        assert len(f.headers.from_addresses) == 1 and f.from_domain is not None
        if f.origin == REMOTE and (f.sender_class if f.mail_from else f.from_class) == MEMBER:
            assert f.tls and f.encryption.encrypted and f.dkim_aligned
        assert not f.encryption.malformed
    else:
        well_formed(v)
        assert v.rule in dict(rules.CHAIN)


@fuzz(200)
@given(st.builds(Facts, origin=st.sampled_from([OFFICE, REMOTE, "other"]), listener=st.text(max_size=5),
                 tls=st.booleans(), auth_user=st.one_of(st.none(), ADDRESS), mail_from=st.one_of(st.just(""), ADDRESS),
                 sender_domain=st.one_of(st.none(), _DOMAIN),
                 sender_class=st.sampled_from([None, OWN, MEMBER, OTHER, "weird"]),
                 headers=st.builds(Headers, st.lists(_FROM_VALUE, max_size=3).map(tuple), st.integers(0, 100)),
                 recipients=st.dictionaries(ADDRESS, st.sampled_from([OWN, MEMBER, OTHER]), max_size=3),
                 encryption=ENCRYPTION, dkim_status=st.text(max_size=10),
                 dkim_domains=st.frozensets(_DOMAIN, max_size=3), non_member_policy=st.text(max_size=12),
                 from_class=st.sampled_from([None, OWN, MEMBER, OTHER])))
def test_every_rule_is_total_over_arbitrary_facts(f):
    for _, rule in rules.CHAIN:
        v = rule(f)
        if v is not None:
            well_formed(v)
    v = rules.evaluate(f)
    assert v is None or v.rule in dict(rules.CHAIN)


@fuzz(300)
@given(st.binary(max_size=2000))
def test_headers_parse_never_raises(raw):
    h = only_ours(Headers.parse, raw)  # or refuses the header block whole (HeaderBlockError)
    if h is None:
        return
    assert h.received >= 0 and all(isinstance(v, str) for v in h.from_values)
    assert all(isinstance(a, str) for a in h.from_addresses)
