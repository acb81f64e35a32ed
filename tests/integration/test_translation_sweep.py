"""A real translation sweep, end to end: the shipped EN->ES Marian, exported, calibrated (encoder and
teacher-forced decoder), quantized, decoded by ONNX Runtime and scored with sacrebleu.

Small on purpose (24 test verses, 32 calibration verses), so it runs in CI in well under a minute.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("torch")
try:
    import tensorrt_rtx_bindings  # noqa: F401

    HAVE_TRT = True
except ImportError:
    HAVE_TRT = False


@pytest.fixture(scope="module")
def run(tmp_path_factory, qbench_cache):
    from qbench.config.schema import load_config
    from qbench.run.sweep import run_sweep

    tmp = tmp_path_factory.mktemp("tr")
    cfg = {
        "name": "tr", "task": "translation",
        "model": {"source": str(ROOT / "examples/models/marian-en-es"), "max_length": 256},
        "data": {"manifest": str(ROOT / "datasets/bible_en_es.yaml"),
                 "calibration": {"split": "calibration", "n": 32, "seed": 0, "sampler": {"name": "random"}},
                 "evaluation": {"split": "test", "n": 24}},
        "calibration": {"batch_size": 16},
        "generation": {"max_new_tokens": 96, "batch_size": 12},
        "sweep": {"baselines": ["fp32", "fp16"], "calibrators": [{"name": "minmax"}],
                  "exclusion_sets": {"no_lm_head": {"roles": ["lm_head"]}}, "exclusions": ["none", "no_lm_head"]},
        "gate": {"metric": "bleu", "max_drop": 1.0, "per": "lang"},
        "measure": {"latency": {"batch_sizes": [2], "warmup": 0, "runs": 1, "rounds": 1}},
        "output": {"dir": str(tmp / "out"), "cache_dir": str(qbench_cache)},
    }
    if HAVE_TRT:  # both graphs of every variant built as engines too (build-only here)
        cfg["tensorrt"] = {"compute_capability": "SM89"}
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    import pandas as pd

    run_dir = run_sweep(load_config(path))
    return (pd.read_parquet(run_dir / "results.parquet"), pd.read_parquet(run_dir / "samples.parquet"),
            json.loads((run_dir / "manifest.json").read_text()), run_dir)


def _val(df, variant, metric, sl="all"):
    r = df[(df.variant == variant) & (df.metric == metric) & (df.slice == sl)]
    assert len(r) == 1, (variant, metric, sl)
    return float(r.value.iloc[0])


def test_every_variant_ok_and_scored_per_language(run):
    df, samples, manifest, _ = run
    assert {v["status"] for v in manifest["variants"].values()} == {"ok"}
    for v in ("fp32", "fp16", "minmax+none+s8s8", "minmax+no_lm_head+s8s8"):
        for m in ("bleu", "chrf"):
            assert _val(df, v, m, "lang=es") == pytest.approx(_val(df, v, m))  # one language: macro = corpus
    assert len(samples) == 24 * 4


def test_bleu_and_chrf_equal_sacrebleu_on_the_written_outputs(run):
    import sacrebleu

    df, samples, _, _ = run
    for v, g in samples.groupby("variant"):
        hyps, refs = g.hyp.tolist(), [g.ref.tolist()]
        assert _val(df, v, "bleu") == pytest.approx(sacrebleu.corpus_bleu(hyps, refs).score, abs=1e-9)
        assert _val(df, v, "chrf") == pytest.approx(sacrebleu.corpus_chrf(hyps, refs).score, abs=1e-9)
    fp32 = samples[samples.variant == "fp32"]
    assert sacrebleu.corpus_bleu(fp32.hyp.tolist(), [fp32.ref.tolist()]).score > 15  # a trained model


def test_deltas_intervals_and_gate_are_consistent(run):
    df, _, manifest, _ = run
    df = df[df.backend == "ort"]
    base = _val(df, "fp32", "bleu")
    for v in ("minmax+none+s8s8", "minmax+no_lm_head+s8s8"):
        d = _val(df, v, "delta_bleu")
        assert d == pytest.approx(_val(df, v, "bleu") - base, abs=1e-9)
        assert _val(df, v, "delta_bleu_lo") <= d <= _val(df, v, "delta_bleu_hi")
        drop = _val(df, v, "worst_lang_drop", "lang=es")
        assert drop == pytest.approx(-d, abs=1e-9)
        assert _val(df, v, "gate") == float(drop <= 1.0)
    assert manifest["gate"] == {"metric": "bleu", "max_drop": 1.0, "per": "lang", "alpha": 0.05, "correction": "holm",
                                "resamples": 2000, "seed": 0}  # the decision's settings (qbench.report.decision)


def test_both_graphs_quantized_and_lm_head_exclusion_holds(run):
    df, _, manifest, _ = run
    enc_q = _val(df, "minmax+none+s8s8", "nodes_quantized", "graph=encoder,op=MatMul")
    dec_q = _val(df, "minmax+none+s8s8", "nodes_quantized", "graph=decoder,op=MatMul")
    assert enc_q > 0 and dec_q > 0
    # Excluding lm_head keeps exactly that MatMul float in the decoder and changes nothing in the encoder.
    assert _val(df, "minmax+no_lm_head+s8s8", "nodes_quantized", "graph=decoder,op=MatMul") == dec_q - 1
    assert _val(df, "minmax+no_lm_head+s8s8", "nodes_quantized", "graph=encoder,op=MatMul") == enc_q
    ex = manifest["variants"]["minmax+no_lm_head+s8s8"]["excluded_nodes"]
    assert ex["encoder"] == [] and any("lm_head" in n for n in ex["decoder"])


def test_decoder_table_scales_are_amax_over_127(run):
    from qbench.calib import CalibrationTable
    from qbench.quantize.qdq import load_model

    _, _, manifest, run_dir = run
    v = manifest["variants"]["minmax+none+s8s8"]
    table = CalibrationTable.from_json((run_dir / v["tables"]["decoder"]).read_text())
    model = load_model(Path(v["artifact"]) / "decoder.onnx")
    inits = {t.name: t for t in model.graph.initializer}
    from onnx import numpy_helper

    checked = 0
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in table.amax:
            scale = float(numpy_helper.to_array(inits[n.input[1]]))
            assert scale == pytest.approx(np.float32(table.amax[n.input[0]] / 127.0), rel=1e-6)
            checked += 1
    assert checked >= 20


def test_decoder_calibrated_on_fp32_greedy_outputs(run, qbench_cache, tmp_path):
    """decoder_targets: fp32_greedy teacher-forces FP32's own outputs: same encoder table, another decoder one."""
    from qbench.calib import CalibrationTable
    from qbench.config.schema import load_config
    from qbench.run.sweep import run_sweep

    _, _, manifest, run_dir = run
    cfg = manifest["config"]
    cfg["calibration"]["decoder_targets"] = "fp32_greedy"
    cfg["sweep"] = {"baselines": ["fp32"], "calibrators": [{"name": "minmax"}], "exclusions": ["none"]}
    cfg["gate"] = None
    cfg["tensorrt"] = None
    cfg["output"]["dir"] = str(tmp_path / "out")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    other = run_sweep(load_config(path))
    m2 = json.loads((other / "manifest.json").read_text())
    assert m2["variants"]["minmax+none+s8s8"]["status"] == "ok"
    assert m2["statistics"]["default"]["decoder_targets"] == "fp32_greedy"
    v1, v2 = manifest["variants"]["minmax+none+s8s8"], m2["variants"]["minmax+none+s8s8"]
    load = lambda d, v, c: CalibrationTable.from_json((d / v["tables"][c]).read_text()).amax  # noqa: E731
    assert load(run_dir, v1, "encoder") == load(other, v2, "encoder")
    dec1, dec2 = load(run_dir, v1, "decoder"), load(other, v2, "decoder")
    assert dec1.keys() == dec2.keys() and dec1 != dec2


