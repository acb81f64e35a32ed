"""The verdict block at the top of report.html ("what ships, and what does it cost per language?").

Every expectation is computed here, independently, from the results.parquet and manifest.json of a synthetic
run built in code, then compared with what report.verdict() returns and with the rendered HTML.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from html_doc import parse
from qbench.report import render as report
from qbench.report.results import metric_rows, write_manifest, write_results

LANGS = {"de": 34.0, "fr": 40.0, "ja": 20.0, "ar": 15.0}  # FP32 BLEU per language
GATE = {"metric": "bleu", "max_drop": 1.0, "per": "lang"}
# variant -> (kind, status, p50 ms at batch=1 (None: not measured), size MB, {lang: (delta, lo, hi)}, overall)
VARIANTS = {
    "fp32": ("baseline", "ok", 100.0, 300.0, {}, None),
    # the fastest of all, but it fails the gate (ja) and, overall, is 1.5 BLEU down
    "ort_dynamic": ("baseline", "ok", 40.0, 80.0,
                    {"de": (-1.2, -1.6, -0.8), "fr": (-1.0, -1.4, -0.6), "ja": (-2.3, -2.9, -1.7),
                     "ar": (-1.5, -2.0, -1.0)},
                    (-1.5, -1.8, -1.2)),
    "minmax+none+s8s8": ("qbench", "ok", 70.0, 77.5,
                         {"de": (-0.1, -0.4, 0.2), "fr": (0.3, 0.0, 0.6), "ja": (-0.6, -1.0, -0.2),
                          "ar": (0.0, -0.3, 0.3)},
                         (-0.1, -0.3, 0.1)),
    # the fastest that passes: it ships
    "percentile[percentile=99.99]+none+s8s8": ("qbench", "ok", 55.0, 77.5,
                                               {"de": (-0.9, -1.3, -0.5), "fr": (0.2, -0.1, 0.5),
                                                "ja": (-0.3, -0.7, 0.1), "ar": (0.6, 0.2, 1.0)},
                                               (-0.1, -0.35, 0.15)),
    # failed: never a candidate, whatever its numbers
    "entropy+none+s8s8": ("qbench", "failed", None, None, {}, None),
    # passes, no latency at batch=1: ranks last
    "mse+none+s8s8": ("qbench", "ok", None, 77.5,
                      {"de": (0.0, -0.2, 0.2), "fr": (0.1, -0.2, 0.4), "ja": (-0.2, -0.5, 0.1), "ar": (0.0, -0.3, 0.3)},
                      (0.0, -0.2, 0.2)),
}
SHIPS = "percentile[percentile=99.99]+none+s8s8"


def _desc(vid: str) -> dict:
    kind = VARIANTS.get(vid, ("qbench",))[0]
    return {"variant": vid, "kind": kind, "calibrator": vid.split("+")[0], "exclusion": "", "flavor": "",
            "calibration_set": "", "backend": "ort"}


def _metrics(vid: str, gate: dict | None) -> list[tuple[str, str, float, str]]:
    _, _, p50, size, deltas, overall = VARIANTS[vid]
    out = []
    for lang, base in LANGS.items():
        d, lo, hi = deltas.get(lang, (0.0, 0.0, 0.0))
        out.append(("bleu", f"lang={lang}", base + d, "score"))
        if vid != "fp32":
            out += [("delta_bleu", f"lang={lang}", d, "score"), ("delta_bleu_lo", f"lang={lang}", lo, "score"),
                    ("delta_bleu_hi", f"lang={lang}", hi, "score"), ("delta_bleu_p", f"lang={lang}", 0.04, "score")]
    macro = sum(LANGS.values()) / len(LANGS)
    if vid == "fp32":
        out.append(("bleu", "all", macro, "score"))
    else:
        d, lo, hi = overall
        out += [("bleu", "all", macro + d, "score"), ("delta_bleu", "all", d, "score"),
                ("delta_bleu_lo", "all", lo, "score"), ("delta_bleu_hi", "all", hi, "score"),
                ("delta_bleu_p", "all", 0.25, "score")]
        if gate:  # what qbench.tasks.translation writes: the worst language's drop and the verdict on it
            lang, drop = max(((c, -deltas[c][0]) for c in LANGS), key=lambda t: t[1])
            out += [("gate", "all", float(drop <= gate["max_drop"]), "pass"),
                    ("worst_lang_drop", f"lang={lang}", drop, "score")]
    if p50 is not None:
        out += [("latency_p50_ms", "batch=1", p50, "ms"), ("latency_p99_ms", "batch=1", p50 * 1.5, "ms")]
    # every variant measured at batch=8 too: the rule still looks at the smallest batch only
    out += [("latency_p50_ms", "batch=8", 400.0 - (p50 or 0), "ms"), ("latency_p99_ms", "batch=8", 500.0, "ms")]
    return out + [("size_mb", "all", size, "MB")]


def _manifest(variants: dict, gate: dict | None, task: str = "translation") -> dict:
    return {
        "qbench_version": "0.1.0", "run_id": "20260101T000000Z-verdict", "sweep": "verdict-synthetic",
        "created_utc": "2026-01-01T00:00:00+00:00", "task": task, "gate": gate,
        "config": {"name": "verdict-synthetic", "task": task, "backend": {"name": "ort", "threads": 2}, "gate": gate},
        "versions": {"qbench": "0.1.0", "onnxruntime": "1.32.0"},
        "host": {"platform": "Linux", "cpu": "Test CPU", "cpu_count": 2},
        "model": {"source": "/models/marian-multi/"},
        "data": {"name": "multi", "calibration": {"split": "calibration", "sampler": "random", "n": 16, "seed": 0},
                 "evaluation": {"split": "test", "n": 40}},
        "latency_inputs": {"batch=1": {"shape": [1, 24]}, "batch=8": {"shape": [8, 24]}}, "variants": variants,
    }


def _write(tmp_path: Path, gate: dict | None) -> Path:
    rows, variants = [], {}
    for vid, (_, status, *_rest) in VARIANTS.items():
        variants[vid] = {"status": status, **_desc(vid), "signature": f"sig:{vid}"}
        if status == "failed":
            variants[vid]["error"] = "calibration blew up"
            rows += metric_rows(_desc(vid), vid, "r", [("status", "all", float("nan"), "")], status="failed")
        else:
            rows += metric_rows(_desc(vid), vid, "r", _metrics(vid, gate))
    write_results(rows, tmp_path)
    write_manifest(_manifest(variants, gate), tmp_path)
    return tmp_path


@pytest.fixture
def run(tmp_path) -> Path:
    return _write(tmp_path, GATE)


def _load(run: Path):
    return pd.read_parquet(run / "results.parquet"), json.loads((run / "manifest.json").read_text())


def _ok(df, manifest) -> pd.DataFrame:
    """The rows the verdict may read: status ok, each variant's own backend."""
    be = {v: i.get("backend", "ort") for v, i in manifest["variants"].items()}
    return df[(df.status == "ok") & (df.backend == df.variant.map(be))]


