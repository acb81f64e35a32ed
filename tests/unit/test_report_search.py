"""The "Automatic exclusion search" section of report.html (exclude: auto), from a synthetic run built in code."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from html_doc import parse
from qbench.report import render as report
from qbench.report.results import metric_rows, write_manifest, write_results

AUTO = "minmax+auto+s8s8"
EVIL = "decoder:/decoder/layers.0/<script>alert(1)</script>"
# The search's ranking, most sensitive first (neither alphabetical nor the parquet's row order).
RANKING = ["decoder:/decoder/layers.1/encoder_attn", "decoder:/lm_head", "encoder:/encoder/layers.0/fc1",
           "encoder:/encoder/layers.1/self_attn", "encoder:/encoder/layers.1/fc2", EVIL]
LABELS = ["decoder: layers.1/encoder_attn", "decoder: lm_head", "encoder: layers.0/fc1",
          "encoder: layers.1/self_attn", "encoder: layers.1/fc2", "decoder: layers.0/<script>alert(1)</script>"]
ALL_INT8_KL = {"all": 1.0, "de": 1.2, "fr": 0.8}
# unit -> (exclude_only KL {all, de, fr}, quantize_only KL "all")
KL = {
    RANKING[0]: ({"all": 0.4, "de": 0.5, "fr": 0.3}, 0.3),
    RANKING[1]: ({"all": 0.75, "de": 0.9, "fr": 0.6}, 0.1),
    RANKING[2]: ({"all": 0.95, "de": 1.1, "fr": 0.8}, 0.02),
    RANKING[3]: ({"all": 0.98, "de": 1.15, "fr": 0.81}, 0.01),
    RANKING[4]: ({"all": 1.0, "de": 1.2, "fr": 0.8}, 0.005),
    RANKING[5]: ({"all": 1.01, "de": 1.25, "fr": 0.77}, 0.001),
}


def _step(k: int, quality: float, drop: float, ok: bool, seconds: float) -> dict:
    return {"k": k, "excluded_units": RANKING[:k], "excluded_linear_nodes": 6 * k, "quality_all": quality,
            "worst_drop": drop, "worst": "fr", "pass": ok, "error": 1.0 / (k + 1), "seconds": seconds}


# 0, 1, 2, 4 until it passes, then bisection: 3 passes too; prefer: latency keeps 4, the faster one.
TRACE = [_step(0, 20.5, 9.75, False, 2.5), _step(1, 26.0, 3.25, False, 1.75), _step(2, 28.0, 1.5, False, 1.5),
         _step(4, 29.5, 0.25, True, 1.25), _step(3, 29.0, 0.75, True, 1.0)]
SEARCH = {
    "granularity": "block", "units": len(RANKING),
    "scoring_subset": {"split": "calibration", "n": 32, "seed": 7, "ids_sha256": "cd" * 32},
    "base_quality": {"de": 31.0, "fr": 29.0, "all": 30.0}, "ranking": RANKING, "trace": TRACE,
    "evaluations": len(TRACE), "passing": [3, 4], "smallest_passing": 3, "chosen_k": 4,
    "chosen_units": RANKING[:4], "prefer": "latency", "latency_p50_ms": {"k=3": 12.0, "k=4": 11.5, "batch": 1},
    "seconds": 93.4, "models_scored": 1 + 2 * len(RANKING) + len(TRACE),
    "confirmations": [{"k": 4, "worst_drop": 0.5, "worst": "fr", "pass": True, "quality_all": 31.5, "seconds": 9.0}],
}


def _desc(vid: str) -> dict:
    return {"variant": vid, "kind": "baseline" if "+" not in vid else "qbench", "calibrator": vid.split("+")[0],
            "exclusion": "auto" if vid == AUTO else "", "flavor": "", "calibration_set": "", "backend": "ort"}


def _metrics(vid: str) -> list[tuple[str, str, float, str]]:
    drop = {"fp32": 0.0, AUTO: 0.5}[vid]
    out = []
    for lang, bleu in (("de", 34.0), ("fr", 30.0)):
        out += [("bleu", f"lang={lang}", bleu - drop, "score"), ("delta_bleu", f"lang={lang}", -drop, "score")]
    out += [("bleu", "all", 32.0 - drop, "score"), ("delta_bleu", "all", -drop, "score")]
    if vid == AUTO:
        out += [("gate", "all", 1.0, "pass"), ("worst_lang_drop", "lang=fr", 0.5, "score")]
    return out + [("latency_p50_ms", "batch=1", 10.0, "ms"), ("latency_p99_ms", "batch=1", 12.0, "ms")]


def _sensitivity_rows() -> list[dict]:
    def row(mode, unit, metric, lang, value):
        return {"variant": AUTO, "mode": mode, "unit": unit, "metric": metric, "lang": lang, "value": value}

    rows = [row("all_int8", "", "kl", lang, v) for lang, v in ALL_INT8_KL.items()]
    rows.append(row("all_int8", "", "sqnr_db", "all", 12.0))
    for u, (ex, q) in reversed(KL.items()):  # the parquet's order is not the ranking's
        rows += [row("quantize_only", u, "kl", "all", q), row("quantize_only", u, "sqnr_db", "all", 30.0)]
        rows += [row("exclude_only", u, "kl", lang, v) for lang, v in ex.items()]
        rows += [row("exclude_only", u, "sqnr_db", "all", 14.0)]
        rows += [row("exclude_only", u, "quality", lang, 29.0) for lang in ("de", "fr", "all")]
    return rows


@pytest.fixture
def run(tmp_path) -> Path:
    rows, variants = [], {}
    for vid in ("fp32", AUTO):
        variants[vid] = {"status": "ok", **_desc(vid), "signature": f"sig:{vid}"}
        rows += metric_rows(_desc(vid), f"sig:{vid}", "r", _metrics(vid))
    variants[AUTO]["search"] = SEARCH
    gate = {"metric": "bleu", "max_drop": 1.0, "per": "lang"}
    manifest = {
        "qbench_version": "0.1.0", "run_id": "20260101T000000Z-search", "sweep": "auto-synthetic",
        "created_utc": "2026-01-01T00:00:00+00:00", "task": "translation", "gate": gate,
        "config": {"name": "auto-synthetic", "task": "translation", "backend": {"name": "ort", "threads": 2},
                   "gate": gate},
        "versions": {"qbench": "0.1.0"}, "host": {"platform": "Linux", "cpu": "Test CPU", "cpu_count": 2},
        "model": {"source": "pkg:tiny_marian"},
        "data": {"name": "django_po", "calibration": {"split": "calibration", "sampler": "random", "n": 16, "seed": 0},
                 "evaluation": {"split": "test", "n": 40}},
        "latency_inputs": {"batch=1": {"shape": [1, 24]}}, "variants": variants,
    }
    write_results(rows, tmp_path)
    write_manifest(manifest, tmp_path)
    pd.DataFrame(_sensitivity_rows()).to_parquet(tmp_path / "sensitivity.parquet", index=False)
    return tmp_path


def _doc(html: str):
    """Every <table id=...> as rows of (tr class, [cell text]); the text of every <h2>."""
    d = parse(html)
    d.tables = {k: [(cls, [t for t, _ in cells]) for cls, cells in rows] for k, rows in d.tables.items()}
    return d


def _section(html: str) -> str:
    start = html.index(f"Automatic exclusion search: {AUTO}")
    return html[start:html.index("<h2>Signatures</h2>")]


@pytest.fixture
def html(run) -> str:
    return report.render(run).read_text(encoding="utf-8")


def test_section_exists_only_for_the_auto_variant(html):
    heads = [h for h in _doc(html).h2 if h.startswith("Automatic exclusion search")]
    assert heads == [f"Automatic exclusion search: {AUTO}"]


def test_summary_paragraph(html):
    sec = _section(html)
    assert "Gate: BLEU may drop by at most 1.0 points against FP32 in any language" in sec
    assert ("scoring subset of 32 samples from the calibration split (seed 7, ids sha256 "
            "<code>cdcdcdcdcdcdcdcd</code>") in sec
    assert "where FP32 scores 30.00 (2 languages)" in sec
    assert "The 6 quantizable units (block granularity)" in sec
    assert "5 candidates evaluated against the gate, 18 models scored in all, 93.4 s wall." in sec
    assert ("Chosen: <b>k = 4</b>, 24 linear (MatMul/Gemm) nodes kept float "
            "(subset BLEU 29.50, worst drop 0.25 fr)") in sec
    assert "Passing candidates: 3, 4 (smallest k = 3)." in sec
    assert ("Picked by measured latency (prefer: latency), p50 at batch=1: k = 3 12.00 ms · k = 4 11.50 ms (chosen): "
            "faster than the smallest passing k.") in sec
    assert ('the full evaluation set (the leaderboard row): <span class="badge pass">PASS</span> '
            "worst BLEU drop 0.50 (fr)") in sec


def test_trace_table_rows_badges_and_chosen_row(html):
    table = _doc(html).tables["trace-1"]
    head, body = table[0][1], table[1:]
    assert head == ["step", "k", "excluded linear nodes", "BLEU (subset)", "worst drop", "where", "gate",
                    "error (KL)", "seconds"]
    assert len(body) == len(TRACE)
    cells = [dict(zip(head, c)) for _, c in body]
    assert [c["k"] for c in cells] == ["0", "1", "2", "4", "3"] and [c["step"] for c in cells] == list("12345")
    gates = [c["gate"] for c in cells]
    assert sum(g.startswith("PASS") for g in gates) == 2 and sum(g.startswith("FAIL") for g in gates) == 3
    chosen = [i for i, (cls, _) in enumerate(body) if "chosen" in cls.split()]
    assert chosen == [3]  # k = 4, evaluated fourth
    assert gates[3] == "PASSchosen" and all("chosen" not in g for i, g in enumerate(gates) if i != 3)
    assert cells[3] == {"step": "4", "k": "4", "excluded linear nodes": "24", "BLEU (subset)": "29.50",
                        "worst drop": "0.25", "where": "fr", "gate": "PASSchosen", "error (KL)": "0.2",
                        "seconds": "1.25"}
    assert cells[0]["BLEU (subset)"] == "20.50" and cells[0]["worst drop"] == "9.75"


def test_sensitivity_benefits_equal_hand_computed_values(run):
    df = pd.read_parquet(run / "sensitivity.parquet")
    s = report.sensitivity(df, AUTO, RANKING)
    assert s["metric"] == "kl" and s["all_int8"] == 1.0 and s["langs"] == ["de", "fr"]
    assert [r["unit"] for r in s["rows"]] == RANKING and [r["label"] for r in s["rows"]] == LABELS
    got = {r["unit"]: (r["benefit"], r["langs"]["de"], r["langs"]["fr"], r["quantize_only"]) for r in s["rows"]}
    want = {  # all-INT8 KL (1.0; de 1.2, fr 0.8) minus the exclude_only KL; quantize_only KL as is
        RANKING[0]: (0.6, 0.7, 0.5, 0.3), RANKING[1]: (0.25, 0.3, 0.2, 0.1), RANKING[2]: (0.05, 0.1, 0.0, 0.02),
        RANKING[3]: (0.02, 0.05, -0.01, 0.01), RANKING[4]: (0.0, 0.0, 0.0, 0.005),
        RANKING[5]: (-0.01, -0.05, 0.03, 0.001),
    }
    for u, w in want.items():
        assert got[u] == pytest.approx(w, abs=1e-12), u


def test_retrieval_benefit_is_the_relative_mse_from_sqnr():
    rows = [("all_int8", "", "sqnr_db", 10.0), ("exclude_only", "/m/layer.0/output", "sqnr_db", 20.0),
            ("quantize_only", "/m/layer.0/output", "sqnr_db", 30.0),
            ("exclude_only", "/m/layer.1/output", "sqnr_db", 10.0),
            ("quantize_only", "/m/layer.1/output", "sqnr_db", float("inf")),
            ("exclude_only", "/m/layer.0/output", "quality", 98.0)]
    df = pd.DataFrame([{"variant": "v", "mode": m, "unit": u, "metric": k, "lang": "all", "value": x}
                       for m, u, k, x in rows])
    s = report.sensitivity(df, "v", ["/m/layer.0/output", "/m/layer.1/output"])
    assert s["metric"] == "sqnr_db" and s["all_int8"] == pytest.approx(0.1)
    (a, b) = s["rows"]
    assert (a["label"], b["label"]) == ("layer.0/output", "layer.1/output")
    assert a["benefit"] == pytest.approx(0.1 - 0.01) and a["quantize_only"] == pytest.approx(0.001)
    assert b["benefit"] == pytest.approx(0.0) and b["quantize_only"] == 0.0 and a["langs"] == {}


def test_svg_lists_every_unit_in_ranking_order(run, html):
    sec = _section(html)
    svg = sec[sec.index("<svg"):sec.index("</svg>") + 6]
    texts = report.svg_labels(svg)
    assert [t for t in texts if t in LABELS] == LABELS  # each once, most sensitive first
    direct = report.sensitivity_svg(pd.read_parquet(run / "sensitivity.parquet"), AUTO, RANKING, chosen_k=4)
    assert [t for t in report.svg_labels(direct) if t in LABELS] == LABELS
    assert "kept float by the chosen candidate (top 4)" in texts and "per language (2)" in texts


def test_unit_names_are_escaped(html):
    assert html.count("<script") == 1  # the sort script; the unit's tag is text everywhere
    assert "<script>alert" not in html
    assert "layers.0/&lt;script&gt;alert(1)&lt;/script&gt;" in html  # the SVG label (matplotlib escapes it)
    assert "<code>decoder:/decoder/layers.0/&lt;script&gt;" not in html  # not chosen: not in the kept-float list
    assert 'title="decoder:/decoder/layers.1/encoder_attn, decoder:/lm_head, ' in html


def test_escaped_in_the_chosen_units_and_trace_titles(run):
    m = json.loads((run / "manifest.json").read_text())
    s = m["variants"][AUTO]["search"]
    s.update(chosen_k=6, chosen_units=RANKING, passing=[6], smallest_passing=6, latency_p50_ms={})
    s["trace"] = [_step(0, 20.5, 9.75, False, 2.5), _step(6, 30.0, 0.0, True, 1.0)]
    write_manifest(m, run)
    html = report.render(run).read_text(encoding="utf-8")
    assert html.count("<script") == 1
    assert "<code>decoder:/decoder/layers.0/&lt;script&gt;alert(1)&lt;/script&gt;</code>" in html
    assert ("encoder:/encoder/layers.1/fc2, decoder:/decoder/layers.0/&lt;script&gt;alert(1)&lt;/script&gt;"
            '">6</td>') in html
    assert "prefer: latency, but with a single passing candidate there was nothing to time" in html


def test_section_renders_from_the_manifest_without_sensitivity_parquet(run):
    (run / "sensitivity.parquet").unlink()
    html = report.render(run).read_text(encoding="utf-8")
    sec = _section(html)
    assert "<svg" not in sec and "No sensitivity.parquet in the run directory" in sec
    assert "Chosen: <b>k = 4</b>, 24 linear (MatMul/Gemm) nodes kept float" in sec
    assert len(_doc(html).tables["trace-1"]) == 1 + len(TRACE)


def test_markdown_has_the_trace(run):
    md = report.markdown(run).splitlines()
    at = md.index(f"Automatic exclusion search: `{AUTO}` (chosen k = 4, 5 evaluations on 32 samples of calibration)")
    assert md[at + 2] == "| step | k | excluded linear nodes | quality | worst drop | gate | s |"
    assert md[at + 4:at + 9][3] == "| 4 | **4** (chosen) | 24 | 29.50 | 0.25 fr | PASS | 1.25 |"
    assert len([line for line in md[at + 4:] if line.startswith("| ")]) == len(TRACE)


def test_a_projected_screen_shows_its_bound_in_both_tables(run):
    m = json.loads((run / "manifest.json").read_text())
    for t, hi in zip(m["variants"][AUTO]["search"]["trace"], (12.5, 5.0, 2.25, 0.75, 1.5)):
        t.update(projected_hi=hi, projected_where="fr", point_pass=t["worst_drop"] <= 1.0)
        t["pass"] = hi < 1.0
    (run / "manifest.json").write_text(json.dumps(m))
    md = report.markdown(run).splitlines()
    at = md.index(f"Automatic exclusion search: `{AUTO}` (chosen k = 4, 5 evaluations on 32 samples of calibration)")
    assert md[at + 2] == "| step | k | excluded linear nodes | quality | worst drop | projected bound | screen | s |"
    assert md[at + 3] == "|---|---|---|---|---|---|---|---|"
    assert md[at + 4:at + 9][3] == "| 4 | **4** (chosen) | 24 | 29.50 | 0.25 fr | 0.75 | PASS | 1.25 |"
    assert md[at + 4:at + 9][4] == "| 5 | 3 | 18 | 29.00 | 0.75 fr | 1.50 | FAIL | 1.00 |"
    assert md[at + 10].startswith("Screen: the upper bound of the drop the evaluation set's decision is projected")
    html = report.render(run).read_text(encoding="utf-8")
    head, *rows = _doc(html).tables["trace-1"]
    assert head[1][6:8] == ["projected bound", "screen"] and [r[1][6] for r in rows] == [
        "12.50", "5.00", "2.25", "0.75", "1.50"]
    assert "the screen passes, then bisection" in _section(html)


def test_unit_labels_strip_shared_prefixes_and_stay_unique():
    assert report.unit_labels(["/model/encoder/layer.0/output", "/model/encoder/layer.10/attention"]) == {
        "/model/encoder/layer.0/output": "layer.0/output", "/model/encoder/layer.10/attention": "layer.10/attention"}
    mt = ["decoder:/decoder/layers.3/fc1", "decoder:/lm_head", "encoder:/encoder/layers.0/fc2"]
    assert report.unit_labels(mt) == {
        "decoder:/decoder/layers.3/fc1": "decoder: layers.3/fc1", "decoder:/lm_head": "decoder: lm_head",
        "encoder:/encoder/layers.0/fc2": "encoder: layers.0/fc2"}  # a graph's only unit keeps its path
    # a collision falls back to the full ids
    clash = ["decoder:/decoder/x", "decoder:/x"]
    assert report.unit_labels(clash) == {u: u for u in clash}


def test_confirmations_are_listed_in_preference_order(run):
    import re as _re

    m = json.loads((run / "manifest.json").read_text())
    m["variants"][AUTO]["search"]["confirmations"] = [
        {"k": 3, "worst_drop": 1.25, "worst": "de", "pass": False, "quality_all": 30.0, "seconds": 9.0},
        {"k": 4, "worst_drop": 0.5, "worst": "fr", "pass": True, "quality_all": 31.5, "seconds": 9.0}]
    (run / "manifest.json").write_text(json.dumps(m))
    text = _re.sub(r"<[^>]+>", "", report.render(run).read_text())
    assert ("Candidates checked on the full evaluation set, in preference order: k = 3 FAIL (worst drop 1.25, de)"
            " · k = 4 PASS (worst drop 0.50, fr).") in text


def _with_cost(run: Path) -> None:
    m = json.loads((run / "manifest.json").read_text())
    m["variants"][AUTO]["search"].update(
        phases_s={"fp32_reference": 3.25, "subset_gate": 6.5, "ranking": 20.0, "confirmation": 9.0},
        cpu_seconds=71.5, ranking_subset={"n": 8, "rank_by": "worst_language"})
    m["variants"][AUTO]["search"]["confirmations"][0]["decision"] = "PASS"
    (run / "manifest.json").write_text(json.dumps(m))


def test_markdown_and_html_state_the_search_cost_by_phase(run):
    _with_cost(run)
    md = report.markdown(run).splitlines()
    assert ("Search cost: 93.4 s wall, 71.5 s CPU, 18 models scored (s by phase: FP32 reference 3.2, subset gate "
            "6.5, ranking 20.0, confirmation 9.0; ranking on 8 samples by each unit's best language). Confirmed on "
            "the evaluation set: k = 4: PASS.") in md
    sec = _section(report.render(run).read_text(encoding="utf-8"))
    assert ("93.4 s wall (71.5 s CPU; by phase: fp32 reference 3.2 s, subset gate 6.5 s, ranking 20.0 s, "
            "confirmation 9.0 s); each unit ranked on 8 samples, by its benefit in the language where it helps "
            "most.") in sec


def test_markdown_of_a_run_without_cost_has_no_cost_line(run):
    assert not any(line.startswith("Search cost:") for line in report.markdown(run).splitlines())


def test_svg_without_quantize_only_rows_draws_one_panel(run):
    sens = pd.read_parquet(run / "sensitivity.parquet")
    sens = sens[sens["mode"] != "quantize_only"]
    svg = report.sensitivity_svg(sens, AUTO, RANKING, 2)
    labels = report.svg_labels(svg)
    assert "excluding one unit (all-INT8 error 1)" in labels and "quantizing only this unit" not in labels
    assert [x for x in labels if x in LABELS] == LABELS
