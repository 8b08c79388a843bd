"""End-to-end gateway throughput: securemail serve vs an SMTP floor, a durable-queue floor and a gpg filter.

Run from the repository root::

    python -m bench.gateway                        # default run (~4-5 min on 2 cores)
    python -m bench.gateway --sizes 4K --no-pg --no-big --scale 0.3   # quick look
    python -m bench.gateway --profile              # py-spy on securemail at 4 KiB (pip install py-spy)

The same load generator (bench/loadgen.py: N messages of a fixed size over C
concurrent connections from 127.0.0.3, the office MTA's address) drives each
server, every one a separate process on 127.0.0.1:

floor-smtp     aiosmtpd answering 250 (bench/baselines.py)
floor-queue    aiosmtpd committing each message to SQLite (WAL, synchronous=FULL) before 250
gpg-filter     one gpg process per message to the recipient's key, commit, 250, relay
securemail     a real ``securemail serve`` (SQLite; or PostgreSQL, one or two processes
               sharing the database and keys): plain office mail for a member domain,
               encrypted to its Cv25519 key, signed, DKIM-signed, committed, then
               delivered over STARTTLS with the pin checked to a null sink holding the
               receiving gateway's own certificate (bench/sinks.py)

Each run: start the sink and the server(s), warm up, send N messages, wait
until the sink has every acknowledged message (matched by Message-ID), stop.
See bench/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

from bench import charts, gateway_report as report
from bench.crypto import parse_size
from bench.gateway_profile import profile
from bench.gateway_setup import (RCPT, SENDER, Scenario, default_count, setup_baseline, setup_securemail,
                                 wait_delivered)
from bench.homes import make_federation
from bench.loadgen import LoadResult, MessageSpec, percentile, run_load
from bench.procs import TreeSampler, pids_with_arg
from tests.support import OFFICE, PG_URL, pg_available

KINDS = ("floor-smtp", "floor-queue", "gpg-filter", "securemail")
DEFAULT_SIZES = "4K,64K,1M"
BIG = 25_000_000          # "a 25 MB message": under the default 25 MiB limit with its headers
RATE_SECONDS = 10.0       # length of the rate-limited run


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- one run ------------------------------------------------------------------------
def run_scenario(sc: Scenario, root: Path, *, tuning: dict, recipient: tuple[str, bytes],
                 source: str = OFFICE) -> dict:
    d = root / f"{sc.name}-{sc.size}"
    d.mkdir(parents=True)
    tag = f"{sc.name}-{sc.size}-{os.getpid()}"
    spec = MessageSpec(SENDER, RCPT, sc.size, SENDER.rpartition("@")[2])
    t_run = time.perf_counter()
    with ExitStack() as stack:
        s = (setup_securemail(sc, d, stack, tuning) if sc.kind == "securemail"
             else setup_baseline(sc, d, stack, recipient))
        if sc.warmup:
            warm_spec = MessageSpec(SENDER, RCPT, sc.warm_size or sc.size, spec.domain)
            w = asyncio.run(run_load(s.targets, warm_spec, sc.warmup, min(sc.c, sc.warmup),
                                     run_id=f"warm-{tag}", source=source))
            if s.sink_log:
                wait_delivered(s.sink_log, {x.mid for x in w.acked}, idle=20)
        if sc.kind == "gpg-filter":
            s.extra_pids = [p for p in pids_with_arg(str(d / "gnupg")) if p != os.getpid()]
        sink_cpu0 = s.sink.cpu() if s.sink else 0.0
        with TreeSampler([p.pid for p in s.servers], s.extra_pids, reset_peaks=sc.rss_growth) as tree:
            client0 = time.thread_time()  # the load generator runs in this thread; the sampler has its own
            res = asyncio.run(run_load(s.targets, spec, sc.n, sc.c, run_id=tag, source=source,
                                       rate=sc.rate))
            client_cpu = time.thread_time() - client0
            got = (wait_delivered(s.sink_log, {x.mid for x in res.acked}, idle=60)
                   if s.sink_log else {})
        sink_cpu = (s.sink.cpu() - sink_cpu0) if s.sink else None
        tails = {p.log.name: p.tail(1500) for p in s.servers}
    out = summarize(sc, res, got, tree=tree, sink_cpu=sink_cpu)
    for path in s.stats:
        if path.exists():
            out["server_stats"] = json.loads(path.read_text())
    if out["failed"] or out.get("missing"):
        out["server_log_tail"] = tails
    out["client_cpu_ms_per_msg"] = round(client_cpu * 1e3 / max(1, sc.n), 2)
    if sc.kind == "securemail":
        out["cpu_workers_effective"] = s.cpu_workers
    out["run_seconds"] = round(time.perf_counter() - t_run, 1)
    return out


def summarize(sc: Scenario, res: LoadResult, got: dict[str, list[float]], *, tree: TreeSampler,
              sink_cpu: float | None) -> dict:
    ok = res.acked
    by_server = [tree.cpu(i) for i in range(len(tree.roots))]
    cpu = tree.cpu()  # the servers' trees and the extra pids (gpg-agent)
    by_id = {x.mid: x for x in ok}
    t250 = [(x.t_done - x.t_sched) * 1e3 for x in ok]
    ttd = [(min(ts) - by_id[m].t_sched) * 1e3 for m, ts in got.items()]
    last_ack = max((x.t_done for x in ok), default=res.t_begin)
    last_arrival = max((min(ts) for ts in got.values()), default=res.t_begin)
    delivering = sc.kind in ("gpg-filter", "securemail")
    r = lambda v, k=1: None if v is None else round(v, k)  # noqa: E731
    out = {**asdict(sc), "size_label": report.label(sc.size),
           "acked": len(ok), "failed": sc.n - len(ok), "failures": res.failures(),
           "acked_per_s": r(len(ok) / (last_ack - res.t_begin) if ok else 0.0, 1),
           "t250_p50_ms": r(percentile(t250, 50), 2), "t250_p99_ms": r(percentile(t250, 99), 2),
           "t250_max_ms": r(max(t250, default=None), 2),
           "t250_quantiles_ms": charts.quantiles(t250),   # the distribution bench/charts.py draws
           "server_cpu_ms_per_msg": r(cpu * 1e3 / len(ok) if ok else None, 2),
           "server_cpu_ms_per_msg_by_server": [r(c * 1e3 / len(ok) if ok else None, 2) for c in by_server],
           "server_processes_seen": [tree.processes(i) for i in range(len(by_server))],
           "peak_rss_bytes": [tree.largest_peak(i) for i in range(len(by_server))],
           "peak_rss_tree_bytes": tree.peak,
           "rss_before_tree_bytes": tree.rss_before,
           "tree_samples": tree.samples,
           "top_processes": [{**t, "cpu_ms_per_msg": r(t["cpu_s"] * 1e3 / len(ok) if ok else None, 2)}
                             for t in tree.top()]}
    if tree.extra:
        out["extra_pids_cpu_ms_per_msg"] = r(tree.cpu(len(by_server)) * 1e3 / len(ok) if ok else None, 2)
    if delivering:
        out.update({
            "delivered": len(got), "missing": len(ok) - len(got),
            "double_deliveries": sum(1 for ts in got.values() if len(ts) > 1),
            "delivered_per_s": r(len(got) / (last_arrival - res.t_begin) if got else 0.0, 1),
            "ttd_p50_ms": r(percentile(ttd, 50), 1), "ttd_p99_ms": r(percentile(ttd, 99), 1),
            "sink_cpu_ms_per_msg": r(sink_cpu * 1e3 / len(got) if got and sink_cpu is not None else None, 2)})
    if sc.rss_growth:
        out["rss_growth_bytes"] = [tree.largest_growth(i) for i in range(len(by_server))]
        out["rss_growth_tree_bytes"] = tree.peak - tree.rss_before
        out["rss_growth_tree_upper_bytes"] = tree.summed_growth()
    return out


# --- the whole benchmark --------------------------------------------------------------
def tree_state() -> dict:
    """The commit measured and the files changed on top of it (the tree is often mid-edit)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent).stdout
    return {"commit": git("rev-parse", "--short", "HEAD").strip(),
            "changed": [line[3:] for line in git("status", "--porcelain").splitlines()
                        if not line[3:].startswith("bench/")]}


