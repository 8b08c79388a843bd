"""The metrics registry (securemail/metrics.py): names, labels, bounded domains, and several processes
summed through prometheus-client's multiprocess mode."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from prometheus_client.parser import text_string_to_metric_families

from pathlib import Path

import pytest

from securemail.config import GatewayConfig
from securemail.errors import ConfigError
from securemail.metrics import OTHER, REASON_CLASS, Metrics, reason_class
from securemail.policy import recipient, rules
from tests.support import REPO


def samples(text: bytes) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_the_metrics_listener_is_on_by_default_and_none_turns_it_off():
    def metrics(**listeners):
        data = {"gateway": {"domains": ["office.test"]}, "listeners": listeners}
        li = GatewayConfig.from_dict(data, Path("/nonexistent")).listener("metrics")
        return li and (li.host, li.port)
    assert metrics() == ("127.0.0.1", 9464)
    assert metrics(metrics={"listen": "10.0.0.5:9100"}) == ("10.0.0.5", 9100)
    assert metrics(metrics={"listen": "none"}) is None
    with pytest.raises(ConfigError, match="listeners.metrics.listen must be HOST:PORT"):
        metrics(metrics={"listen": "9464"})


def test_every_rule_has_a_reason_class():
    names = {name for name, _ in rules.CHAIN}
    names |= {v.rule for v in (recipient.BAD_ADDRESS, recipient.RELAY_DENIED, recipient.NON_MEMBER)}
    names |= {"header_block", "crypto", "key_changed", "temporary"}
    assert not names - set(REASON_CLASS), names - set(REASON_CLASS)
    assert reason_class("member_dkim") == "dkim" and reason_class("no-such-rule") == OTHER


def test_counts_in_one_process():
    m = Metrics("serve", known_domains=lambda: {"interieur.gouv.fr", "justice.gouv.fr"})
    m.answered("relay", "accepted", "", 0.02)
    m.answered("relay", "refused", "remote_sender")
    m.recipient_refused("submission", "relay")
    m.settled("delivered", "justice.gouv.fr", 3.0)
    m.settled("deferred", "example.org")
    m.dkim("verify", 0.001, "pass")
    m.timed("crypto", "outbound", lambda x: x + 1)(1)
    got = samples(m.exposition())
    assert got[("securemail_messages_total", (("listener", "relay"), ("reason", ""), ("verdict", "accepted")))] == 1
    refused = ("securemail_messages_total", (("listener", "relay"), ("reason", "sender"), ("verdict", "refused")))
    assert got[refused] == 1
    assert got[("securemail_recipients_refused_total", (("listener", "submission"), ("reason", "relay")))] == 1
    assert got[("securemail_time_to_250_seconds_count", (("listener", "relay"),))] == 1
    assert got[("securemail_deliveries_total", (("domain", "justice.gouv.fr"), ("outcome", "delivered")))] == 1
    assert got[("securemail_deliveries_total", (("domain", OTHER), ("outcome", "deferred")))] == 1
    assert got[("securemail_time_to_delivered_seconds_count", (("domain", "justice.gouv.fr"),))] == 1
    assert got[("securemail_dkim_results_total", (("result", "pass"),))] == 1
    assert got[("securemail_crypto_seconds_count", (("operation", "outbound"),))] == 1
    assert got[("securemail_processes", (("role", "serve"),))] == 1
    assert not any("example.org" in str(k) for k in got)


CHILD = """
import sys
from securemail.metrics import Metrics
m = Metrics("crypto")
m.dkim("verify", 0.002, "fail")
m.answered("relay", "accepted", "", 0.01)
"""

PARENT = """
import subprocess, sys
from pathlib import Path
from securemail.metrics import Metrics, share_between_processes
share_between_processes(Path(sys.argv[1]), fresh=True)
m = Metrics("serve")
m.answered("relay", "accepted", "", 0.01)
child = subprocess.run([sys.executable, "-c", sys.argv[2]], check=True)
alive = subprocess.Popen([sys.executable, "-c", sys.argv[2] + "\\nimport time; time.sleep(30)"])
import time; time.sleep(3)
before = m.exposition()
dead = subprocess.Popen([sys.executable, "-c", sys.argv[2]]); dead.wait()
m.process_ended(dead.pid)
sys.stdout.buffer.write(before + b"\\n----\\n" + m.exposition())
alive.kill()
"""


def test_several_processes_are_summed_and_an_ended_one_leaves_its_counts(tmp_path):
    stale = tmp_path / "metrics"
    stale.mkdir()
    (stale / "counter_1.db").write_bytes(b"\0" * 16)  # a previous run's file: emptied at start
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(PARENT), str(stale), textwrap.dedent(CHILD)],
                         cwd=REPO, capture_output=True, check=True, timeout=120).stdout
    assert not (stale / "counter_1.db").exists()
    before, after = (samples(part) for part in out.split(b"\n----\n"))
    accepted = ("securemail_messages_total", (("listener", "relay"), ("reason", ""), ("verdict", "accepted")))
    assert before[accepted] == 3 and after[accepted] == 4      # the parent's, two children's, then one more
    assert after[("securemail_dkim_results_total", (("result", "fail"),))] == 3
    assert before[("securemail_processes", (("role", "crypto"),))] == 2   # the sleeping one, and one that
    assert after[("securemail_processes", (("role", "crypto"),))] == 2    # exited without being marked dead;
    assert after[("securemail_processes", (("role", "serve"),))] == 1     # the marked one is not counted
