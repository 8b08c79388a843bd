"""Cryptography behind one door: OpenPGP and DKIM, returning explicit result types."""
