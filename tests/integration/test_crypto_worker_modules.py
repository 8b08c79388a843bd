"""A crypto worker loads neither the SMTP client (aiosmtplib) nor the HTTP client (aiohttp).

The worker's real entry (``roles/crypto.py`` ``main``) runs in a fresh interpreter on a
real gateway home: it builds its stage (``app.open_child(home, "crypto")``), says it is ready, and
returns when the serve process's side of its socket is closed. Each of the two libraries costs
a process several MiB; the worker needs neither to judge and transform a message (issue 11).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import REPO, federation

pytestmark = pytest.mark.timeout(300)

WORKER = """
import json, pickle, socket, sys
from securemail.procs import cpu
from securemail.roles import crypto
ours, parent = socket.socketpair()
parent.shutdown(socket.SHUT_WR)          # the serve process sends nothing: EOF after ready
code = crypto.main(sys.argv[1], ours.detach(), 30)
(size,) = cpu._HEAD.unpack(cpu._recv_exactly(parent, cpu._HEAD.size))
ready = pickle.loads(cpu._recv_exactly(parent, size))
loaded = {m: m in sys.modules for m in ("aiosmtplib", "aiohttp")}
import securemail.delivery.smtp, securemail.keys.wkdfetch  # noqa: E401 - the probe can see a load
later = {m: m in sys.modules for m in ("aiosmtplib", "aiohttp")}
print(json.dumps({"code": code, "ready": ready[0], "loaded": loaded, "later": later}))
"""


def test_a_crypto_worker_loads_neither_aiosmtplib_nor_aiohttp(tmp_path):
    _, homes = federation(tmp_path, domains=("interieur.gouv.fr",))
    home = homes["interieur.gouv.fr"].home
    run = subprocess.run([sys.executable, "-c", WORKER, str(home)], cwd=REPO, capture_output=True,
                         text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-4000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert (out["code"], out["ready"]) == (0, True), run.stderr[-4000:]  # the stage was built
    assert out["loaded"] == {"aiosmtplib": False, "aiohttp": False}
    assert out["later"] == {"aiosmtplib": True, "aiohttp": True}
