"""report.html of a real sweep, in a real headless Chromium: first screen, DOM after the scripts ran, console.

QBENCH_SCREENSHOT_DIR=docs python -m pytest tests/browser  writes docs/report-first-screen.png.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd

import chromium
from html_doc import parse

# Evaluated in the page after the screenshot and the DOM dump, in this order.
NAMES_JS = ("[...document.querySelectorAll('#board tbody tr')].filter(r => !r.hidden)"
            ".map(r => r.cells[0].textContent.trim())")
JS = {
    "viewport": "[innerWidth, innerHeight, devicePixelRatio]",
    # how far down the first screen each block ends (CSS px from the top; the viewport is 900 high)
    "bottom": "Object.fromEntries(['verdict', 'verdict-variant', 'verdict-langs', 'board-filter', 'board']"
              ".map(id => [id, document.getElementById(id) && document.getElementById(id)"
              ".getBoundingClientRect().bottom]))",
    "board_top": "document.querySelector('#board thead').getBoundingClientRect().top",
    "pareto": "(() => { const s = document.querySelector('#pareto svg'); const b = s && s.getBoundingClientRect();"
              " return s ? [b.width, b.height, s.querySelectorAll('path').length] : null; })()",
    "filter_minmax": "(() => { const f = document.getElementById('board-filter'); f.value = 'MINMAX s8s8';"
                     " f.dispatchEvent(new Event('input')); return [" + NAMES_JS + ", "
                     "document.getElementById('board-count').textContent]; })()",
    "filter_none": "(() => { const f = document.getElementById('board-filter'); f.value = 'no-such-variant';"
                   " f.dispatchEvent(new Event('input')); return " + NAMES_JS + "; })()",
    "filter_cleared": "(() => { const f = document.getElementById('board-filter'); f.value = '';"
                      " f.dispatchEvent(new Event('input')); return " + NAMES_JS + "; })()",
    "sorted_by_name": "(() => { document.querySelector('#board thead th').click(); return " + NAMES_JS + "; })()",
}


def _expected_verdict(run_dir: Path) -> tuple[str, str]:
    """(state, variant) by the verdict's rule, from results.parquet and manifest.json alone."""
    df = pd.read_parquet(run_dir / "results.parquet")
    m = json.loads((run_dir / "manifest.json").read_text())
    df = df[(df.status == "ok") & (df.backend == "ort")]
    cands = [v for v, i in m["variants"].items() if v != "fp32" and i["status"] == "ok"]

    def s(metric, sl):
        return df[(df.metric == metric) & (df.slice == sl)].set_index("variant").value

    batch = "batch=%d" % min(int(x.split("=")[1]) for x in df[df.metric == "latency_p50_ms"].slice)
    lat, gate = s("latency_p50_ms", batch), s("gate", "all")
    if (run_dir / "samples.parquet").exists():  # the interval decision (qbench.report.decision), three states
        from qbench.report import decision as dn

        dec = {v: dn.for_run(pd.read_parquet(run_dir / "samples.parquet"), m, v) for v in cands}
        passing = [v for v in cands if dec[v].state == dn.PASS]
        undecided = [v for v in cands if dec[v].state == dn.INCONCLUSIVE]
        if passing:
            return "ships", min(passing, key=lambda v: lat.get(v, float("inf")))
        if undecided:  # the one that needs the fewest test sentences to decide
            return "undecided", min(undecided, key=lambda v: (max(x.n_needed or 0 for x in dec[v].langs),
                                                              lat.get(v, float("inf"))))
        return "nothing", min(cands, key=lambda v: max(x.drop for x in dec[v].langs))
    passing = [v for v in cands if gate.get(v, 0.0) >= 0.5]
    if passing:
        return "ships", min(passing, key=lambda v: lat.get(v, float("inf")))
    drops = df[df.metric == "worst_lang_drop"].set_index("variant").value
    return "nothing", min((v for v in cands if v in drops.index), key=lambda v: drops[v])


def _save(png: bytes, tmp_path: Path, name: str) -> Path:
    out = tmp_path / name
    out.write_bytes(png)
    if os.environ.get("QBENCH_SCREENSHOT_DIR"):
        d = Path(os.environ["QBENCH_SCREENSHOT_DIR"])
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(out, d / name)
    return out


