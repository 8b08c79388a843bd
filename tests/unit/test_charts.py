"""bench/charts.py: the PNGs of docs/ drawn from bench and proof results, and from the docs' tables.

Needs matplotlib (the ``test`` extra has it). The charts the docs embed are the ones these
functions draw from the tables beside them: redrawing gives the same picture (the same bytes
with the same matplotlib).
"""

from __future__ import annotations

import json
import random

import pytest

from bench import charts
from bench.loadgen import percentile
from proof.report import Run, render

PNG = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.skipif(not charts.available(), reason="matplotlib is not installed (pip install -e '.[test]')")


def same_picture(a, b) -> bool:
    """The same pixels, but for a font rendering nuance of another matplotlib (exact bytes here)."""
    if a.read_bytes() == b.read_bytes():
        return True
    from matplotlib.image import imread
    x, y = imread(a), imread(b)
    return x.shape == y.shape and float(abs(x - y).mean()) < 0.01


def test_quantiles_are_the_benchmarks_percentiles():
    values = [random.Random(7).expovariate(0.05) for _ in range(1001)]
    q = charts.quantiles(values)
    for p in (1, 50, 99, 99.9, 100):
        assert q[str(p)] == round(percentile(values, p), 2)
    assert list(q.values()) == sorted(q.values()) and charts.quantiles([]) == {}


def test_the_docs_tables_are_read_whole():
    results = charts.results_from_performance((charts.DOCS / "performance.md").read_text())
    by = {(r["name"], r["size_label"]): r for r in results}
    assert by[("floor-smtp", "4 KiB")]["acked_per_s"] == 1903.1 and by[("floor-smtp", "4 KiB")]["delivered_per_s"] is None
    assert (by[("securemail", "1 MiB")]["size"], by[("securemail", "1 MiB")]["t250_p99_ms"]) == (1 << 20, 400.0)
    assert {n for n, _ in by} >= set(charts.BASELINES)
    figures = charts.figures_from_reliability((charts.DOCS / "reliability.md").read_text())
    kill = next(e for e in figures if e["name"] == "kill -9 under load" and e["backend"] == "sqlite")
    assert kill["acked"] == kill["delivered"] > 1000 and kill["lost"] == 0
    assert any(e["acked"] is None for e in figures)                  # the "—" rows are kept, not charted


def test_the_embedded_pngs_are_what_the_tables_draw(tmp_path):
    assert charts.main(["--from-docs", "--out", str(tmp_path)]) == 0
    for name in (charts.THROUGHPUT, charts.T250, charts.FAULTS):
        drawn = (tmp_path / name).read_bytes()
        assert drawn.startswith(PNG) and len(drawn) < 100 << 10
        assert same_picture(tmp_path / name, charts.DOCS / name), \
            f"docs/{name} is not what `python -m bench.charts --from-docs` draws: run it"
    assert f"]({charts.THROUGHPUT})" in (charts.DOCS / "performance.md").read_text()
    assert f"]({charts.T250})" in (charts.DOCS / "performance.md").read_text()
    assert f"]({charts.FAULTS})" in (charts.DOCS / "reliability.md").read_text()


def test_results_files_from_bench_and_proof_draw_every_chart(tmp_path):
    rng = random.Random(1)
    results = [{"name": name, "size": size, "size_label": label, "acked_per_s": rate,
                "delivered_per_s": rate * 0.9 if name in ("securemail", "gpg-filter") else None,
                "t250_p50_ms": 5.0, "t250_p99_ms": 50.0,
                "t250_quantiles_ms": charts.quantiles([rng.uniform(2, 60) for _ in range(500)])}
               for size, label in ((4096, "4 KiB"), (1 << 20, "1 MiB"))
               for name, rate in zip(charts.BASELINES, (1900.0, 1100.0, 100.0, 440.0))]
    (tmp_path / "results.json").write_text(json.dumps({"results": results}))
    figures = [{"group": "crash", "name": "kill -9 under load", "backend": "sqlite", "acked": 100, "delivered": 100,
                "duplicated": 3, "lost": 0}, {"group": "keys", "name": "at start: TLS key removed", "backend": "sqlite"}]
    (tmp_path / "figures.json").write_text(json.dumps({"entries": figures}))
    out = tmp_path / "docs"
    assert charts.main([str(tmp_path / "results.json"), "--figures", str(tmp_path / "figures.json"),
                        "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted((charts.THROUGHPUT, charts.T250, charts.FAULTS))
    assert all(p.read_bytes().startswith(PNG) for p in out.iterdir())


def test_the_proof_note_embeds_its_chart_beside_the_fault_table(tmp_path):
    run = Run(figures=[{"group": "crash", "name": "kill", "backend": "sqlite", "runs": 1, "acked": 2,
                        "delivered": 2, "duplicated": 0, "lost": 0, "leaks": 0}], hostile=[], cases=[],
              meta={"mode": "fast", "pytest_exit": 0, "seconds": 1, "finished": 0})
    note = render(run)
    table_end = note.index("| crash | kill |")
    assert note.index(f"]({charts.FAULTS})") > table_end > 0
    assert note.index(f"]({charts.FAULTS})") < note.index("### Details")
