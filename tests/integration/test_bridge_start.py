"""``bridge serve`` when one of its local ports is held by another program: a second bridge, or
another mail bridge (Proton Mail Bridge listens on 1143 and 1025 too). The person gets one clear
line naming the listener and what to do, exit 1, no traceback; the program that holds the port
is left alone. (It was a traceback from asyncio's bind.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from bench.bridge import ALICE, make_homes
from tests.support import REPO, Dovecot, require_dovecot
from tests.support.bridge import bridge_home

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    require_dovecot()
    tmp = tmp_path_factory.mktemp("start")
    os.chmod(tmp, 0o755)
    make_homes(tmp)
    dovecot = Dovecot(tmp / "dv", [ALICE], fsync=False).start()
    try:
        yield bridge_home(tmp, dovecot, ALICE, [tmp / "alice.asc", tmp / "sender.asc"])
    finally:
        dovecot.stop()


@pytest.mark.parametrize("listener", ["imap", "smtp"])
def test_a_port_held_by_another_program_is_said_in_one_line(home, listener):
    path, creds = home
    port = creds[listener]["port"]
    with socket.create_server(("127.0.0.1", port)):   # the other program, listening
        done = subprocess.run([sys.executable, "-m", "cli.main", "--home", str(path), "bridge", "serve"],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        line = f"securemail: the bridge's {listener.upper()} listener 127.0.0.1:{port} cannot listen: " \
               "Address already in use"
        assert line in done.stderr, done.stderr
        assert f"[local] {listener}" in done.stderr
        assert "ended (exit" not in done.stderr   # its readers stopped by the bridge, not found dead
        assert "stop with SIGTERM" not in done.stderr   # never said to be serving
        with socket.create_connection(("127.0.0.1", port)):   # the other program still listens
            pass