def _series(df, metric: str, sl: str) -> pd.Series:
    return df[(df.metric == metric) & (df.slice == sl)].set_index("variant").value


def _smallest_batch(df) -> str:
    return "batch=%d" % min(int(s.split("=")[1]) for s in df[df.metric == "latency_p50_ms"].slice)


def _candidates(manifest) -> list[str]:
    return [v for v, i in manifest["variants"].items() if v != "fp32" and i["status"] == "ok"]


def _fastest(names, lat: pd.Series) -> str:
    timed = [v for v in names if v in lat.index]
    return min(timed, key=lambda v: lat[v])


def _render(run: Path):
    html = report.render(run).read_text(encoding="utf-8")
    return html, parse(html)


def _text(el) -> str:
    return el.words


# ---------------------------------------------------------------- a gate, and something passes it

def test_ships_the_fastest_variant_that_passes_the_gate(run):
    df, manifest = _load(run)
    ok = _ok(df, manifest)
    passing = [v for v in _candidates(manifest) if _series(ok, "gate", "all").get(v, 0.0) >= 0.5]
    lat = _series(ok, "latency_p50_ms", _smallest_batch(ok))
    want = _fastest(passing, lat)
    assert want == SHIPS  # the fixture's intent; the line above is the rule

    v = report.verdict(df, manifest)
    assert (v["state"], v["variant"], v["batch"]) == ("ships", want, "batch=1")
    assert v["passing"] == [SHIPS, "minmax+none+s8s8", "mse+none+s8s8"]  # by latency; untimed last
    html, doc = _render(run)
    assert doc.ids["verdict"].attrs["data-state"] == "ships" and doc.ids["verdict"].attrs["data-variant"] == want
    assert doc.ids["verdict-variant"].text == want
    assert _text(doc.ids["verdict"]).startswith(f"SHIPS {want} Rule: the lowest p50 latency at batch=1 among the "
                                                "3 of 4 candidates that pass the gate (a variant fails when its BLEU "
                                                "drops by more than 1.0 against FP32 in any language).")
    # its leaderboard row is marked; no other is
    board = parse(html).tables["board"]
    picked = [cells[0][0] for cls, cells in board[1:] if "pick" in cls.split()]
    assert picked == [want] and "ships" in next(cls for cls, cells in board if cells[0][0] == want).split()


