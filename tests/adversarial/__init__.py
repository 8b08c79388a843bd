"""Adversarial tests: one module per threat agent of docs/security-target.md.

Each module drives real gateways on loopback (real listeners, real TLS, real
OpenPGP peers where they matter) the way that agent would, and asserts the
promise (nothing readable crosses between member domains; what is shown as
verified is true), not the implementation. The two gateways and the raw SMTP
client are the hostile suite's (tests/hostile): interieur.gouv.fr (A, the
gateway under attack) and justice.gouv.fr (J).
"""
