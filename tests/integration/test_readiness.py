"""/healthz, /readyz and /metrics of the metrics listener (procs/monitor.py) over real HTTP on loopback:
ready when every probe passes, 503 with a JSON reason naming what is not (a database that does not
answer, a schema without a table, no manifest, an expired one, a manifest without our domain, no key)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import shutil
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest

from securemail.app import open_home
from securemail.manifest_source import ManifestSource
from securemail.rotation import DomainKeys, OwnKeys, Rotation
from securemail.config import GatewayConfig
from securemail.db import make_engine

from securemail.home import Home
from securemail.metrics import Metrics
from securemail.procs.health import Readiness
from securemail.procs.monitor import MonitorServer
from securemail.procs.scrape import StateGauges
from tests.support import federation, free_port

A = "interieur.gouv.fr"


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ready")
    _, homes = federation(tmp, (A,))
    home = homes[A].home
    config = GatewayConfig.load(Home(home))
    core = open_home(home)
    rotation = Rotation(OwnKeys(config), ManifestSource(config.federation_manifest))
    yield config, core, DomainKeys(rotation, core.keys).check(config.domains)
    core.close()


def ask(readiness: Readiness, *collectors, paths=("/readyz",)) -> list[tuple[int, object]]:
    """GET each of ``paths`` from a MonitorServer on a free loopback port: (status, JSON or text)."""
    async def run():
        port = free_port()
        server = MonitorServer("127.0.0.1", port, Metrics("serve"), readiness, *collectors)
        await server.start()
        try:
            async with aiohttp.ClientSession() as s:
                out = []
                for path in paths:
                    async with s.get(f"http://127.0.0.1:{port}{path}") as r:
                        out.append((r.status, await (r.text() if path == "/metrics" else r.json())))
                return out
        finally:
            await server.stop()
    return asyncio.run(run())


def readiness(gw, **overrides) -> Readiness:
    config, core, keys = gw
    parts = dict(engine=core.engine, manifest=ManifestSource(config.federation_manifest), domains=config.domains,
                 domain_keys=keys)
    return Readiness(**{**parts, **overrides})


def test_ready_alive_and_scraped(gw):
    config, core, keys = gw
    state = StateGauges(engine=core.engine, manifest=ManifestSource(config.federation_manifest),
                        certificate=config.tls_cert, domain_keys=keys)
    (ready, body), (alive, hz), (scraped, text) = ask(readiness(gw), state, paths=("/readyz", "/healthz", "/metrics"))
    assert ready == 200 and body["ready"] is True and body["reason"] == "", body
    assert [c["name"] for c in body["checks"]] == ["database", "schema", "keys", "manifest"]
    assert alive == 200 and hz == {"alive": True}
    assert scraped == 200
    for line in ("securemail_database_up 1.0", "securemail_manifest_serial 1.0",
                 'securemail_queue_deliveries{state="queued"} 0.0', "securemail_processes{role=\"serve\"} 1.0"):
        assert line in text, text
    assert 'securemail_tls_certificate_expiry_seconds{file="cert.pem"}' in text
    assert f'securemail_openpgp_key_expiry_seconds{{domain="{A}"}}' in text


def test_database_down(gw):
    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/securemail")
    try:
        config, core, keys = gw
        state = StateGauges(engine=engine, manifest=ManifestSource(config.federation_manifest),
                            certificate=config.tls_cert, domain_keys=keys)
        (status, body), (_, text) = ask(readiness(gw, engine=engine), state, paths=("/readyz", "/metrics"))
    finally:
        engine.dispose()
    assert status == 503 and body["ready"] is False
    assert body["reason"].startswith("database: does not answer (database error: OperationalError"), body
    assert "postgres@" not in str(body)                               # no URL, no user
    assert "securemail_database_up 0.0" in text and "securemail_queue_deliveries" not in text


def test_schema_missing_a_table(gw, tmp_path):
    config, core, _ = gw
    copy = tmp_path / "old.db"
    shutil.copy(Path(config.home) / "securemail.db", copy)
    with sqlite3.connect(copy) as db:
        db.execute("DROP TABLE deliveries")
    engine = make_engine(f"sqlite:///{copy}")
    try:
        ((status, body),) = ask(readiness(gw, engine=engine))
    finally:
        engine.dispose()
    assert status == 503 and body["reason"] == "schema: missing table deliveries", body


def test_no_manifest(gw, tmp_path):
    ((status, body),) = ask(readiness(gw, manifest=ManifestSource(tmp_path / "federation.json")))
    assert status == 503 and body["reason"] == "manifest: none installed (securemail federation install)", body


def test_manifest_expired_or_without_our_domain(gw):
    config, _, keys = gw
    installed = ManifestSource(config.federation_manifest)()
    expired = dataclasses.replace(installed, expires="2020-01-01T00:00:00+00:00")
    ((status, body),) = ask(readiness(gw, manifest=lambda: expired))
    assert status == 503 and body["reason"] == "manifest: serial 1 expired at 2020-01-01T00:00:00+00:00", body
    later = dataclasses.replace(installed, expires=datetime.datetime.fromtimestamp(
        time.time() + 86400, datetime.timezone.utc).isoformat(timespec="seconds"))
    ((status, body),) = ask(readiness(gw, manifest=lambda: later))
    assert status == 200 and "expires at" in body["checks"][3]["detail"], body
    ((status, body),) = ask(readiness(gw, domains=("justice.gouv.fr",), domain_keys={"justice.gouv.fr": keys[A]}))
    assert status == 503 and body["reason"] == "manifest: serial 1 does not list justice.gouv.fr", body


def test_no_domain_key(gw):
    ((status, body),) = ask(readiness(gw, domain_keys={}))
    assert status == 503 and body["reason"] == f"keys: no secret key loaded for {A}", body
