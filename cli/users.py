"""securemail gateway user: the submission users of a gateway home."""

from __future__ import annotations

import click

from securemail.errors import UsageError

from .context import read_secret_file


@click.group()
def user() -> None:
    """Submission users (AUTH LOGIN/PLAIN after STARTTLS)."""


def _users(obj):
    from securemail.config import GatewayConfig
    from securemail.users import Users
    return Users(GatewayConfig.load(obj.core.home).passwords_file)


@user.command(name="add")
@click.argument("address")
@click.option("--password-file", required=True, type=click.Path(dir_okay=False))
@click.pass_obj
def user_add(obj, address, password_file):
    """Add ADDRESS (or change its password)."""
    _users(obj).set(address, read_secret_file(password_file) or "")
    click.echo(f"user {address} set")


@user.command(name="remove")
@click.argument("address")
@click.pass_obj
def user_remove(obj, address):
    if not _users(obj).remove(address):
        raise UsageError(f"no user {address}")
    click.echo(f"user {address} removed")


@user.command(name="list")
@click.pass_obj
def user_list(obj):
    for name in _users(obj).names():
        click.echo(name)
