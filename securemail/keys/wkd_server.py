"""The gateway's key directory over HTTPS (aiohttp): WKD lookups and authenticated key publication.

Routes (draft-koch-openpgp-webkey-service):

- ``GET /.well-known/openpgpkey/<domain>/hu/<hash>`` (advanced method) and
  ``GET /.well-known/openpgpkey/hu/<hash>`` (direct method, domain from Host):
  the binary key published for that address (``Directory.served``), else 404;
- ``GET /.well-known/openpgpkey/<domain>/policy`` (and the direct one): empty, 200
  for a domain served here;
- ``POST /securemail/v1/publish``: HTTP Basic auth with the submission
  credentials, then the proven request of keys/publish.py. Refusals answer
  401/403/400 with a short reason, store nothing and are audited
  (``key-publish-refused``). A wrong user and a wrong password get the same 401
  after the same scrypt; the failure budget of authlimit.py (shared with
  SMTP AUTH) answers 429 while a source or an account is locked.

The adapter is thin: the decisions are in keys/publish.py and keys/directory.py,
and the blocking work (database, OpenPGP, scrypt) runs off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Callable

import aiohttp
from aiohttp import web

from ..errors import SecureMailError
from .directory import Directory
from .publish import MAX_BODY, PATH, Nonces, PublishRefused, check_request
from .wkd import HASH_RE, PREFIX
from ..authlimit import AuthGuard

log = logging.getLogger(__name__)
KEY_TYPE = "application/octet-stream"
AUTH_FAILED = PublishRefused(401, "authentication required")
AUTH_LOCKED = PublishRefused(429, "too many authentication failures, try again later")


class WkdServer:
    """The HTTPS listener ``[listeners.wkd]``; ``start``/``stop`` are called by the Gateway."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext, directory: Directory,
                 nonces: Nonces, check_password: Callable[[str, str], bool], audit=None,
                 clock: Callable[[], float] = time.time, reuse_port: bool = False,
                 guard: AuthGuard | None = None) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.reuse_port = reuse_port  # several serve processes share the port
        self.directory, self.nonces, self.check_password = directory, nonces, check_password
        self.audit, self.clock = audit, clock
        self.guard = guard or AuthGuard(lambda user, pw: check_password(user, pw.decode("utf-8", "replace")))
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_get(f"{PREFIX}/hu/{{hu}}", self.key)
        app.router.add_get(f"{PREFIX}/policy", self.policy)
        app.router.add_get(f"{PREFIX}/{{domain}}/hu/{{hu}}", self.key)
        app.router.add_get(f"{PREFIX}/{{domain}}/policy", self.policy)
        app.router.add_post(PATH, self.publish)
        return app

    async def start(self) -> None:
        runner = web.AppRunner(self.app(), access_log=log)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port, ssl_context=self.tls,
                              reuse_port=self.reuse_port or None).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("key directory listening on https://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- WKD -----------------------------------------------------------------------------
    def _domain(self, request: web.Request) -> str:
        """The domain asked for: from the path (advanced method) or the Host header (direct)."""
        if "domain" in request.match_info:
            return request.match_info["domain"].lower().rstrip(".")
        return (request.url.host or "").lower().rstrip(".").removeprefix("openpgpkey.")

    async def policy(self, request: web.Request) -> web.Response:
        if self._domain(request) not in self.directory.domains:
            raise web.HTTPNotFound()
        return web.Response(body=b"", content_type="text/plain")

    async def key(self, request: web.Request) -> web.Response:
        domain, hu = self._domain(request), request.match_info["hu"]
        if domain not in self.directory.domains or not HASH_RE.fullmatch(hu):
            raise web.HTTPNotFound()
        try:
            data = await asyncio.to_thread(self._served, domain, hu)
        except SecureMailError as e:
            log.warning("key directory lookup failed: %s (%s)", e.message, e.detail)
            raise web.HTTPServiceUnavailable() from None
        if data is None:
            raise web.HTTPNotFound()
        return web.Response(body=data, content_type=KEY_TYPE)

    def _served(self, domain: str, hu: str) -> bytes | None:
        address = self.directory.address_for(domain, hu)
        return self.directory.served(address) if address else None

    # --- publication ---------------------------------------------------------------------
    async def publish(self, request: web.Request) -> web.Response:
        peer = request.remote or ""
        try:
            auth = aiohttp.BasicAuth.decode(request.headers.get("Authorization", ""))
        except ValueError:
            auth = None
        outcome = "failed" if auth is None else await self.guard.verify(peer, auth.login, auth.password.encode())
        if outcome != "ok":  # one answer whether the user exists or not (the check costs the same)
            return self._refused(AUTH_LOCKED if outcome == "locked" else AUTH_FAILED, peer, "")
        try:
            doc = await request.json()
        except ValueError:
            return self._refused(PublishRefused(400, "body must be JSON"), peer, auth.login)
        try:
            address, fpr, what = await asyncio.to_thread(self._publish, doc, auth.login)
        except PublishRefused as e:
            return self._refused(e, peer, auth.login)
        except SecureMailError as e:
            log.warning("publication by %s failed: %s (%s)", auth.login, e.message, e.detail)
            return web.json_response({"error": "temporary failure, try again later"}, status=503)
        return web.json_response({what: address, "fingerprint": fpr})

    def _publish(self, doc, user: str) -> tuple[str, str, str]:
        now = self.clock()
        address, key = check_request(doc, user, self.directory.domains, now)
        if key.state_at(now) == "revoked":
            self._known(address, key)
        if not self.nonces.claim(doc["nonce"], now):
            raise PublishRefused(403, "nonce already used (replayed request)")
        if key.state_at(now) == "revoked":
            self.directory.keys.add(key, source="publish", bind=None)  # merged; binds no address
            if self.audit is not None:
                self.audit.append("key-revocation-published", address=address,
                                  fingerprint=key.fingerprint)
            return address, key.fingerprint, "revoked"
        self.directory.publish(address, key, "publish")
        return address, key.fingerprint, "published"

    def _known(self, address: str, key) -> None:
        """A revocation is taken only for a key already published here for the address."""
        if not any(k.fingerprint == key.fingerprint for k in self.directory.keys.find(address)):
            raise PublishRefused(403, "revocation of a key not published here")

    def _refused(self, e: PublishRefused, peer: str, user: str) -> web.Response:
        log.info("publication refused (%s) for %r from %s", e.message, user, peer)
        if self.audit is not None:
            try:
                self.audit.append("key-publish-refused", reason=e.message, status=e.status,
                                  user_domain=user.rpartition("@")[2].lower(), peer=peer)
            except SecureMailError:
                log.warning("audit record key-publish-refused could not be written")
        headers = {"WWW-Authenticate": 'Basic realm="securemail"'} if e.status == 401 else None
        return web.json_response({"error": e.message}, status=e.status, headers=headers)