def plan(a, sizes: list[int], kinds: list[str]) -> list[Scenario]:
    n = lambda kind, size: a.n or default_count(kind, size, a.scale)  # noqa: E731
    warm = lambda count: max(5, min(20, count // 3))  # noqa: E731
    out = [Scenario(k, k, size, n(k, size), a.c, warmup=warm(n(k, size))) for size in sizes for k in kinds]
    small = sizes[0] if sizes else 4096
    if "securemail" in kinds and not a.no_pg:
        count = n("securemail-pg", small)
        out.append(Scenario("securemail-pg", "securemail", small, count, a.c, db="pg", warmup=warm(count)))
        out.append(Scenario("securemail-pg-x2", "securemail", small, count, a.c, db="pg", nodes=2,
                            warmup=warm(count)))
        # "1 and 2 gateway processes": each node a single OS process, so the second one adds a core
        out.append(Scenario("securemail-pg-1proc", "securemail", small, count, a.c, db="pg",
                            warmup=warm(count), one_process=True))
        out.append(Scenario("securemail-pg-1proc-x2", "securemail", small, count, a.c, db="pg", nodes=2,
                            warmup=warm(count), one_process=True))
    return out


def settings(a, results: list[dict]) -> dict:
    """The securemail settings the runs used (also in meta.tuning, as written to securemail.toml)."""
    return {"processes": int(a.processes), "delivery_workers": int(a.workers),
            "poll_interval": float(a.poll_interval), "connections": a.c,
            "cpu_workers": (None if a.cpu_workers is None else
                            a.cpu_workers if a.cpu_workers == "auto" else int(a.cpu_workers)),
            "cpu_workers_set": a.cpu_workers is not None,
            "cpu_workers_effective": next((r["cpu_workers_effective"] for r in results
                                           if r.get("cpu_workers_effective") is not None), None)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated sizes (default %(default)s)")
    ap.add_argument("--kinds", default=",".join(KINDS), help="subset of " + ",".join(KINDS))
    ap.add_argument("-n", type=int, default=None, help="messages per run (default: per kind and size)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the default message counts")
    ap.add_argument("-c", type=int, default=10, help="concurrent connections (default %(default)s)")
    ap.add_argument("--no-pg", action="store_true", help="skip the PostgreSQL runs")
    ap.add_argument("--no-rate", action="store_true", help="skip the rate-limited run")
    ap.add_argument("--no-big", action="store_true", help="skip the 25 MB message")
    ap.add_argument("--big-size", default=str(BIG), help="size of the big message (default 25000000)")
    ap.add_argument("--poll-interval", default="0.05", help="securemail [delivery] poll_interval for the run")
    ap.add_argument("--workers", default="4", help="securemail [delivery] workers for the run")
    ap.add_argument("--processes", default="1", help="securemail [gateway] processes for the run")
    ap.add_argument("--cpu-workers", default=None, metavar="N",
                    help="securemail [gateway] cpu_workers for the run: crypto worker processes per serve "
                         "process, 0 = threads, or auto (default: not set, the gateway's default)")
    ap.add_argument("--json", default="bench/results-gateway.json", help="'-' for none")
    ap.add_argument("--charts", default="docs", help="where the PNG charts go (bench/charts.py); '-' for none")
    ap.add_argument("--keep", action="store_true", help="keep the temporary homes and logs")
    ap.add_argument("--profile", action="store_true",
                    help="instead: profile securemail serve under load with py-spy (4 KiB unless --sizes)")
    ap.add_argument("--profile-mode", choices=("gil", "active", "idle"), default="gil",
                    help="py-spy sampling: GIL holder (CPU), running threads, or all threads (wall)")
    ap.add_argument("--profile-out", default="bench/profiles/gateway", help="py-spy output prefix")
    ap.add_argument("--profile-seconds", type=float, default=None, help="py-spy duration (default: the run)")
    a = ap.parse_args(argv)
    sizes = [parse_size(x) for x in a.sizes.split(",") if x]
    kinds = [k for k in a.kinds.split(",") if k]
    for k in kinds:
        if k not in KINDS:
            ap.error(f"unknown kind {k!r}")
    tuning = {"poll_interval": a.poll_interval, "workers": a.workers, "first": "1", "cap": "2",
              "processes": a.processes}
    if a.cpu_workers is not None:
        if a.cpu_workers != "auto" and not (a.cpu_workers.isdigit() and int(a.cpu_workers) <= 64):
            ap.error("--cpu-workers must be a number from 0 to 64 or auto")
        tuning["cpu_workers"] = '"auto"' if a.cpu_workers == "auto" else str(int(a.cpu_workers))
    root = Path(tempfile.mkdtemp(prefix="smbench-"))
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    try:
        if a.profile:
            return profile(a, sizes[0] if a.sizes != DEFAULT_SIZES else 4096, root, tuning)
        if "securemail" in kinds and not a.no_pg and (why := pg_available()):
            log(f"{why}: leaving out the PostgreSQL runs")
            a.no_pg = True
        log("setting up keys for gpg-filter")
        keyfed = make_federation(root / "keys")
        recipient = (keyfed.receiver.domain_key(), keyfed.receiver_certificate())
        results = []

        def go(sc: Scenario) -> dict:
            log(f"{sc.name} {report.label(sc.size)}: N={sc.n} C={sc.c}"
                + (f" rate={sc.rate:.0f}/s" if sc.rate else ""))
            r = run_scenario(sc, root, tuning=tuning, recipient=recipient)
            log("  " + report.one_line(r))
            results.append(r)
            return r

        for sc in plan(a, sizes, kinds):
            go(sc)
        base = next((r for r in results if r["name"] == "securemail" and r["size"] == sizes[0]), None)
        if base and not a.no_rate and base["acked_per_s"]:
            rate = base["acked_per_s"] / 2
            go(Scenario("securemail-half-rate", "securemail", sizes[0], max(20, int(rate * RATE_SECONDS)),
                        a.c, rate=rate))
        if "securemail" in kinds and not a.no_big:
            go(Scenario("securemail-big", "securemail", parse_size(a.big_size), 1, 1, warmup=5,
                        warm_size=4096, rss_growth=True))
    finally:
        if a.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    elapsed = time.perf_counter() - t0
    meta = {"python": sys.version.split()[0], "platform": platform.platform(), "nproc": os.cpu_count(),
            "loadavg_start": [round(x, 2) for x in load0],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()], "elapsed_s": round(elapsed, 1),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv[1:], "tuning": tuning,
            "settings": settings(a, results),
            "postgres": None if a.no_pg else PG_URL, "source_address": OFFICE, "tree": tree_state()}
    text, ratios, targets = report.render(results, meta)
    print(text)
    if a.json != "-":
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"meta": meta, "results": results, "ratios": ratios,
                                            "targets": targets}, indent=1))
        print(f"wrote {a.json}")
    if a.charts != "-":
        if not charts.available():
            print("no charts: matplotlib is missing (pip install -e '.[bench]')")
        for path in charts.draw(results, None, Path(a.charts)) if charts.available() else ():
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
