"""The gateway benchmark's table, ratios and the issue's targets, from the runs' result dicts."""

from __future__ import annotations

MIB = 1 << 20
RSS_LIMIT = 200 * MIB          # "peak RSS < 200 MB", read as MiB (the stricter of the two is 200e6)


def _f(v, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def _mib(v) -> str:
    return "-" if v is None else f"{v / MIB:.0f}"


def label(size: int) -> str:
    """4 KiB, 1 MiB, or 25 MB for a decimal size."""
    from bench.crypto import size_label
    return f"{size // 10**6} MB" if size >= 10**6 and size % 10**6 == 0 else size_label(size)


def one_line(r: dict) -> str:
    s = (f"{r['acked']}/{r['n']} acked {_f(r['acked_per_s'])}/s, t250 p50 {_f(r['t250_p50_ms'])} "
         f"p99 {_f(r['t250_p99_ms'])} ms")
    if "delivered" in r:
        s += (f"; delivered {r['delivered']} {_f(r['delivered_per_s'])}/s, ttd p50 {_f(r['ttd_p50_ms'])} "
              f"p99 {_f(r['ttd_p99_ms'])} ms, dup {r['double_deliveries']}")
    procs = sum(r.get("server_processes_seen", [])) or len(r["peak_rss_bytes"])
    s += (f"; server CPU {_f(r['server_cpu_ms_per_msg'], '{:.2f}')} ms/msg ({procs} process"
          f"{'es' if procs != 1 else ''}); peak RSS {_mib(max(r['peak_rss_bytes']))} MiB largest, "
          f"{_mib(r.get('peak_rss_tree_bytes'))} MiB all")
    if r.get("sink_cpu_ms_per_msg") is not None:
        s += f"; sink CPU {r['sink_cpu_ms_per_msg']:.2f} ms/msg"
    if r["failures"]:
        s += f"; failures {r['failures']}"
    return s


def _find(results, name, size=None):
    return next((r for r in results if r["name"] == name and (size is None or r["size"] == size)), None)


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def ratios(results: list[dict]) -> list[dict]:
    out = []
    for size in sorted({r["size"] for r in results if r["name"] == "securemail"}):
        sm = _find(results, "securemail", size)
        row = {"size": size, "size_label": sm["size_label"]}
        for base in ("floor-smtp", "floor-queue", "gpg-filter"):
            b = _find(results, base, size)
            if b is None:
                continue
            row[f"securemail_over_{base}_acked"] = _ratio(sm["acked_per_s"], b["acked_per_s"])
            if "delivered_per_s" in b:
                row[f"securemail_over_{base}_delivered"] = _ratio(sm["delivered_per_s"], b["delivered_per_s"])
        out.append(row)
    return out


def targets(results: list[dict], rows: list[dict]) -> list[dict]:
    t = []

    def add(name, value, ok, detail=""):
        t.append({"target": name, "value": value, "met": ok, "detail": detail})

    first = rows[0] if rows else {}
    v = first.get("securemail_over_floor-queue_acked")
    add(f"securemail >= 0.35 x floor-queue msg/s at {first.get('size_label', '4 KiB')}", v,
        None if v is None else v >= 0.35)
    for row in rows:
        need = 1.2 if row is first else 1.0
        v = row.get("securemail_over_gpg-filter_delivered")
        va = row.get("securemail_over_gpg-filter_acked")
        add(f"securemail faster than gpg-filter at {row['size_label']} (>= {need}x, delivered msg/s)", v,
            None if v is None else v >= need, f"acked ratio {va}")
    sm = _find(results, "securemail", first.get("size"))
    if sm:
        add(">= 330 msg/s end to end (delivered, securemail SQLite)", sm.get("delivered_per_s"),
            sm.get("delivered_per_s", 0) >= 330, f"acked {sm['acked_per_s']}/s")
    half = _find(results, "securemail-half-rate")
    if half:
        add("p99 time-to-250 < 100 ms at half max throughput", half["t250_p99_ms"],
            half["t250_p99_ms"] is not None and half["t250_p99_ms"] < 100,
            f"rate {half['rate']:.0f}/s, achieved {half['acked_per_s']}/s")
    peaks = [max(r["peak_rss_bytes"]) for r in results if r["kind"] == "securemail" and not r["rss_growth"]]
    if peaks:
        add("peak RSS < 200 MiB per securemail process (every run but the big message)",
            round(max(peaks) / MIB, 1), max(peaks) < RSS_LIMIT)
    big = _find(results, "securemail-big")
    if big and big.get("rss_growth_bytes"):
        g = big.get("rss_growth_tree_bytes", max(big["rss_growth_bytes"]))
        ok = big["acked"] == 1 and g < 10 * big["size"]
        add(f"{label(big['size'])} message: RSS growth < 10x its size (all the server's processes)",
            round(g / big["size"], 2), ok,
            f"growth {g / MIB:.0f} MiB, of the largest process {max(big['rss_growth_bytes']) / MIB:.0f} MiB; "
            f"acked {big['acked']}, delivered {big.get('delivered')}"
            + (f"; {big['failures']}" if big["failures"] else ""))
    one, two = _find(results, "securemail-pg-1proc"), _find(results, "securemail-pg-1proc-x2")
    if one and two:
        add("2 gateway processes (one OS process each) on PostgreSQL deliver more than 1, "
            "zero double deliveries",
            _ratio(two["delivered_per_s"], one["delivered_per_s"]),
            two["delivered_per_s"] > one["delivered_per_s"] and two["double_deliveries"] == 0
            and one["double_deliveries"] == 0,
            f"1: {one['delivered_per_s']}/s, 2: {two['delivered_per_s']}/s; "
            f"double deliveries {one['double_deliveries']} / {two['double_deliveries']}")
    return t


def render(results: list[dict], meta: dict) -> tuple[str, list[dict], list[dict]]:
    head = (f"{'scenario':<22}{'size':>8}{'N':>6}{'C':>4}{'acked/s':>9}{'deliv/s':>9}"
            f"{'t250 p50':>10}{'p99':>8}{'ttd p50':>9}{'p99':>8}{'CPU ms':>8}{'RSS MiB':>9}{'fail':>6}{'miss':>6}{'dup':>5}")
    lines = ["time-to-250 (t250) and time-to-delivery (ttd) in ms; CPU ms = server CPU per acknowledged "
             "message (its whole process tree: serve processes, workers, gpg); RSS = peak of the largest "
             "single server process",
             head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r['name']:<22}{label(r['size']):>8}{r['n']:>6}{r['c']:>4}{_f(r['acked_per_s']):>9}"
            f"{_f(r.get('delivered_per_s')):>9}{_f(r['t250_p50_ms']):>10}{_f(r['t250_p99_ms']):>8}"
            f"{_f(r.get('ttd_p50_ms'), '{:.0f}'):>9}{_f(r.get('ttd_p99_ms'), '{:.0f}'):>8}"
            f"{_f(r['server_cpu_ms_per_msg'], '{:.2f}'):>8}{_mib(max(r['peak_rss_bytes'])):>9}"
            f"{r['failed']:>6}{_f(r.get('missing'), '{}'):>6}{_f(r.get('double_deliveries'), '{}'):>5}")
        if r["failures"]:
            lines.append(f"{'':<22}failures: {r['failures']}")
        if r.get("rss_growth_bytes"):
            tree, one = r["rss_growth_tree_bytes"], max(r["rss_growth_bytes"])
            lines.append(f"{'':<22}RSS before {_mib(r['rss_before_tree_bytes'])} MiB (all processes), growth "
                         f"{_mib(tree)} MiB = {tree / r['size']:.2f}x the message; largest process "
                         f"{_mib(one)} MiB = {one / r['size']:.2f}x")
        seen = r.get("server_processes_seen", [])
        if r["nodes"] > 1 or sum(seen) > len(seen):
            lines.append(f"{'':<22}processes {seen}, CPU ms/msg {r['server_cpu_ms_per_msg_by_server']}"
                         + (f" + gpg-agent {r['extra_pids_cpu_ms_per_msg']}" if "extra_pids_cpu_ms_per_msg" in r
                            else "")
                         + f", largest process peak RSS MiB {[round(x / MIB) for x in r['peak_rss_bytes']]}, "
                         f"all {_mib(r['peak_rss_tree_bytes'])} MiB")
    rows = ratios(results)
    lines += ["", "ratios (securemail / baseline; > 1 = securemail faster)"]
    for row in rows:
        cells = [f"{k.removeprefix('securemail_over_')} {v:.2f}" for k, v in row.items()
                 if k.startswith("securemail_over_") and v is not None]
        lines.append(f"  {label(row['size']):>8}: " + ", ".join(cells))
    tg = targets(results, rows)
    lines += ["", "targets from the issue"]
    for t in tg:
        verdict = "n/a" if t["met"] is None else "MET" if t["met"] else "MISSED"
        lines.append(f"  {verdict:<7}{t['target']}: {t['value']}" + (f"  ({t['detail']})" if t["detail"] else ""))
    lines += ["", f"machine: {meta['nproc']} CPUs, {meta['platform']}, Python {meta['python']}; "
                  f"load average {meta['loadavg_start'][0]} at start, {meta['loadavg_end'][0]} at end; "
                  f"run took {meta['elapsed_s']:.0f} s"]
    if max(meta["loadavg_start"][0], meta["loadavg_end"][0]) > (meta["nproc"] or 1):
        lines.append("WARNING: the load average exceeded the CPU count: other work was running, "
                     "throughput is noisy; the CPU ms column is steadier")
    return "\n".join(lines), rows, tg
