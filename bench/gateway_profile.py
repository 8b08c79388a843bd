"""Profile ``securemail serve`` under the benchmark's load with py-spy, and summarize where CPU goes.

py-spy samples every thread of the running process from outside (the event
loop and the ``asyncio.to_thread`` workers alike), which cProfile and
pyinstrument cannot. The raw output is the "folded" stack format (one
``frame;frame;... count`` line per stack), readable by speedscope and by
flamegraph tools; the summary printed here gives, over all on-CPU samples:

* the split between the event-loop thread and the worker threads;
* time by area (OpenPGP, DKIM, database, SMTP, TLS, MIME parsing, ...) as the
  share of samples whose stack passes through it;
* the securemail functions by inclusive share, and all functions by own share.

    pip install py-spy
    python -m bench.gateway --profile [--profile-mode gil|active|idle] [--sizes 64K] [-n 800]

``gil`` (the default) samples only the thread holding the GIL: where Python
CPU goes (C code that releases the GIL, such as sqlite3's fsync, is not
seen). ``idle`` samples every thread all the time: where the wall-clock time
of the event loop and of the worker threads goes, waits included.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from bench.gateway_setup import RCPT, SENDER, Scenario, default_count, setup_securemail, wait_delivered
from bench.loadgen import MessageSpec, run_load
from tests.support import OFFICE

# Areas, first match wins, tested against each frame's "function (file)" from the leaf up.
AREAS = [
    ("OpenPGP (securemail.crypto, pgpy, cryptography)", r"\((securemail/crypto/(?!dkim)|pgpy/|cryptography/)"),
    ("DKIM signing (dkimpy)", r"\((securemail/crypto/dkim|dkim/)"),
    ("database (SQLAlchemy, sqlite3, psycopg; queue, audit)",
     r"\((sqlalchemy/|psycopg/|sqlite3/|securemail/db\.py|securemail/queue/|securemail/audit\.py)"),
    ("TLS (ssl)", r"\((ssl\.py|asyncio/sslproto\.py)"),
    ("MIME (email package, securemail.mail)", r"\((email/|securemail/mail/)"),
    ("SMTP server (aiosmtpd, securemail.smtp)", r"\((aiosmtpd/|securemail/smtp/)"),
    ("SMTP client (aiosmtplib, securemail.delivery)", r"\((aiosmtplib/|securemail/delivery/)"),
    ("asyncio, selectors, thread pool", r"\((asyncio/|selectors\.py|threading\.py|concurrent/)"),
]
# py-spy's sampling modes: who holds the GIL (Python CPU), threads it thinks are running, every thread.
MODES = {"gil": ["--gil"], "active": [], "idle": ["--idle"]}
# Pipeline stages, tested against each frame from the root down: the outermost match decides.
STAGES = [
    ("SMTP server: sessions, commands, DATA reading", r"\((aiosmtpd|securemail/smtp)/"),
    ("policy facts (Pipeline._facts)", r"^Pipeline\._facts "),
    ("recipient key lookup (Transformer.outbound -> Locator/KeyStore)", r"^(Locator|KeyStore)\.\w+ "),
    ("OpenPGP encrypt+sign (crypto.message.encrypt)", r"^encrypt \(securemail/crypto/message"),
    ("DKIM signing", r"^(dkim_sign_fn|DkimSigning\.__call__)"),
    ("PGP/MIME building (pgp_mime, protected_inner, top_headers)",
     r"^(pgp_mime|protected_inner|top_headers|strip_headers) "),
    ("enqueue: Queue.enqueue_many (+ audit record)", r"^Queue\.enqueue_many "),
    ("delivery: Queue.claim", r"^Queue\.claim "),
    ("delivery: Queue.body", r"^Queue\.body "),
    ("delivery: key re-check before sending (KeyCheck.veto)", r"^KeyCheck\.veto "),
    ("delivery: SMTP client (deliver_smtp: STARTTLS, pin, DATA)", r"^deliver_smtp "),
    ("delivery: settle (mark_delivered + audit record)", r"^Queue\._settle "),
    ("other audit records (AuditLog.append)", r"^AuditLog\.append "),
]
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]*)(?::(?P<line>\d+))?\)$")


def short(path: str) -> str:
    for cut in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if cut in path:
            return path.split(cut, 1)[1]
    return path


def parse_folded(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    """[(frames root→leaf as (function, short file)), count)] from a py-spy raw file."""
    out = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for f in stack.split(";"):
            m = FRAME.match(f)
            frames.append((m["func"], short(m["file"])) if m else (f, ""))
        out.append((frames, int(count)))
    return out


def summarize(path: Path, top: int = 25) -> str:
    stacks = parse_folded(path)
    total = sum(c for _, c in stacks) or 1
    lines = [f"{total} samples from {path}"]
    threads, areas, stages, incl, own, sm_incl = (Counter() for _ in range(6))
    for frames, c in stacks:
        real = [f for f in frames if f[1]]  # thread/process pseudo-frames have no file
        threads[thread_of(real)] += c
        text = [f"{fn} ({fl})" for fn, fl in real]
        area = "other"
        for t in reversed(text):  # the innermost frame that belongs to an area decides
            hit = next((name for name, rx in AREAS if re.search(rx, t)), None)
            if hit:
                area = hit
                break
        areas[area] += c
        stages[next((name for t in text for name, rx in STAGES if re.search(rx, t)),
                    "event loop, thread pool and the rest")] += c
        if real:
            own[f"{real[-1][0]} ({real[-1][1]})"] += c
        for key in {f"{fn} ({fl})" for fn, fl in real}:
            incl[key] += c
            if fl_is_ours(key):
                sm_incl[key] += c
    pct = lambda n: f"{100 * n / total:5.1f}%"  # noqa: E731
    lines.append("-- by thread --")
    lines += [f"  {pct(n)}  {k}" for k, n in threads.most_common()]
    lines.append("-- by pipeline stage (outermost matching frame) --")
    lines += [f"  {pct(n)}  {k}" for k, n in stages.most_common()]
    lines.append("-- by library area (innermost matching frame) --")
    lines += [f"  {pct(n)}  {k}" for k, n in areas.most_common()]
    lines.append(f"-- securemail functions, inclusive (top {top}) --")
    lines += [f"  {pct(n)}  {k}" for k, n in sm_incl.most_common(top)]
    lines.append(f"-- all functions, own time (top {top}) --")
    lines += [f"  {pct(n)}  {k}" for k, n in own.most_common(top)]
    return "\n".join(lines)


def thread_of(frames: list[tuple[str, str]]) -> str:
    root = frames[0][1] if frames else ""
    if "runpy" in root or root.startswith("cli/"):
        return "event-loop (main) thread"
    if root.startswith("threading.py"):
        return "worker threads (asyncio.to_thread)"
    return "unknown (stack cut short by --nonblocking)"


def fl_is_ours(key: str) -> bool:
    return "(securemail/" in key or "(cli/" in key


def profile(a, size: int, root: Path, tuning: dict) -> int:
    """One securemail run (SQLite) with py-spy attached for the timed part; prints the summary."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy not found: pip install py-spy (into this venv)", file=sys.stderr)
        return 2
    n = a.n or default_count("securemail", size, a.scale)
    sc = Scenario("securemail-profile", "securemail", size, n, a.c)
    out = Path(f"{a.profile_out}-{size}-{a.profile_mode}.folded")
    out.parent.mkdir(parents=True, exist_ok=True)
    d = root / "profile"
    d.mkdir()
    spec = MessageSpec(SENDER, RCPT, size, SENDER.rpartition("@")[2])
    with ExitStack() as stack:
        s = setup_securemail(sc, d, stack, tuning)
        asyncio.run(run_load(s.targets, spec, 20, min(a.c, 20), run_id="warm", source=OFFICE))
        pid = s.servers[0].pid
        cmd = [spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--nonblocking",
               "-o", str(out), *MODES[a.profile_mode]]
        if a.profile_seconds:
            cmd += ["--duration", str(int(a.profile_seconds))]
        print(" ".join(cmd), file=sys.stderr)
        rec = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)
        cpu0, t0 = s.servers[0].cpu(), time.time()
        res = asyncio.run(run_load(s.targets, spec, n, a.c, run_id="prof", source=OFFICE))
        got = wait_delivered(s.sink_log, {x.mid for x in res.acked}, idle=30)
        cpu = s.servers[0].cpu() - cpu0
        if rec.poll() is None:
            rec.send_signal(signal.SIGINT)
        _, err = rec.communicate(timeout=60)
    wall = time.time() - t0
    print(f"securemail {size} B: {len(res.acked)}/{n} acknowledged, {len(got)} delivered in {wall:.1f} s; "
          f"server CPU {cpu:.1f} s = {cpu * 1e3 / max(1, len(res.acked)):.1f} ms/message "
          f"({100 * cpu / wall:.0f}% of one core)")
    if not out.exists():
        print(f"py-spy wrote nothing: {err.decode(errors='replace')[-2000:]}", file=sys.stderr)
        return 1
    print(summarize(out))
    print(f"folded stacks: {out} (open in https://www.speedscope.app or flamegraph.pl)")
    return 0


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 25))