def test_latency_and_size_ratios_are_the_parquet_ratios(run):
    df, manifest = _load(run)
    ok = _ok(df, manifest)
    v = report.verdict(df, manifest)
    name = v["variant"]
    for b in ("batch=1", "batch=8"):
        lat = _series(ok, "latency_p50_ms", b)
        got = next(x for x in v["lat"] if x["batch"] == b)
        assert got["ratio"] == pytest.approx(lat[name] / lat["fp32"], rel=1e-12)
        assert got["text"] == f"{lat[name] / lat['fp32']:.2f}×"
    size = _series(ok, "size_mb", "all")
    assert v["size"]["ratio"] == pytest.approx(size[name] / size["fp32"], rel=1e-12)
    _, doc = _render(run)
    lat1 = _series(ok, "latency_p50_ms", "batch=1")
    lat8 = _series(ok, "latency_p50_ms", "batch=8")
    assert _text(doc.ids["verdict-latency"]) == (
        f"p50 latency at batch 1 {lat1[name] / lat1['fp32']:.2f}× FP32 {lat1[name]:.2f} ms vs {lat1['fp32']:.2f} ms"
        f" · batch 8: {lat8[name] / lat8['fp32']:.2f}×")
    assert _text(doc.ids["verdict-latency"]).startswith("p50 latency at batch 1 0.55× FP32 55.00 ms vs 100.00 ms")
    assert [e.classes for e in doc.elements if e.text == "0.55× FP32"] == [["x", "pos"]]  # faster: green
    assert _text(doc.ids["verdict-size"]) == f"size {size[name] / size['fp32']:.2f}× FP32 77.5 MB vs 300.0 MB"


def test_overall_delta_with_its_interval_and_the_gate(run):
    df, manifest = _load(run)
    ok = _ok(df, manifest)
    name = report.verdict(df, manifest)["variant"]
    d, lo, hi, p = (_series(ok, f"delta_bleu{k}", "all")[name] for k in ("", "_lo", "_hi", "_p"))
    _, doc = _render(run)
    want = f"{report.signed(d)} [{report.signed(lo)}, {report.signed(hi)}]"
    assert want == "−0.10 [−0.35, +0.15]"
    assert _text(doc.ids["verdict-delta"]) == f"ΔBLEU vs FP32 [95% CI] {want} p {p:.3f} · macro mean over 4 languages"
    worst = ok[(ok.variant == name) & (ok.metric == "worst_lang_drop")].iloc[0]
    assert _text(doc.ids["verdict-gate"]) == (f"gate, budget 1.0 PASS 0 of 4 languages over "
                                              f"worst {worst.slice.split('=')[1]}: BLEU drop {worst.value:.2f}")


