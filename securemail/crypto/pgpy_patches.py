"""Speed patches on parsed PGPy objects: values PGPy recomputes on every access, computed once.

No pgpy import: openpgp.py (the only module that imports PGPy) hands its parsed
key packets and key material here. Nothing in the pgpy package is modified;
each patch affects one object.
"""

from __future__ import annotations

_FROZEN: dict[type, type] = {}


def freeze_fingerprint(pkt) -> None:
    """Compute a key packet's fingerprint once.

    PGPy recomputes it (SHA-1 and pyasn1 OID encoding) on every access, seven
    times per encrypt+sign: 20% of the time at 4 KiB. Our key packets are not
    changed after parsing, so the packet gets a subclass whose fingerprint is
    the value computed now.
    """
    cls = type(pkt)
    if cls in _FROZEN.values():
        return
    value = pkt.fingerprint
    frozen = _FROZEN.get(cls)
    if frozen is None:
        frozen = _FROZEN[cls] = type(cls.__name__, (cls,), {
            "fingerprint": property(lambda self: self.__dict__["_sm_fingerprint"])})
    pkt.__dict__["_sm_fingerprint"] = value
    pkt.__class__ = frozen


def cache_rsa_private(materials) -> None:
    """PGPy rebuilds RSA private keys on every use (~80 ms); build each once (while unlocked)."""
    for km in materials:
        if km.__class__.__name__ == "RSAPriv" and "__privkey__" not in vars(km):
            built = type(km).__privkey__(km)
            km.__privkey__ = lambda built=built: built


def drop_rsa_private(materials) -> None:
    """Forget what cache_rsa_private built (when the key is locked again)."""
    for km in materials:
        vars(km).pop("__privkey__", None)
