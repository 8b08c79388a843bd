"""Fixtures for the adversarial tests: the hostile suite's two real gateways and raw clients.

``gw`` is one federation (A = interieur.gouv.fr, J = justice.gouv.fr) started
in-process as ``securemail serve`` would; ``raw`` opens raw SMTP clients;
``record`` leak-checks a reply and adds it to the proof table; after every
test both gateways must still answer a normal session (``still_serving``).
"""

from tests.hostile.conftest import gw, proof, raw, record, still_serving  # noqa: F401 - fixtures
