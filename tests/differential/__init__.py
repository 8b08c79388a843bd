"""pytest plugin: the differential check of everything that crosses to a member gateway.

Issue 10: for every message that crossed to a member in any test, every byte
outside the OpenPGP packets must come from the gateway's own header list and
MIME skeleton. ``checker.problems`` (independent of the production code) judges
each body the gateways of the session hand to a member hop (``smtp:`` next hop):

- in this process, the delivery workers that ``app.open_gateway`` makes (``app.build_delivery``)
  (``build_delivery`` is wrapped, so their ``deliver_smtp`` is observed; test
  sinks driven by their own DeliveryWorker or SessionPool are not gateways and
  are not observed);
- in the gateways' child processes (delivery process, ``securemail serve``),
  through ``site/sitecustomize.py``, put on their PYTHONPATH: it wraps
  ``SessionPool.deliver`` there and appends each verdict to a file of ``OUT``.

A test during which (or just after which) a body with problems was delivered
fails at teardown; any left at the end fail the session. The summary says how
many bodies were checked.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from . import checker

OUT = "SECUREMAIL_DIFFERENTIAL_OUT"
SITE = Path(__file__).resolve().parent / "site"
_KEY = pytest.StashKey["Ledger"]()
_WORKERS = pytest.StashKey[dict]()   # pytest-xdist: the workers' totals, on the controller


class Ledger:
    """The verdicts of the session: this process's, and the child processes' files read as they grow."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.records: list[dict] = []      # every verdict, in the order read
        self.fresh: list[dict] = []        # not yet attributed to a test
        self.offsets: dict[Path, int] = {}
        self.current = ""

    def judge(self, hop: str, body: bytes) -> None:
        record = {"where": "in-process", "test": self.current, "size": len(body),
                  "hop": hop.rsplit(":", 1)[0], "problems": checker.problems(bytes(body))}
        self.fresh.append(record)

    def collect(self) -> list[dict]:
        """The verdicts that arrived since the last call (child files read on from where they were)."""
        for path in sorted(self.out.glob("*.jsonl")):
            with open(path, "rb") as f:
                f.seek(self.offsets.get(path, 0))
                data = f.read()
            whole = data[:data.rfind(b"\n") + 1]
            self.offsets[path] = self.offsets.get(path, 0) + len(whole)
            self.fresh += [dict(json.loads(line), where="child process", test=self.current)
                           for line in whole.splitlines() if line.strip()]
        new, self.fresh = self.fresh, []
        self.records += new
        return new


def observe(deliver, ledger: Ledger):
    """``deliver`` (a ``deliver_smtp``), judging every body sent to a member hop before it goes."""
    async def observed(hop, mail_from, rcpt, body, **kw):
        if str(hop).startswith("smtp:"):
            ledger.judge(str(hop), body)
        return await deliver(hop, mail_from, rcpt, body, **kw)
    return observed


def pytest_configure(config) -> None:
    from securemail.app import gateway as service
    out = Path(tempfile.mkdtemp(prefix="securemail-differential-"))
    ledger = Ledger(out)
    config.stash[_KEY] = ledger
    os.environ[OUT] = str(out)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(SITE), os.environ.get("PYTHONPATH")) if p)
    original = service.build_delivery

    def build_delivery(*args, **kw):
        workers, sessions = original(*args, **kw)
        for w in workers:
            w.deliver_smtp = observe(w.deliver_smtp, ledger)
        return workers, sessions
    service.build_delivery = build_delivery


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    item.config.stash[_KEY].current = item.nodeid


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    result = yield
    bad = [r for r in item.config.stash[_KEY].collect() if r["problems"]]
    if bad:
        pytest.fail("differential check: a body that crossed to a member gateway during this test (or just "
                    "before) holds bytes outside the gateway's header list, skeleton and packets:\n"
                    + "\n".join(f"  {r['where']}, {r['size']} bytes: {'; '.join(r['problems'])}" for r in bad),
                    pytrace=False)
    return result


def _bad(config) -> list[dict]:
    ledger = config.stash[_KEY]
    ledger.collect()
    return [r for r in ledger.records if r["problems"]]


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus) -> None:
    bad = _bad(session.config)
    if bad and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if hasattr(session.config, "workeroutput"):  # a pytest-xdist worker: its totals go to the controller
        records = session.config.stash[_KEY].records
        session.config.workeroutput["differential"] = {
            "records": len(records), "children": sum(1 for r in records if r["where"] == "child process"),
            "bad": [{"test": r["test"], "problems": r["problems"]} for r in bad]}


def pytest_testnodedown(node, error) -> None:
    """pytest-xdist, on the controller: add up what each worker's ledger judged."""
    out = getattr(node, "workeroutput", {}).get("differential")
    if out is not None:
        totals = node.config.stash.setdefault(_WORKERS, {"records": 0, "children": 0, "bad": []})
        totals["records"] += out["records"]
        totals["children"] += out["children"]
        totals["bad"] += out["bad"]


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    ledger = config.stash[_KEY]
    bad = _bad(config)
    records = len(ledger.records)
    children = sum(1 for r in ledger.records if r["where"] == "child process")
    workers = config.stash.get(_WORKERS, None)
    if workers is not None:  # the controller of pytest-xdist workers ran no test itself
        records, children = records + workers["records"], children + workers["children"]
        bad = bad + workers["bad"]  # each already failed its test in the worker
    terminalreporter.write_line(
        f"differential check: {records} bodies delivered to member gateways checked "
        f"({records - children} in the test processes, {children} in child processes), "
        f"{len(bad)} with bytes outside the gateway's header list, skeleton and packets")
    for r in bad:
        terminalreporter.write_line(f"  {r['test'] or '(between tests)'}: {'; '.join(r['problems'])}", red=True)


def pytest_unconfigure(config) -> None:
    ledger = config.stash.get(_KEY, None)
    if ledger is not None:
        shutil.rmtree(ledger.out, ignore_errors=True)