def test_cost_per_language_strip_worst_first(run):
    df, manifest = _load(run)
    ok = _ok(df, manifest)
    name = report.verdict(df, manifest)["variant"]
    per = ok[(ok.variant == name) & (ok.metric == "delta_bleu") & ok.slice.str.startswith("lang=")]
    want = sorted(((r.value, r.slice.split("=")[1]) for r in per.itertuples()))
    _, doc = _render(run)
    chips = doc.by_class("chip")
    assert [c.parts[0] for c in chips] == [lang for _, lang in want]  # the <b> language code comes first
    assert [c.text[len(c.parts[0]):] for c in chips] == ["−0.90*", "−0.30", "+0.20", "+0.60*"]
    assert [("sig" in c.classes) for c in chips] == [True, False, False, True]  # the interval excludes 0
    assert not any("over" in c.classes for c in chips)
    red = chips[0].attrs["style"]
    assert red.startswith("background:#") and report._colour(-0.9, 1.0)[0] in red  # saturates at the budget
    strip_head = _text(next(e for e in doc.elements if e.text.startswith("ΔBLEU per language")))
    assert "Worst: de −0.90; 1 of 4 significantly worse, 1 significantly better" in strip_head
    assert "Red at a drop the size of the gate budget (1.0)" in strip_head


def test_verdict_comes_first_and_provenance_stays_below_the_leaderboard(run):
    html, doc = _render(run)
    at = {k: html.index(k) for k in ('id="verdict"', 'id="board-filter"', 'id="board"', 'id="provenance"',
                                      "<h2>Signatures</h2>")}
    assert list(at) == sorted(at, key=at.get)
    assert html.index("<h1>") < at['id="verdict"']
    assert doc.h2.index("Variants") < doc.h2.index("What produced these numbers") < doc.h2.index("Signatures")
    prov = _text(doc.ids["provenance"])
    assert "model /models/marian-multi/" in prov and "data multi: evaluation 40 sentences in 4 languages" in prov
    assert '<details id="provenance" open>' in html
    # the one-line summary under the title names the essentials and links down
    head = html[html.index("<h1>"):at['id="verdict"']]
    assert "marian-multi · multi, 40 sentences in 4 languages · Test CPU, 2 threads · onnxruntime 1.32.0" in head
    assert '<a href="#provenance">' in head


def test_filter_box_and_sort_share_one_inline_script(run):
    html, doc = _render(run)
    assert html.count("<script") == 1 and "src=" not in html.split("<script", 1)[1].split(">", 1)[0]
    script = html[html.index("<script>"):html.index("</script>")]
    assert "#board th" in script and "board-filter" in script  # click-to-sort and the filter box
    assert doc.ids["board-filter"].attrs["type"] == "search"
    assert doc.ids["board-count"].text == f"{len(VARIANTS)} variants"


# ---------------------------------------------------------------- a gate, and nothing passes it