def test_report_of_a_real_sweep_in_chromium(chromium_binary, small_mt_run, tmp_path):
    run_dir = small_mt_run
    page = chromium.load(run_dir / "report.html", binary=chromium_binary, evaluate=JS, timeout=90)

    # nothing went wrong in the page, and it asked for nothing but itself
    assert page.errors == []
    assert set(page.requests) <= {(run_dir / "report.html").resolve().as_uri()}

    # the first screen, as a laptop shows it
    assert chromium.png_size(page.png) == chromium.VIEWPORT
    assert page.values["viewport"] == [*chromium.VIEWPORT, 1]
    _save(page.png, tmp_path, "report-first-screen.png")

    # the DOM after the scripts ran: one leaderboard row per variant of results.parquet, in manifest order
    df = pd.read_parquet(run_dir / "results.parquet")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    variants = list(dict.fromkeys(df.variant))
    assert sorted(variants) == sorted(manifest["variants"]) and len(variants) == 3
    doc = parse(page.dom)
    board = doc.tables["board"]
    assert [cells[0][0] for _, cells in board[1:]] == list(manifest["variants"])
    assert doc.ids["board-count"].text == "3 variants"  # the filter script ran once on load

    # the Pareto plot is there, and drawn
    assert "pareto" in doc.ids and "<svg" in page.dom[page.dom.index('id="pareto"'):]
    width, height, paths = page.values["pareto"]
    assert width > 300 and height > 150 and paths > 10

    # the verdict names the variant the rule picks, and it and the cost per language fit the first screen
    state, want = _expected_verdict(run_dir)
    assert doc.ids["verdict"].attrs["data-state"] == state
    assert doc.ids["verdict-variant"].text == want
    langs = {s.split("=", 1)[1] for s in df[df.metric == "delta_bleu"].slice if s.startswith("lang=")}
    assert len(langs) == 28
    assert sorted(c.parts[0] for c in doc.by_class("chip")) == sorted(langs)
    bottom = page.values["bottom"]
    assert bottom["verdict"] <= chromium.VIEWPORT[1] and bottom["verdict-langs"] <= bottom["verdict"]
    assert bottom["board-filter"] < chromium.VIEWPORT[1] and page.values["board_top"] < chromium.VIEWPORT[1]
    pick = [cells[0][0] for cls, cells in board[1:] if "pick" in cls.split()]
    assert pick == [want]

    # the filter box hides rows by name (every word, any case) and brings them back; sorting still works
    names = list(manifest["variants"])
    hits, count = page.values["filter_minmax"]
    assert hits == [n for n in names if "minmax" in n and "s8s8" in n] and count == f"{len(hits)} of 3 variants"
    assert page.values["filter_none"] == []
    assert page.values["filter_cleared"] == names
    assert page.values["sorted_by_name"] == sorted(names)


def test_console_errors_are_detected(chromium_binary, small_mt_run, tmp_path):
    """The detection the test above relies on: a copy of the same report with a throwing script and a remote
    image is caught (the exception, the failed load, and the request that left the page)."""
    html = (small_mt_run / "report.html").read_text(encoding="utf-8")
    assert html.count("</body>") == 1
    broken = tmp_path / "broken.html"
    broken.write_text(html.replace("</body>", '<script>throw new Error("x")</script>\n'
                                              '<img src="http://127.0.0.1:9/remote.png" alt=""></body>'),
                      encoding="utf-8")
    page = chromium.load(broken, binary=chromium_binary, timeout=90)
    assert any(e.startswith("uncaught: Error: x") for e in page.errors), page.errors
    assert "http://127.0.0.1:9/remote.png" in page.requests
    assert any("127.0.0.1:9/remote.png" in e for e in page.errors), page.errors
    # and the report's own script still ran before it
    assert parse(page.dom).ids["board-count"].text == "3 variants"


def test_first_screen_of_the_12_variant_multilingual_sweep(chromium_binary, tmp_path):
    """The committed 12-variant, 28-language Django sweep, re-rendered by this code: the first 900 px say what
    ships (here: nothing, and the closest) and what it costs in every language."""
    from qbench.report.render import render

    src = Path(__file__).resolve().parents[2] / "reports" / "example-django-multi"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("results.parquet", "manifest.json"):  # the report is made from these two files alone
        shutil.copy(src / name, run_dir / name)
    page = chromium.load(render(run_dir), binary=chromium_binary, evaluate=JS, timeout=90)
    assert page.errors == []
    _save(page.png, tmp_path, "report-django-multi.png")
    doc = parse(page.dom)
    df = pd.read_parquet(run_dir / "results.parquet")
    assert len(doc.tables["board"]) - 1 == df.variant.nunique() == 12
    state, want = _expected_verdict(run_dir)
    assert (doc.ids["verdict"].attrs["data-state"], doc.ids["verdict-variant"].text) == (state, want)
    langs = {s.split("=", 1)[1] for s in df[df.metric == "delta_bleu"].slice if s.startswith("lang=")}
    assert len(langs) == 28 and sorted(c.parts[0] for c in doc.by_class("chip")) == sorted(langs)
    bottom = page.values["bottom"]
    assert bottom["verdict-langs"] <= bottom["verdict"] <= chromium.VIEWPORT[1]
    assert page.values["board_top"] < chromium.VIEWPORT[1]
