"""Test support shared by tests/, proof (tests/proof) and bench/: one copy of each helper.

commands  the CLI in-process (``run_cli``, ``ok``, ``cli``), ``REPO``
ports     ``free_port``
waits     ``wait_for``, ``wait_listening``, ``terminate``
dovecot   ``Dovecot`` (a private LMTP and IMAP server, configured from examples/office's template),
          ``dovecot_missing``, ``require_dovecot``
office    ``office_module`` (examples/office as the package ``office``)
prometheus ``Prometheus`` (a private Prometheus scraping given targets), ``require_prometheus``
pg        ``PG_URL``, ``pg_available``, ``require_pg``, fresh schemas (``pg_schemas``, ``pg_schema``)
homes     ``GatewayHome`` (its relay, submission and key directory ports), ``federation``,
          ``person``, ``second_node``
running   ``Running`` (in-process), ``Serve`` (``securemail serve``), ``office_send``,
          ``queue_rows``, ``audit_records``
https     ``StaticHTTPS`` (a real HTTPS server with its own certificate and pin, serving set bytes)
corpus    the interop corpus: ../shared/corpus, or one regenerated from gpg and sqop
          (``python -m tests.support.corpus OUTDIR``); imported as a module, not re-exported

Every name is re-exported here (``from tests.support import federation, Running``).
Nothing imports pytest at import time: the benchmark uses these without it.
"""

from .commands import REPO, cli, ok, run_cli
from .dovecot import Dovecot, dovecot_missing, require_dovecot
from .https import StaticHTTPS
from .office import office_module
from .homes import DOMAINS, FAST, OFFICE, GatewayHome, federation, init_home, install_manifest, person, second_node
from .pg import PG_URL, fresh_schemas, pg_available, pg_schema, pg_schemas, require_pg, schema_url
from .ports import free_port
from .prometheus import Prometheus, require_prometheus
from .running import Running, Serve, audit_records, office_send, queue_rows
from .waits import terminate, wait_for, wait_listening

__all__ = ["REPO", "cli", "ok", "run_cli", "DOMAINS", "FAST", "OFFICE", "GatewayHome", "federation",
           "init_home", "install_manifest", "person", "second_node", "PG_URL", "fresh_schemas",
           "pg_available", "pg_schema", "pg_schemas", "require_pg", "schema_url", "free_port", "Running",
           "Serve", "audit_records", "office_send", "queue_rows", "terminate", "wait_for", "wait_listening",
           "Dovecot", "dovecot_missing", "require_dovecot", "StaticHTTPS", "Prometheus", "require_prometheus",
           "office_module"]
