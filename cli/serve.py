"""securemail serve: run the gateway in this process, or in several sharing the ports."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import click

CHILD_ENV = "SECUREMAIL_SERVE_CHILD"  # set in the serve processes that one serve spawns


@click.command()
@click.option("--processes", type=click.IntRange(1, 64),
              help="Serve processes sharing the ports and the queue (default: gateway.processes).")
@click.pass_obj
def serve(obj, processes):
    """Run the gateway: listeners and delivery workers until SIGTERM/SIGINT.

    With several processes (one per core), each runs listeners (SO_REUSEPORT)
    and delivery workers on the same database; SIGTERM stops them all.
    Logs go to stderr as [log] says (journald under systemd).
    """
    from securemail.app import open_gateway, open_metrics, setup_logging, share_metrics
    from securemail.config import GatewayConfig
    from securemail.procs.multi import serve_processes
    home = obj.core.home
    n = processes or GatewayConfig.load(home).processes
    child = os.environ.get(CHILD_ENV) == "1"
    parent = n > 1 and not child
    verbose = logging.getLogger().getEffectiveLevel() <= logging.DEBUG  # securemail -v
    setup_logging(home.path, "supervisor" if parent else "serve", level=logging.DEBUG if verbose else None)
    shared = share_metrics(home, fresh=not child)  # the top process starts the run's counts at zero
    if parent:
        command = [sys.executable, "-m", "cli.main", "--home", str(home.path), "serve",
                   "--processes", str(n)]
        if verbose:
            command.insert(3, "--verbose")
        sys.exit(serve_processes(command, n, {CHILD_ENV: "1"},
                                 metrics=open_metrics("supervisor") if shared else None))
    gw = open_gateway(home, reuse_port=n > 1 or child)
    asyncio.run(gw.run_until_signal())
