"""report.html and the Markdown table of a translation run, from a synthetic run directory built in code."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from html_doc import parse
from qbench.report import render as report
from qbench.cli import main
from qbench.report.results import metric_rows, write_manifest, write_results

LANGS = {"de": (34.56, 61.20), "fr": (40.10, 65.30), "ja": (20.30, 30.75)}  # FP32 (BLEU, chrF) per language
OK_VARIANTS = ["ort_dynamic", "minmax+none+s8s8@balanced"]
FAILED = "entropy+none+s8s8"
ERROR = 'decoder <script>alert("x")</script> & friends: QDQ scale missing'
# variant -> metric -> slice -> (delta, lo, hi, p)
DELTAS = {
    "ort_dynamic": {
        "bleu": {"de": (-0.42, -0.80, -0.05, 0.03), "fr": (0.12, -0.20, 0.45, 0.46),
                 "ja": (-1.52, -2.10, -0.95, 0.0), "all": (-0.606667, -0.90, -0.31, 0.0)},
        "chrf": {"de": (-0.30, -0.55, 0.02, 0.08), "fr": (0.05, -0.10, 0.20, 0.61),
                 "ja": (-0.90, -1.40, -0.41, 0.002), "all": (-0.383333, -0.60, -0.17, 0.004)},
    },
    "minmax+none+s8s8@balanced": {
        "bleu": {"de": (-0.05, -0.30, 0.20, 0.71), "fr": (0.31, 0.02, 0.60, 0.04),
                 "ja": (-0.60, -1.00, -0.21, 0.006), "all": (-0.113333, -0.35, 0.12, 0.34)},
        "chrf": {"de": (0.0, -0.15, 0.15, 1.0), "fr": (0.20, -0.01, 0.41, 0.07),
                 "ja": (-0.25, -0.50, 0.01, 0.06), "all": (-0.016667, -0.17, 0.14, 0.83)},
    },
}
GATES = {"ort_dynamic": (0.0, "ja", 1.52), "minmax+none+s8s8@balanced": (1.0, "ja", 0.60)}
LATENCY = {"fp32": (120.0, 410.5), "ort_dynamic": (41.2, 180.5), "minmax+none+s8s8@balanced": (55.7, 230.25)}


def _metrics(vid: str) -> list[tuple[str, str, float, str]]:
    """The rows the translation sweep writes for one ok variant."""
    out = []
    for i, metric in enumerate(("bleu", "chrf")):
        for lang, base in LANGS.items():
            d = DELTAS.get(vid, {}).get(metric, {}).get(lang, (0.0,))[0]
            out.append((metric, f"lang={lang}", base[i] + d, "score"))
        macro = sum(b[i] for b in LANGS.values()) / len(LANGS)
        out.append((metric, "all", macro + DELTAS.get(vid, {}).get(metric, {}).get("all", (0.0,))[0], "score"))
        for sl, (d, lo, hi, p) in DELTAS.get(vid, {}).get(metric, {}).items():
            sl = sl if sl == "all" else f"lang={sl}"
            out += [(f"delta_{metric}", sl, d, "score"), (f"delta_{metric}_lo", sl, lo, "score"),
                    (f"delta_{metric}_hi", sl, hi, "score"), (f"delta_{metric}_p", sl, p, "score")]
    out.append(("exact_match_vs_fp32", "all", {"fp32": 1.0, "ort_dynamic": 0.612}.get(vid, 0.7345), "fraction"))
    if vid in GATES:
        g, lang, drop = GATES[vid]
        out += [("gate", "all", g, "pass"), ("worst_lang_drop", f"lang={lang}", drop, "score")]
    for b, scale in (("batch=1", 1.0), ("batch=8", 3.0)):
        p50, p99 = LATENCY[vid]
        out += [("latency_p50_ms", b, p50 * scale, "ms"), ("latency_p90_ms", b, p99 * scale * 0.9, "ms"),
                ("latency_p99_ms", b, p99 * scale, "ms"), ("throughput", b, 1000 / p50, "items/s")]
    for graph, n in (("encoder", 24), ("decoder", 36)):  # the translation sweep counts nodes per graph
        q = 0 if vid == "fp32" else n - 1
        out += [("nodes_quantized", f"graph={graph},op=MatMul", q, "count"),
                ("nodes_float", f"graph={graph},op=MatMul", n - q, "count")]
    return out + [("size_mb", "all", 300.0 if vid == "fp32" else 77.5, "MB"), ("eval_seconds", "all", 12.5, "s")]


def _manifest(task: str = "translation", variants: dict | None = None) -> dict:
    return {
        "qbench_version": "0.1.0", "run_id": "20260101T000000Z-abc123", "sweep": "mt-synthetic",
        "created_utc": "2026-01-01T00:00:00+00:00", "task": task,
        "config": {"name": "mt-synthetic", "task": task, "backend": {"name": "ort", "threads": 4}},
        "versions": {"qbench": "0.1.0", "onnx": "1.23.2", "onnxruntime": "1.32.0"},
        "host": {"platform": "Linux", "python": "3.11", "cpu": "Test CPU", "cpu_count": 4},
        "model": {"source": "pkg:tiny_marian", "onnx_sha256": "ab" * 32, "opset": 17,
                  "export_max_abs_diff": 7.1e-05, "export_max_abs_diffs": {"encoder": 2.5e-06, "decoder": 7.1e-05}},
        "data": {"name": "django_po", "sha256": {"evaluation": "ef" * 32},
                 "calibration": {"split": "calibration", "sampler": "lang_balanced", "n": 96, "seed": 0},
                 "calibration_sets": {}, "evaluation": {"split": "test", "n": 300}},
        "gate": {"metric": "bleu", "max_drop": 1.0, "per": "lang"},
        "latency_inputs": {"batch=1": {"shape": [1, 24]}, "batch=8": {"shape": [8, 32]}},
        "variants": variants or {},
    }


def _desc(vid: str) -> dict:
    return {"variant": vid, "kind": "baseline" if "+" not in vid else "qbench", "calibrator": vid.split("+")[0],
            "exclusion": "", "flavor": "", "calibration_set": "", "backend": "ort"}


@pytest.fixture
def mt_run(tmp_path) -> Path:
    rows, variants = [], {}
    for vid in ["fp32", *OK_VARIANTS, FAILED]:
        sig = f"cal:{vid}|be:ort"
        variants[vid] = {"status": "ok", **_desc(vid), "signature": sig}
        if vid == FAILED:
            variants[vid].update(status="failed", error=ERROR)
            rows += metric_rows(_desc(vid), sig, "r", [("status", "all", float("nan"), "")], status="failed")
        else:
            rows += metric_rows(_desc(vid), sig, "r", _metrics(vid))
    write_results(rows, tmp_path)
    write_manifest(_manifest(variants=variants), tmp_path)
    return tmp_path


def _tables(html: str) -> dict:
    """Every <table id=...>: rows of (text, class) cells."""
    return {k: [cells for _, cells in rows] for k, rows in parse(html).tables.items()}


def _grid(table) -> dict[str, dict[str, tuple[str, str]]]:
    """Heatmap table -> {language: {column header: (text, class)}}."""
    head = [t for t, _ in table[0]]
    return {row[0][0]: dict(zip(head, row)) for row in table[1:]}


@pytest.fixture
def html(mt_run) -> str:
    return report.render(mt_run).read_text(encoding="utf-8")


def test_bleu_heatmap_cells_hold_the_deltas_with_significance_markers(html):
    t = _tables(html)
    grid = _grid(t["hm-bleu"])
    assert list(grid) == ["all (macro)", "fr", "de", "ja"]  # macro first, then FP32 BLEU best first
    assert [h for h, _ in t["hm-bleu"][0]] == ["language", "FP32BLEU", *OK_VARIANTS]
    assert {lang: grid[lang]["FP32BLEU"][0] for lang in grid} == {
        "all (macro)": "31.65", "fr": "40.10", "de": "34.56", "ja": "20.30"}
    want = {  # text, CI excludes 0
        ("de", "ort_dynamic"): ("−0.42*", True), ("fr", "ort_dynamic"): ("+0.12", False),
        ("ja", "ort_dynamic"): ("−1.52*", True), ("all (macro)", "ort_dynamic"): ("−0.61*", True),
        ("de", OK_VARIANTS[1]): ("−0.05", False), ("fr", OK_VARIANTS[1]): ("+0.31*", True),
        ("ja", OK_VARIANTS[1]): ("−0.60*", True), ("all (macro)", OK_VARIANTS[1]): ("−0.11", False),
    }
    for (lang, vid), (text, sig) in want.items():
        got_text, cls = grid[lang][vid]
        assert got_text == text, (lang, vid)
        assert ("sig" in cls.split()) is sig, (lang, vid)
    assert FAILED not in grid["de"]


def test_chrf_heatmap_and_colours(html):
    grid = _grid(_tables(html)["hm-chrf"])
    assert grid["de"]["FP32chrF"][0] == "61.20"
    assert grid["de"]["ort_dynamic"][0] == "−0.30"  # CI [−0.55, +0.02] includes 0: no marker
    assert grid["de"][OK_VARIANTS[1]][0] == "0.00"
    assert grid["ja"]["ort_dynamic"][0] == "−0.90*"
    # drops red, gains green, zero white
    assert report._colour(-1.0, 1.0)[0] == "#d73027" and report._colour(1.0, 1.0)[0] == "#1a9850"
    assert report._colour(0.0, 1.0)[0] == "#ffffff"
    assert 'style="background:#ffffff;color:#1d2329" title="de · minmax+none+s8s8@balanced: ΔchrF 0.00' in html


def test_leaderboard_gate_badges_deltas_and_failed_variant(html):
    board = {row[0][0]: row for row in _tables(html)["board"][1:]}
    assert list(board) == ["fp32", *OK_VARIANTS, FAILED]
    head = [h for h, _ in _tables(html)["board"][0]]
    cell = {vid: dict(zip(head, row)) for vid, row in board.items()}
    assert cell["ort_dynamic"]["gate"][0] == "FAILworst ja: BLEU drop 1.52"
    assert cell[OK_VARIANTS[1]]["gate"][0] == "PASSworst ja: BLEU drop 0.60"
    assert '<span class="badge fail">FAIL</span><br><span class="muted">worst ja: BLEU drop 1.52</span>' in html
    assert '<span class="badge pass">PASS</span><br><span class="muted">worst ja: BLEU drop 0.60</span>' in html
    assert cell["fp32"]["gate"][0] == "" and cell[FAILED]["gate"][0] == ""
    assert cell["ort_dynamic"]["ΔBLEU vs FP32 [95% CI]"] == ("−0.61 [−0.90, −0.31]", "neg")
    assert board["ort_dynamic"][head.index("p")][0] == "<0.001"  # the first p: BLEU's
    assert cell[OK_VARIANTS[1]]["ΔBLEU vs FP32 [95% CI]"] == ("−0.11 [−0.35, +0.12]", "")
    assert cell["ort_dynamic"]["BLEU"][0] == "31.05" and cell["fp32"]["chrF"][0] == "52.42"
    assert cell["ort_dynamic"]["exact matchvs FP32"][0] == "61.2%"
    assert cell["ort_dynamic"]["p50 / p99 msbatch=8"][0] == "123.60 / 541.50"
    assert cell[FAILED]["status"][0] == f"failed: {ERROR}"
    assert cell["fp32"]["MatMul+Gemmint8 / float"][0] == "0 / 60"  # encoder + decoder
    assert cell["ort_dynamic"]["MatMul+Gemmint8 / float"][0] == "58 / 2"
    assert '<tr class="failed"' in html
    assert "Gate: a variant fails when its BLEU drops by more than 1.0 against FP32 in any language." in html


def test_strings_are_escaped_and_the_page_is_self_contained(html):
    assert html.count("<script") == 1  # the sort script; the error's tag is text
    assert "decoder &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; friends" in html
    head = html.split("<svg", 1)[0]
    assert "http://" not in head and "https://" not in head and "<link" not in html and "@import" not in html
    assert "sha256 <code>abababababababab</code>" in html and "300 sentences in 3 languages" in html
    assert html.count("export max |ONNX−PyTorch|") == 1 and "|ONNX−PyTorch| encoder 2.50e-06 · decoder 7.10e-05" in html


def test_pareto_plot_of_bleu_against_latency(html):
    assert "<h2>BLEU against latency</h2>" in html
    svg = html[html.index("<svg"):html.index("</svg>")]
    assert "BLEU (macro mean over languages)" in svg  # matplotlib writes each label as a comment
    assert "p50 latency (ms), batch=1" in svg and "p50 latency (ms), batch=8" in svg
    assert "accuracy@1" not in html


def test_markdown_table_row(mt_run, capsys):
    md = report.markdown(mt_run)
    lines = md.splitlines()
    assert lines[0] == ("| variant | BLEU | ΔBLEU [95% CI] | chrF | worst-language drop | gate | p50 ms, batch=1 | "
                        "p50 ms, batch=8 | status |")
    assert "| `ort_dynamic` | 31.05 | −0.61 [−0.90, −0.31] | 52.03 | ja 1.52 | FAIL | 41.20 | 123.60 | ok |" in lines
    assert ("| `minmax+none+s8s8@balanced` | 31.54 | −0.11 [−0.35, +0.12] | 52.40 | ja 0.60 | PASS | 55.70 | "
            "167.10 | ok |") in lines
    assert "| `fp32` | 31.65 |  | 52.42 |  |  | 120.00 | 360.00 | ok |" in lines
    failed = next(line for line in lines if line.startswith(f"| `{FAILED}`"))
    assert failed.endswith("| failed: " + ERROR.replace("<", "&lt;") + " |") and failed.count(" | ") == 8
    assert "300 evaluation sentences" in md and "Gate: a variant fails when its BLEU drops by more than 1.0" in md
    assert main(["report", str(mt_run), "--markdown"]) == 0
    assert capsys.readouterr().out.strip() == md


def test_heatmap_stays_compact_with_28_languages_and_12_variants(tmp_path):
    langs = [f"l{i:02d}" for i in range(28)]
    vids = ["fp32"] + [f"v{j}+none+s8s8@balanced" for j in range(12)]
    rows, variants = [], {}
    for j, vid in enumerate(vids):
        variants[vid] = {"status": "ok", **_desc(vid), "signature": vid}
        ms = [("bleu", f"lang={c}", 20.0 + i, "score") for i, c in enumerate(langs)] + [("bleu", "all", 33.5, "score")]
        if vid != "fp32":
            for sl in ["all"] + [f"lang={c}" for c in langs]:
                ms += [("delta_bleu", sl, -0.1 * j, "score"), ("delta_bleu_lo", sl, -0.1 * j - 0.3, "score"),
                       ("delta_bleu_hi", sl, -0.1 * j + 0.3, "score"), ("delta_bleu_p", sl, 0.5, "score")]
        ms += [("latency_p50_ms", "batch=1", 10.0 + j, "ms"), ("latency_p99_ms", "batch=1", 12.0 + j, "ms")]
        rows += metric_rows(_desc(vid), vid, "r", ms)
    write_results(rows, tmp_path)
    write_manifest({**_manifest(variants=variants), "gate": None}, tmp_path)
    t = _tables(report.render(tmp_path).read_text(encoding="utf-8"))
    assert len(t["hm-bleu"]) == 1 + 1 + 28 and all(len(r) == 2 + 12 for r in t["hm-bleu"])
    assert [r[0][0] for r in t["hm-bleu"][2:]] == langs[::-1]  # best FP32 BLEU first
    assert t["hm-bleu"][2][-1] == ("−1.20*", "hc sig")  # v11 (j=12): −1.2 [−1.5, −0.9]
    assert "gate" not in [h for h, _ in t["board"][0]]


def test_retrieval_manifest_still_renders_the_retrieval_report(tmp_path):
    variants = {}
    rows = []
    for vid, acc in (("fp32", 0.98), ("minmax+none+s8s8", 0.955)):
        variants[vid] = {"status": "ok", **_desc(vid), "signature": f"sig<{vid}>"}
        rows += metric_rows(_desc(vid), vid, "r", [
            ("accuracy_at_1", "all", acc, "fraction"), ("mrr", "all", acc, "fraction"),
            ("cosine_vs_fp32", "all", 1.0, "cosine"), ("latency_p50_ms", "batch=1", 3.0, "ms"),
            ("latency_p99_ms", "batch=1", 4.0, "ms"), ("size_mb", "all", 90.0, "MB")])
    m = _manifest(task="retrieval", variants=variants)
    del m["config"]["task"], m["task"], m["gate"]  # runs from before tasks existed
    m["model"] = {"source": "pkg:m", "onnx_sha256": "0" * 64, "export_max_abs_diff": 1e-7, "opset": 17}
    write_results(rows, tmp_path)
    write_manifest(m, tmp_path)
    assert report.task_of(json.loads((tmp_path / "manifest.json").read_text())) == "retrieval"
    html = report.render(tmp_path).read_text(encoding="utf-8")
    assert "<th>acc@1</th>" in html and "<h2>Accuracy against latency</h2>" in html and "hm-bleu" not in html
    assert '<td class="l v">minmax+none+s8s8</td>' in html and "<td class=\"neg\">-2.50</td>" in html
    assert 'title="sig&lt;fp32&gt;"' in html
    assert ", sha256 <code>0000000000000000</code>, export max |ONNX−PyTorch| 1.00e-07" in html
    assert report.markdown(tmp_path).splitlines()[2].startswith("| `fp32` | 0.9800 | +0.00 | 0.9800 | 1.0000 |")


def test_gate_on_the_macro_mean_names_no_language(mt_run):
    m = json.loads((mt_run / "manifest.json").read_text())
    m["gate"] = {"metric": "chrf", "max_drop": 0.5, "per": "all"}
    write_manifest(m, mt_run)
    df = pd.read_parquet(mt_run / "results.parquet")
    df.loc[df.metric == "worst_lang_drop", "slice"] = "all"
    df.to_parquet(mt_run / "results.parquet", index=False)
    html = report.render(mt_run).read_text(encoding="utf-8")
    assert '<span class="badge fail">FAIL</span><br><span class="muted">macro mean: chrF drop 1.52</span>' in html
    assert "Gate: a variant fails when its chrF drops by more than 0.5 against FP32 overall." in html
    assert "| `ort_dynamic` | 31.05 | −0.61 [−0.90, −0.31] | 52.03 | macro 1.52 | FAIL |" in report.markdown(mt_run)


@pytest.mark.parametrize("x, text", [(-0.4249, "−0.42"), (0.004, "0.00"), (-0.004, "0.00"), (1.5, "+1.50"),
                                     (None, ""), (float("nan"), "")])
def test_signed(x, text):
    assert report.signed(x) == text


def test_pvalue_and_task_default():
    assert report.pvalue(0.0) == "<0.001" and report.pvalue(0.0312) == "0.031" and report.pvalue(None) == ""
    assert report.task_of({}) == "retrieval" and report.task_of({"config": {"task": "translation"}}) == "translation"


def test_worst_language_cell_names_the_language_of_the_largest_drop():
    """The committed Django run, decided by the release decision: its 'worst-language drop' cell shows the largest
    per-language point drop and that drop's own language (the deciding language can be another one), checked
    against the per-language delta_bleu rows of results.parquet."""
    run = Path(__file__).resolve().parents[2] / "reports" / "example-django-multi"
    df = pd.read_parquet(run / "results.parquet")
    md = report.markdown(run)
    checked = 0
    for line in md.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) < 6 or not cells[4]:
            continue
        vid, (lang, drop) = cells[0].strip("`"), cells[4].split()
        d = df[(df.variant == vid) & (df.metric == "delta_bleu") & df.slice.str.startswith("lang=")]
        low = d.loc[d.value.idxmin()]
        assert (lang, float(drop)) == (low.slice.split("=")[1], round(-low.value, 2)), vid
        checked += 1
    assert checked == 11
