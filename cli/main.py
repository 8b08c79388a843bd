"""The securemail command: one click group per file, each calling the library only."""

from __future__ import annotations

import logging
import sys

import click

from securemail.errors import SecureMailError, UsageError

from .context import Context


class Group(click.Group):
    """Turns our errors into one clear line and an exit status; never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UsageError as e:
            click.echo(f"securemail: {e.message}", err=True)
            sys.exit(2)
        except SecureMailError as e:
            click.echo(f"securemail: {e.message}", err=True)
            sys.exit(1)


@click.group(cls=Group)
@click.option("--home", type=click.Path(file_okay=False), envvar="SECUREMAIL_HOME",
              help="Home directory (config, database, mail). Default: $SECUREMAIL_HOME or ~/.securemail.")
@click.option("-v", "--verbose", is_flag=True, help="Log details to stderr.")
@click.version_option(package_name="securemail")
@click.pass_context
def cli(ctx: click.Context, home: str | None, verbose: bool) -> None:
    """securemail: OpenPGP mail between government domains, always encrypted and signed."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = Context(home)
    ctx.call_on_close(ctx.obj.close)


def _register() -> None:
    from . import audit, bridge, directory, federation, gateway, keys, queue, read, send, serve
    for command in (keys.keys, send.send, read.read, federation.federation, directory.directory,
                    gateway.gateway, serve.serve, queue.queue, audit.audit, bridge.bridge):
        cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="securemail")


if __name__ == "__main__":
    main()