def test_nothing_ships_names_the_closest_variant(run):
    df = pd.read_parquet(run / "results.parquet")
    df.loc[df.metric == "gate", "value"] = 0.0  # as if the budget were tighter than every variant's worst drop
    df.to_parquet(run / "results.parquet", index=False)
    df, manifest = _load(run)
    ok = _ok(df, manifest)
    drops = ok[ok.metric == "worst_lang_drop"].set_index("variant").value
    want = min((v for v in _candidates(manifest) if v in drops.index), key=lambda v: drops[v])
    assert want == "mse+none+s8s8"  # worst drop 0.2 (ja)

    v = report.verdict(df, manifest)
    assert (v["state"], v["variant"]) == ("nothing", want)
    assert [a["variant"] for a in v["also"]] == sorted((x for x in drops.index if x != want), key=lambda x: drops[x])
    html, doc = _render(run)
    text = _text(doc.ids["verdict"])
    assert text.startswith(f"NOTHING SHIPS closest: {want} None of the 4 candidates passes the gate")
    assert "Closest: the smallest worst drop." in text
    assert doc.ids["verdict"].attrs["data-state"] == "nothing" and doc.ids["verdict-variant"].text == want
    assert _text(doc.ids["verdict-gate"]).startswith("gate, budget 1.0 FAIL")
    # untimed at batch=1: said so, not invented
    assert _text(doc.ids["verdict-latency"]).startswith("p50 latency at batch 1 not measured")
    assert "next closest" in text and "minmax+none+s8s8 (worst ja: BLEU drop 0.60)" in text


def test_nothing_ships_outlines_languages_over_the_budget(tmp_path):
    run = _write(tmp_path, GATE)
    df = pd.read_parquet(run / "results.parquet")
    keep = ~df.variant.isin(["minmax+none+s8s8", SHIPS, "mse+none+s8s8"])  # only ort_dynamic left: it fails
    df[keep].to_parquet(run / "results.parquet", index=False)
    m = json.loads((run / "manifest.json").read_text())
    m["variants"] = {k: x for k, x in m["variants"].items() if k in ("fp32", "ort_dynamic", "entropy+none+s8s8")}
    write_manifest(m, run)
    _, doc = _render(run)
    assert doc.ids["verdict-variant"].text == "ort_dynamic"
    over = [c.parts[0] for c in doc.by_class("chip") if "over" in c.classes]
    assert over == ["ja", "ar", "de"]  # drops 2.3, 1.5, 1.2 > 1.0 (fr's 1.0 is within)
    assert "3 of 4 languages over" in _text(doc.ids["verdict-gate"])


# ---------------------------------------------------------------- no gate

def test_no_gate_names_the_fastest_within_the_best_quality(tmp_path):
    run = _write(tmp_path, None)
    df, manifest = _load(run)
    ok = _ok(df, manifest)
    assert not (df.metric == "gate").any()
    bleu = _series(ok, "bleu", "all")
    cands = [v for v in _candidates(manifest) if v in bleu.index]
    best = max(cands, key=lambda v: bleu[v])
    tier = [v for v in cands if bleu[best] - bleu[v] <= report.NO_GATE_TOLERANCE["bleu"]]
    want = _fastest(tier, _series(ok, "latency_p50_ms", _smallest_batch(ok)))
    assert "ort_dynamic" not in tier and want == SHIPS  # the fastest overall is 1.5 BLEU down: not named

    v = report.verdict(df, manifest)
    assert (v["state"], v["variant"], v["best"]) == ("nogate", want, best)
    _, doc = _render(run)
    text = _text(doc.ids["verdict"])
    assert text.startswith(f"NO GATE fastest within the best quality: {want} No gate is configured, so nothing is "
                           "gated. Named instead: the lowest p50 latency at batch=1 among the 3 candidates whose "
                           f"BLEU is within 1 BLEU points of the best candidate's ({best}, {bleu[best]:.2f}).")
    assert "verdict-gate" not in doc.ids and "SHIPS" not in text
    assert "Colour saturates at ±1.0" in text  # no budget: the heatmap's own scale


def test_no_candidate_at_all(tmp_path):
    run = _write(tmp_path, GATE)
    m = json.loads((run / "manifest.json").read_text())
    m["variants"] = {"fp32": m["variants"]["fp32"]}
    write_manifest(m, run)
    df = pd.read_parquet(run / "results.parquet")
    df[df.variant == "fp32"].to_parquet(run / "results.parquet", index=False)
    _, doc = _render(run)
    assert doc.ids["verdict"].attrs["data-state"] == "empty" and "verdict-variant" not in doc.ids
    assert "There is no variant besides the FP32 reference." in _text(doc.ids["verdict"])


