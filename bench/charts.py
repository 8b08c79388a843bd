"""The charts of docs/performance.md and docs/reliability.md, drawn from results already measured.

Three PNGs, small (about 30 KiB each), each beside the table it pictures:

- ``perf-throughput.png``: messages per second by message size, securemail against the
  baselines run alongside (floor-smtp, floor-queue, gpg-filter), from ``bench/gateway.py``'s
  results;
- ``perf-t250.png``: the time-to-250 distribution of each 4 KiB run: the whole curve (one point
  per percentile) when the results carry ``t250_quantiles_ms``, else the p50–p99 range that
  older results hold;
- ``reliability-faults.png``: acknowledged, delivered and duplicated messages for each fault of
  the proof (``tests/proof`` figures: ``proof/run.py``'s ``figures.json``).

``make bench`` and ``make proof`` call this when they finish. By hand::

    python -m bench.charts bench/results-gateway.json [--figures RUN/figures.json] [--out docs]
    python -m bench.charts --from-docs      # redraw from the tables the docs show now

``--from-docs`` reads the results table of docs/performance.md and the fault table of
docs/reliability.md, so the pictures show exactly the figures printed beside them.
The PNGs carry no timestamp or software tag: the same figures make the same bytes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
THROUGHPUT, T250, FAULTS = "perf-throughput.png", "perf-t250.png", "reliability-faults.png"
BASELINES = ("floor-smtp", "floor-queue", "gpg-filter", "securemail")
COLORS = {"floor-smtp": "#9e9e9e", "floor-queue": "#616161", "gpg-filter": "#e08a2c", "securemail": "#1f5fa8",
          "securemail-half-rate": "#6aa0d8", "acked": "#616161", "delivered": "#1f5fa8", "duplicated": "#e08a2c"}
QUANTILES = (1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 98, 99, 99.5, 99.9, 100)


def available() -> bool:
    """Whether matplotlib is installed (the ``bench`` and ``test`` extras have it)."""
    return importlib.util.find_spec("matplotlib") is not None


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("bench.charts needs matplotlib: pip install -e '.[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 8, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    fig.clf()
    return path


def quantiles(values: list[float]) -> dict[str, float]:
    """The nearest-rank percentiles of ``values`` that the time-to-250 chart draws (ms)."""
    s = sorted(values)
    if not s:
        return {}
    return {str(p): round(s[max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))], 2)
            for p in QUANTILES}


def throughput_chart(results: list[dict], path: Path) -> Path:
    """msg/s acknowledged (bars) and delivered (dots) by size, for securemail and each baseline."""
    plt = _pyplot()
    sizes = sorted({r["size"] for r in results if r["name"] in BASELINES}, key=lambda s: s)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.8 / len(BASELINES)
    for i, name in enumerate(BASELINES):
        rows = {r["size"]: r for r in results if r["name"] == name}
        xs = [j + (i - (len(BASELINES) - 1) / 2) * width for j, s in enumerate(sizes) if s in rows]
        got = [rows[s] for s in sizes if s in rows]
        ax.bar(xs, [r["acked_per_s"] for r in got], width * 0.92, label=f"{name} (acked)", color=COLORS[name])
        dots = [(x, r["delivered_per_s"]) for x, r in zip(xs, got) if r.get("delivered_per_s")]
        if dots:
            ax.plot(*zip(*dots), "o", color="black", markersize=3)
        for x, r in zip(xs, got):
            ax.annotate(f"{r['acked_per_s']:.0f}", (x, r["acked_per_s"]), ha="center", va="bottom", fontsize=6)
    ax.set_yscale("log")
    ax.set_xticks(range(len(sizes)), [_label(s, results) for s in sizes])
    ax.set_ylabel("messages per second (log)")
    ax.set_title("Throughput by message size (bars: acknowledged; dots: delivered)")
    ax.legend(ncols=4, fontsize=6, loc="upper right", frameon=False)
    return _save(fig, path)


def _label(size: int, results: list[dict]) -> str:
    return next((r["size_label"] for r in results if r["size"] == size and r.get("size_label")), str(size))


def t250_chart(results: list[dict], path: Path) -> Path:
    """The time-to-250 of each run at the smallest size: its distribution, or its p50–p99."""
    plt = _pyplot()
    size = min(r["size"] for r in results)
    runs = [r for r in results if r["size"] == size and r.get("t250_p50_ms") is not None]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    if all(r.get("t250_quantiles_ms") for r in runs):
        for r in runs:
            q = sorted((float(p), v) for p, v in r["t250_quantiles_ms"].items())
            ax.plot([v for _, v in q], [p for p, _ in q], label=r["name"], color=COLORS.get(r["name"]))
        ax.set_ylabel("percent of messages acknowledged within")
    else:
        for y, r in enumerate(runs):
            ax.plot([r["t250_p50_ms"], r["t250_p99_ms"]], [y, y], "-", color=COLORS.get(r["name"], "#1f5fa8"),
                    linewidth=4, solid_capstyle="round")
            ax.plot([r["t250_p50_ms"]], [y], "o", color="black", markersize=3)
            ax.annotate(f" p50 {r['t250_p50_ms']:g} / p99 {r['t250_p99_ms']:g} ms", (r["t250_p99_ms"], y),
                        va="center", fontsize=6)
        ax.set_yticks(range(len(runs)), [r["name"] for r in runs])
        ax.invert_yaxis()
    ax.axvline(100, color="#c62828", linewidth=0.8, linestyle="--")
    if all(r.get("t250_quantiles_ms") for r in runs):
        ax.legend(fontsize=6, frameon=False, loc="lower right")
    ax.set_xscale("log")
    ax.set_xlabel(f"ms from the message's schedule to its 250 (log), {_label(size, results)} messages; "
                  "red: the target, p99 < 100 ms at half rate")
    ax.set_title("Time-to-250" + (" distribution" if runs and runs[0].get("t250_quantiles_ms") else ": p50 to p99"))
    return _save(fig, path)


def faults_chart(figures: list[dict], path: Path) -> Path:
    """Acknowledged, delivered and duplicated messages for each fault with counts (log scale)."""
    plt = _pyplot()
    rows = [e for e in figures if isinstance(e.get("acked"), int) and e["acked"] > 0]
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.22 * len(rows)))
    height = 0.27
    for i, what in enumerate(("acked", "delivered", "duplicated")):
        ys = [y + (i - 1) * height for y in range(len(rows))]
        values = [max(int(e.get(what) or 0), 0) for e in rows]
        ax.barh(ys, [v or 0.0 for v in values], height * 0.95, label=what, color=COLORS[what])
    for y, e in enumerate(rows):
        ax.annotate(f" {e['acked']} / {e.get('delivered', 0)} / {e.get('duplicated', 0)}; lost {e.get('lost', 0)}",
                    (max(e["acked"], 1), y), va="center", fontsize=5.5)
    ax.set_yticks(range(len(rows)), [f"{e['name']} ({e.get('backend', '—')})" for e in rows], fontsize=6)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(0.8, max(e["acked"] for e in rows) * 40 if rows else 10)
    ax.set_xlabel("messages (log): acknowledged / delivered / duplicated")
    ax.set_title(f"Faults: messages acknowledged, delivered, duplicated (lost in all: "
                 f"{sum(int(e.get('lost') or 0) for e in rows)})", loc="right")
    ax.legend(fontsize=6, frameon=False, loc="lower right")
    return _save(fig, path)


# --- the figures the docs print ------------------------------------------------------------------
def _rows(text: str, heading: str) -> list[list[str]]:
    """The body rows of the first table after ``heading`` in a Markdown text, cells stripped."""
    after = text[text.index(heading):]
    lines = after.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        table.append([c.strip().strip("*").strip() for c in line.strip().strip("|").split("|")])
    return table


def _number(cell: str):
    try:
        return float(cell.replace("**", ""))
    except ValueError:
        return None


def results_from_performance(text: str) -> list[dict]:
    """The results table of docs/performance.md (the one with a ``t250 p50 / p99 ms`` column)."""
    units = {"KiB": 1 << 10, "MiB": 1 << 20}
    out = []
    for cells in _rows(text, "| scenario | size |"):
        name = re.sub(r"\s*\(.*\)$", "", cells[0])
        n, unit = cells[1].split()
        p50, p99 = (_number(x) for x in cells[4].split("/"))
        out.append({"name": name, "size": int(float(n) * units[unit]), "size_label": cells[1],
                    "acked_per_s": _number(cells[2]), "delivered_per_s": _number(cells[3]),
                    "t250_p50_ms": p50, "t250_p99_ms": p99})
    return out


def figures_from_reliability(text: str) -> list[dict]:
    """The fault table of docs/reliability.md (what ``proof/report.py`` writes)."""
    keys = ("group", "name", "backend", "runs", "acked", "delivered", "duplicated", "lost")
    out = []
    for cells in _rows(text, "## Crash and fault injection"):
        e = dict(zip(keys, cells))
        for k in keys[3:]:
            e[k] = int(e[k]) if e[k].isdigit() else None
        out.append(e)
    return out


def draw(results: list[dict] | None, figures: list[dict] | None, out: Path = DOCS) -> list[Path]:
    """Every chart the given results allow, into ``out``."""
    made = []
    if results:
        made += [throughput_chart(results, out / THROUGHPUT), t250_chart(results, out / T250)]
    if figures:
        made.append(faults_chart(figures, out / FAULTS))
    return made


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.charts", description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="?", type=Path, help="bench/gateway.py's results JSON")
    ap.add_argument("--figures", type=Path, help="a proof run's figures.json")
    ap.add_argument("--from-docs", action="store_true", help="the figures docs/*.md print now")
    ap.add_argument("--out", type=Path, default=DOCS, help="where the PNGs go (default docs/)")
    a = ap.parse_args(argv)
    results = json.loads(a.results.read_text())["results"] if a.results else None
    figures = json.loads(a.figures.read_text()).get("entries") if a.figures else None
    if a.from_docs:
        results = results or results_from_performance((DOCS / "performance.md").read_text())
        figures = figures or figures_from_reliability((DOCS / "reliability.md").read_text())
    if not results and not figures:
        ap.error("give a results JSON, --figures or --from-docs")
    for path in draw(results, figures, a.out):
        print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
