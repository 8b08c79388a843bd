"""The bridge of a person's home (``securemail bridge serve``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

from ..crypto.keys import Key
from ..errors import ConfigError

from .home import Core, open_home, open_locator

if TYPE_CHECKING:
    from ..bridge.service import Bridge


def open_bridge(home_dir=None, *, passphrase: str | None = None, allow_remote: bool = False,
                clock: Callable[[], float] = time.time) -> Bridge:
    """The bridge of a person's home (``bridge init``): its listeners checked (loopback unless
    ``allow_remote``), the owner's secret keys unlocked once, for the life of the bridge."""
    import asyncio
    import contextlib
    import functools
    import ssl
    from concurrent.futures import ThreadPoolExecutor

    from pymap.concurrent import Event

    from ..authlimit import AuthGuard
    from ..bridge.cache import ViewCache
    from ..bridge.folders import Folders
    from ..bridge.imap import BridgeIMAPConfig, Login
    from ..bridge.mailbox import Parts
    from ..bridge.loader import header_of, shown_with_structure
    from ..bridge.readers import Readers
    from ..bridge.seal import sealer
    from ..bridge.service import Bridge
    from ..bridge.settings import BridgeSettings, check_listeners
    from ..bridge.upstream import Endpoint, Upstream
    from ..bridge.view import Viewer
    from ..config import AuthBudget
    from ..crypto.tls import load_server_context
    from ..mail.outgoing import signing_key
    core = open_home(home_dir, clock)
    settings = BridgeSettings.load(core.home.path)
    check_listeners(settings, allow_remote)
    secrets = contextlib.ExitStack()
    owner = signing_key(core.keys, settings.address, clock())
    secrets.enter_context(owner.pgp.unlocked(passphrase))
    unlocked = [owner] + _unlock_others(secrets, core.keys.secret_keys(), owner, passphrase)
    try:
        upstream_tls = ssl.create_default_context(cafile=str(settings.cafile) if settings.cafile else None)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cannot load the upstream CA file {settings.cafile}: {e}") from None
    upstream = Upstream(Endpoint(*settings.imap, settings.implicit_tls("imap"), upstream_tls, settings.username,
                                 settings.read_secret(settings.upstream_password_file)))
    crypto = ThreadPoolExecutor(1, thread_name_prefix="bridge-crypto")

    def run_cpu(fn, *args):
        return asyncio.get_running_loop().run_in_executor(crypto, fn, *args)
    work = functools.partial(shown_with_structure, Viewer(unlocked, core.keys.lookup).show)
    # forked now: the keys are unlocked, and no thread or listener exists yet
    readers = Readers(work, settings.readers, fallback=lambda raw: run_cpu(work, raw),
                      after_fork=lambda: core.engine.dispose(close=False))
    headers = ViewCache(settings.cache_bytes // 4)
    cache = ViewCache(settings.cache_bytes, on_evict=lambda key, content: headers.put(key, *header_of(content)))
    parts = Parts(upstream, readers.submit, sealer(owner, settings.address, clock), cache, headers, run_cpu)
    folders = Folders(parts, Event.for_asyncio)
    imap_config = BridgeIMAPConfig(*settings.imap_listen, load_server_context(settings.cert, settings.key))
    login = Login(settings.local_username, settings.read_secret(settings.local_password_file),
                  lambda check: AuthGuard(check, AuthBudget(), on_lock=lambda **f: core.audit.append(
                      "auth-locked", **f)), imap_config, folders)
    submission = _bridge_submission(core, settings, owner, imap_config.ssl_context, allow_remote, clock)
    return Bridge(address=settings.address, login=login, imap_config=imap_config, folders=folders,
                  upstream=upstream, crypto=crypto, secrets=secrets, submission=submission, close=core.close,
                  readers=readers)


def _bridge_submission(core: Core, settings, owner: Key, tls, allow_remote: bool, clock):
    """The bridge's SMTP side (bridge/submission.py), from the same settings."""
    from ..bridge.submission import Submission, key_lookup
    from ..bridge.submission_upstream import Upstream as Submit
    submit = Submit(*settings.smtp, settings.username, settings.read_secret(settings.upstream_password_file),
                    str(settings.cafile) if settings.cafile else None)
    return Submission(keys=core.keys, identity=settings.address, signing_key=owner, upstream=submit,
                      tls_context=tls, local_username=settings.local_username,
                      local_password=settings.read_secret(settings.local_password_file),
                      lookup=key_lookup(core.keys, open_locator(core), clock), listen_host=settings.smtp_listen[0],
                      listen_port=settings.smtp_listen[1], allow_remote=allow_remote, clock=clock)


def _unlock_others(stack, keys: list[Key], owner: Key, passphrase: str | None) -> list[Key]:
    """The home's other secret keys that open with the same passphrase (older keys still decrypt)."""
    from ..errors import PassphraseError
    out = []
    for k in keys:
        if k.fingerprint == owner.fingerprint:
            continue
        try:
            stack.enter_context(k.pgp.unlocked(passphrase))
        except PassphraseError:
            continue
        out.append(k)
    return out
