"""The report's verdict on the committed runs: the interval decision (three states) and the deployment target."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from qbench.report import render as report
from qbench.report.decision import load_samples
from qbench.report.results import load

ROOT = Path(__file__).resolve().parents[2]
REPORTS = ROOT / "reports"


def _verdict(name: str) -> dict:
    df, m = load(REPORTS / name)
    return report.verdict(df, m, load_samples(REPORTS / name))


def test_django_run_says_not_enough_data_and_how_much_would_decide(tmp_path):
    run = tmp_path / "django"
    shutil.copytree(REPORTS / "example-django-multi", run, ignore=shutil.ignore_patterns("report.html"))
    html = report.render(run).read_text()
    assert 'data-state="undecided"' in html and "NOT ENOUGH DATA TO DECIDE" in html
    assert 'class="badge warn">INCONCLUSIVE' in html  # amber, neither the green PASS nor the red FAIL
    assert "not enough data to decide: test sentences per language that would decide it: nl ~" in html
    df, m = load(run)
    v = report.verdict(df, m, load_samples(run))
    assert v["state"] == "undecided" and v["decision"]["n_fail"] == 0
    # no candidate FAILs: entropy under the reference rule no longer collapses (it lost ~20 BLEU with the
    # earlier rule, on the earlier split), so every INT8 variant stays a candidate beside the closest one
    assert v["variant"] == "ort_dynamic" and len(v["also"]) == 10
    assert sum("entropy+none" in x["variant"] for x in v["also"]) == 3


def test_bible_run_ships_a_variant_whose_interval_shows_pass():
    v = _verdict("example-bible-en-es")
    assert v["state"] == "ships" and v["decision"]["state"] == "PASS"
    assert "Its decision: PASS: drop" in v["rule"]
    assert all("entropy+none" not in x and "entropy+no_lm_head" not in x for x in v["passing"])


@pytest.mark.parametrize("name", ["example-minilm-trt", "example"])
def test_tensorrt_target_names_a_built_engine_and_says_latency_was_not_measured(name):
    df, _ = load(REPORTS / name)
    v = _verdict(name)
    assert v["target"] == "tensorrt" and v["variant"]
    built = df[(df.variant == v["variant"]) & (df.backend == "tensorrt") & (df.metric == "engine_mb")]
    assert len(built) == 1 and built.value.iloc[0] > 0
    assert "TensorRT latency was not measured here" in v["target_text"]
    # ort_dynamic's engine does not parse (non-zero zero point): never a candidate on TensorRT
    assert "ort_dynamic" in {d["variant"] for d in v["dropped"]} and v["variant"] != "ort_dynamic"
    assert "proxy" in v["rule"] and "p50 latency" not in v["rule"]


def test_tensorrt_verdict_block_says_latency_was_not_measured_and_shows_the_proxy(tmp_path):
    run = tmp_path / "trt"
    shutil.copytree(REPORTS / "example-minilm-trt", run, ignore=shutil.ignore_patterns("report.html"))
    html = report.render(run).read_text()
    block = html[html.index('<section id="verdict"'):html.index("</section>", html.index('<section id="verdict"'))]
    assert "first by the TensorRT proxy within the best quality" in block
    assert ('<div class="k">TensorRT latency</div><div class="x">not measured here</div>'
            '<div class="d">no supported GPU; ranked by the proxy: INT8 share of linear FLOPs 100%, engine 66.2 MB') in block
    assert "(not used to rank)" in block


def test_smollm2_run_ships_fp16_and_fails_every_int8_variant_on_perplexity():
    from qbench.report.decision import for_run

    run = REPORTS / "example-smollm2"
    df, m = load(run)
    samples = load_samples(run)
    assert m["gate"]["metric"] == "perplexity" and m["gate"]["max_drop"] == 2.0
    states = {vid: for_run(samples, m, vid).state for vid in m["variants"] if vid != "fp32"}
    assert states == {"fp16": "PASS", "minmax+none+s8s8": "FAIL", "minmax+mlp_gate+s8s8": "FAIL",
                      "percentile[percentile=99.99]+none+s8s8": "FAIL",
                      "percentile[percentile=99.99]+mlp_gate+s8s8": "FAIL"}
    v = _verdict("example-smollm2")
    assert v["state"] == "ships" and v["variant"] == "fp16"


def test_debian_auto_run_passes_all_int8_in_every_language():
    """exclude: auto on the 32-language Marian, every test segment: the all-INT8 model, confirmed at its first
    look, PASSes in all 32 languages with no MatMul float (the fixed recipe keeps 52 of 91 float)."""
    from qbench.report.decision import for_run

    run = REPORTS / "benchmark-debian-multi-full-xx-en-auto"
    df, m = load(run)
    vid = "minmax+auto+s8s8"
    s = m["variants"][vid]["search"]
    assert s["screen"] == "none" and s["chosen_k"] == 0 and [c["decision"] for c in s["confirmations"]] == ["PASS"]
    dec = for_run(load_samples(run), m, vid)
    assert dec.state == "PASS" and len(dec.langs) == 32 and all(x.state == "PASS" for x in dec.langs)
    assert max(x.drop for x in dec.langs) == pytest.approx(0.36, abs=0.005)
    nodes = df[(df.variant == vid) & df.metric.isin(["nodes_quantized", "nodes_float"])]
    assert nodes.groupby("metric").value.sum().to_dict() == {"nodes_float": 0.0, "nodes_quantized": 91.0}
    recipe = pd.read_parquet(REPORTS / "benchmark-debian-multi-full-xx-en" / "results.parquet")
    fl = recipe[(recipe.variant == "minmax+high_precision+s8s8") & (recipe.metric == "nodes_float")].value.sum()
    assert fl == 52


def test_smollm2_formats_run_passes_weight_only_int8_alone():
    from qbench.report.decision import for_run

    run = REPORTS / "example-smollm2-formats"
    df, m = load(run)
    samples = load_samples(run)
    states = {vid: for_run(samples, m, vid).state for vid in m["variants"] if vid != "fp32"}
    assert {v for v, st in states.items() if st == "PASS"} == {"int8_wo+none", "int8_wo[awq]+none"}
    assert len(states) == 10 and all(st == "FAIL" for v, st in states.items() if not v.startswith("int8_wo"))
    # TensorRT-RTX: Int8 weight-only GEMMs for both; INT4 with blocks of 128 refused (576 is 4.5 blocks)
    for vid in ("int8_wo+none", "int8_wo[awq]+none"):
        summary = m["variants"][vid]["tensorrt"]["graphs"]["model"]["summary"]
        assert summary["linear_nodes_by_dtype"] == {"Int8 weight-only": 210}
    trt = m["variants"]["int4_wo[block=128]+none"]["tensorrt"]
    assert trt["status"] == "failed" and "must divide into whole blocks. Input dimension 0 = 576" in trt["error"]
