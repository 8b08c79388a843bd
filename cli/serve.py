"""securemail serve: run the gateway in this process, or in several sharing the ports."""

from __future__ import annotations

import asyncio
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
    """
    from securemail.app import open_gateway
    from securemail.config import GatewayConfig
    from securemail.procs.multi import serve_processes
    n = processes or GatewayConfig.load(obj.core.home).processes
    child = os.environ.get(CHILD_ENV) == "1"
    if n > 1 and not child:
        command = [sys.executable, "-m", "cli.main", "--home", str(obj.core.home.path), "serve",
                   "--processes", str(n)]
        sys.exit(serve_processes(command, n, {CHILD_ENV: "1"}))
    gw = open_gateway(obj.core.home, reuse_port=n > 1 or child)
    asyncio.run(gw.run_until_signal())
