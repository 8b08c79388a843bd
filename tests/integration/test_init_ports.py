"""Two gateways on one host: `gateway init` moves a listener left at its default off a port already in
use (and says so), and `gateway check` reports a port that is in use or shared by two listeners."""

from __future__ import annotations

import re
import socket

import pytest

from securemail.errors import UsageError
from securemail.admin.ports import choose
from tests.conftest import run_cli

from tests.support import GatewayHome, Serve, ok, wait_listening

A, B = "interieur.gouv.fr", "justice.gouv.fr"


def listeners(res) -> dict[str, int]:
    """{name: port} from the `listener NAME: HOST:PORT` lines of `gateway init`."""
    found = dict(re.findall(r"(?m)^listener (\w+): 127\.0\.0\.1:(\d+)", res.stdout))
    assert set(found) == {"relay", "submission", "wkd", "metrics"}, res.stdout
    return {name: int(port) for name, port in found.items()}


def test_second_init_on_a_host_picks_other_free_ports(tmp_path):
    first = ok(run_cli(tmp_path / "gw-a", "gateway", "init", "--domain", A), "gateway init A")
    ports_a = listeners(first)
    g = GatewayHome(A, tmp_path / "gw-a", ports_a["relay"], ports_a["submission"])
    serve = Serve(g).start()
    try:
        wait_listening(ports_a["wkd"], 60, alive=serve._alive)
        wait_listening(ports_a["metrics"], 60, alive=serve._alive)
        second = ok(run_cli(tmp_path / "gw-b", "gateway", "init", "--domain", B), "gateway init B")
        ports_b = listeners(second)
        for name in ("relay", "submission", "wkd", "metrics"):
            assert ports_b[name] != ports_a[name], second.stdout
            assert re.search(rf"(?m)^listener {name}: 127\.0\.0\.1:{ports_b[name]}  \(default "
                             rf"127\.0\.0\.1:\d+ in use by another process; chose 127\.0\.0\.1:{ports_b[name]}\)$",
                             second.stdout), second.stdout
        cfg = (tmp_path / "gw-b" / "securemail.toml").read_text()
        assert f'listen = "127.0.0.1:{ports_b["wkd"]}"' in cfg
        assert f'"127.0.0.1:{ports_a["wkd"]}"' not in cfg
        res = run_cli(tmp_path / "gw-b", "gateway", "check")
        assert res.exit_code == 0, res.output
        assert len(re.findall(r"(?m)^ok listener ", res.stdout)) == 4, res.stdout
        # the first gateway's own ports are held (by its running serve): check says so
        res = run_cli(tmp_path / "gw-a", "gateway", "check")
        assert res.exit_code == 1 and f"COLLISION listener wkd 127.0.0.1:{ports_a['wkd']}: " \
            f"127.0.0.1:{ports_a['wkd']} is in use" in res.stdout, res.output
    finally:
        serve.stop()


def test_an_explicit_port_is_kept_with_a_note(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        res = ok(run_cli(tmp_path / "gw", "gateway", "init", "--domain", A, "--wkd", f"127.0.0.1:{port}"))
    assert f"listener wkd: 127.0.0.1:{port}  (127.0.0.1:{port} is in use by another process; " \
           "kept as given)" in res.stdout


def test_check_reports_a_taken_port_and_a_shared_one(tmp_path):
    home = tmp_path / "gw"
    ports = listeners(ok(run_cli(home, "gateway", "init", "--domain", A), "gateway init"))
    with socket.socket() as held:
        held.bind(("127.0.0.1", ports["submission"]))
        held.listen()
        res = run_cli(home, "gateway", "check")
    assert res.exit_code == 1, res.output
    assert f"COLLISION listener submission 127.0.0.1:{ports['submission']}: 127.0.0.1:{ports['submission']} " \
           "is in use" in res.stdout
    assert f"ok listener relay 127.0.0.1:{ports['relay']}" in res.stdout
    res = run_cli(home, "gateway", "check")                     # released: fine again
    assert res.exit_code == 0 and "COLLISION" not in res.stdout, res.output
    cfg = home / "securemail.toml"
    cfg.write_text(cfg.read_text().replace(f'"127.0.0.1:{ports["wkd"]}"', f'"127.0.0.1:{ports["relay"]}"'))
    res = run_cli(home, "gateway", "check")
    assert res.exit_code == 1, res.output
    assert f"COLLISION listener wkd 127.0.0.1:{ports['relay']}: port {ports['relay']} also used by " \
           "[listeners.relay]" in res.stdout


def test_choose_is_a_pure_decision():
    busy = {2525, 8443, 8444}.__contains__
    got = choose([("relay", "h", 2525), ("submission", "h", 2526), ("wkd", "h", 8443)],
                 {"relay", "wkd"}, lambda host, port: busy(port))
    assert [(c.name, c.port) for c in got] == [("relay", 2527), ("submission", 2526), ("wkd", 8445)]
    assert got[0].note == "default h:2525 in use by another process; chose h:2527" and got[1].note == ""
    same = choose([("relay", "h", 5870), ("submission", "h", 5870)], {"submission"}, lambda h, p: False)
    assert same[1].port == 5871 and "taken by another listener here" in same[1].note
    with pytest.raises(UsageError, match="two listeners on port 25"):
        choose([("relay", "h", 25), ("submission", "h", 25)], set(), lambda h, p: False)