def test_tensorrt_rows_never_stand_in_for_the_onnx_runtime_latency(run):
    df = pd.read_parquet(run / "results.parquet")
    trt = df[(df.variant == "minmax+none+s8s8") & (df.metric == "latency_p50_ms")].assign(backend="tensorrt", value=1.0)
    pd.concat([df, trt]).to_parquet(run / "results.parquet", index=False)
    df, manifest = _load(run)
    assert report.verdict(df, manifest)["variant"] == SHIPS


# ---------------------------------------------------------------- retrieval

def _retrieval(tmp_path: Path, gate: dict | None) -> Path:
    acc = {"fp32": 0.975, "ort_dynamic": 0.950, "minmax+none+s8s8": 0.972, "mse+none+s8s8": 0.9735}
    p50 = {"fp32": 9.0, "ort_dynamic": 4.0, "minmax+none+s8s8": 6.3, "mse+none+s8s8": 5.4}
    rows, variants = [], {}
    for vid, a in acc.items():
        variants[vid] = {"status": "ok", **_desc(vid), "signature": vid}
        ms = [("accuracy_at_1", "all", a, "fraction"), ("latency_p50_ms", "batch=1", p50[vid], "ms"),
              ("latency_p99_ms", "batch=1", p50[vid] * 2, "ms"),
              ("size_mb", "all", 90.4 if vid == "fp32" else 58.7, "MB")]
        if gate and vid != "fp32":
            drop = (acc["fp32"] - a) * 100
            ms += [("gate", "all", float(drop <= gate["max_drop"]), "pass"), ("worst_lang_drop", "all", drop, "points")]
        rows += metric_rows(_desc(vid), vid, "r", ms)
    m = _manifest(variants, gate, task="retrieval")
    m["data"]["evaluation"]["n"] = 2000
    write_results(rows, tmp_path)
    write_manifest(m, tmp_path)
    return tmp_path


def test_retrieval_gate_in_points(tmp_path):
    run = _retrieval(tmp_path, {"metric": "accuracy_at_1", "max_drop": 0.5, "per": "all"})
    df, manifest = _load(run)
    ok = _ok(df, manifest)
    passing = [v for v in _candidates(manifest) if _series(ok, "gate", "all")[v] >= 0.5]
    lat = _series(ok, "latency_p50_ms", "batch=1")
    want = _fastest(passing, lat)
    assert want == "mse+none+s8s8"  # ort_dynamic is faster but 2.5 points down
    _, doc = _render(run)
    assert doc.ids["verdict-variant"].text == want
    acc = _series(ok, "accuracy_at_1", "all")
    delta = report.signed((acc[want] - acc["fp32"]) * 100)
    assert _text(doc.ids["verdict-delta"]) == (f"Δaccuracy@1 vs FP32, points {delta}"
                                               " no interval: retrieval runs keep no per-pair scores")
    assert _text(doc.ids["verdict-gate"]) == "gate, budget 0.5 PASS accuracy@1 drop 0.15 points"
    assert _text(doc.ids["verdict-latency"]) == (f"p50 latency at batch 1 {lat[want] / lat['fp32']:.2f}× FP32 "
                                                 "5.40 ms vs 9.00 ms")
    assert "verdict-langs" not in doc.ids


def test_retrieval_without_gate_uses_half_a_point(tmp_path):
    run = _retrieval(tmp_path, None)
    df, manifest = _load(run)
    v = report.verdict(df, manifest)
    # best candidate 0.9735; within 0.5 points: 0.972 and 0.9735 (ort_dynamic's 0.950 is not) -> the faster one
    assert (v["state"], v["variant"], v["best"]) == ("nogate", "mse+none+s8s8", "mse+none+s8s8")
    assert set(v["tier"]) == {"mse+none+s8s8", "minmax+none+s8s8"}
    assert "whose accuracy@1 is within 0.5 points of the best candidate's (mse+none+s8s8, 0.9735)" in v["rule"]
