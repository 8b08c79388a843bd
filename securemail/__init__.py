"""securemail: OpenPGP mail between government domains, always encrypted, signed and checked."""

__version__ = "0.1.0"