def _trt(df, variant, metric, sl):
    r = df[(df.variant == variant) & (df.backend == "tensorrt") & (df.metric == metric) & (df.slice == sl)]
    assert len(r) == 1, (variant, metric, sl)
    return float(r.value.iloc[0])


@pytest.mark.skipif(not HAVE_TRT, reason="tensorrt-rtx wheels not installed: no engine builds")
def test_encoder_and_decoder_build_as_engines_with_proven_precisions(run):
    df, _, manifest, run_dir = run
    n_enc = _val(df[df.backend == "ort"], "fp32", "nodes_float", "graph=encoder,op=MatMul")
    for v in ("fp32", "fp16", "minmax+none+s8s8", "minmax+no_lm_head+s8s8"):
        e = manifest["variants"][v]["tensorrt"]
        assert e["status"] == "ok" and set(e["graphs"]) == {"encoder", "decoder"}, v
        assert _trt(df, v, "engine_mb", "all") == pytest.approx(
            _trt(df, v, "engine_mb", "graph=encoder") + _trt(df, v, "engine_mb", "graph=decoder"))
        # The decoder profile starts at an empty past (the first generation step).
        assert e["graphs"]["decoder"]["shapes"]["past.0.key"][0][2] == 0
    # 24 linear MatMuls in the encoder (4 layers x q, k, v, out, fc1, fc2); 41 in the decoder (+ cross
    # attention and lm_head). FP32 runs all in Float, FP16 in Half, all-INT8 in Int8.
    assert _trt(df, "fp32", "linear_nodes", "graph=encoder,dtype=Float") == 24
    assert _trt(df, "fp32", "linear_nodes", "graph=decoder,dtype=Float") == 41
    assert _trt(df, "fp16", "linear_nodes", "dtype=Half") == 65
    assert _trt(df, "minmax+none+s8s8", "linear_nodes", "dtype=Int8") == 65
    assert _trt(df, "minmax+none+s8s8", "int8_linear_flop_share", "all") == 1.0
    # lm_head excluded: exactly the vocabulary projection stays Float in the decoder engine.
    v = "minmax+no_lm_head+s8s8"
    assert _trt(df, v, "linear_nodes", "graph=decoder,dtype=Float") == 1
    assert _trt(df, v, "linear_nodes", "graph=decoder,dtype=Int8") == 40
    assert _trt(df, v, "linear_nodes", "graph=encoder,dtype=Int8") == 24
    g = manifest["variants"][v]["tensorrt"]["graphs"]["decoder"]
    layers = json.loads((run_dir / g["layers"]).read_text())
    (head,) = [la for la in layers if "/lm_head/MatMul" in la["onnx_nodes"]]
    assert head["compute"] == "Float" and "Int8" not in head["inputs"] + head["constants"]
    assert g["summary"]["exclusion_violations"] == [] and g["summary"]["excluded_held"] >= 1
    # Its FLOP share: 1 - lm_head's (d_model x vocab) over all decoder linear FLOPs, from the weights.
    from qbench.backends.layer_report import linear_flops_per_token
    from qbench.quantize.qdq import load_model

    flops = linear_flops_per_token(load_model(Path(manifest["model"]["onnx_path"]) / "decoder.onnx"))
    want = 1 - flops["/lm_head/MatMul"] / sum(flops.values())
    assert _trt(df, v, "int8_linear_flop_share", "graph=decoder") == pytest.approx(want)
    enc = linear_flops_per_token(load_model(Path(manifest["model"]["onnx_path"]) / "encoder.onnx"))
    assert (len(enc), len(flops)) == (24, 41)
    assert n_enc == 32  # ONNX Runtime's count also has the 8 attention MatMuls (no weight: not linear layers)
