"""The format axis on translation: a real sweep of the multilingual Marian (the small_mt_run model and data: 2 test
strings per language), FP32 beside FP8 E4M3 and weight-only INT4 with AWQ scales, both graphs built through the
build every task shares (qbench.tasks.qdq_build).

The model is exported at opset 20 here (FP8 Q/DQ needs 19, blocked INT4 21, raised from 20); its FP32 row is checked
against small_mt_run's opset-17 export of the same model on the same strings.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("torch")
FP8, INT4 = "fp8", "int4_wo[block=32,awq]"


@pytest.fixture(scope="module")
def run(tmp_path_factory, qbench_cache, small_mt_run):
    import pandas as pd

    from qbench.config.schema import load_config
    from qbench.run.sweep import run_sweep

    base = json.loads((small_mt_run / "manifest.json").read_text())["config"]
    tmp = tmp_path_factory.mktemp("mt-formats")
    cfg = {**{k: base[k] for k in ("task", "data", "calibration", "generation", "backend")},
           "name": "mt-formats", "model": {**base["model"], "opset": 20},
           "sweep": {"baselines": ["fp32"], "calibrators": [{"name": "minmax"}], "exclusions": ["none"],
                     "flavors": ["s8s8"], "formats": ["fp8", {"name": "int4_wo", "block_size": 32, "scales": "awq"}]},
           "measure": {"latency": {"batch_sizes": [1], "warmup": 0, "runs": 1, "rounds": 1}},
           "output": {"dir": str(tmp / "out"), "cache_dir": str(qbench_cache)}}
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    d = run_sweep(load_config(path))
    return (pd.read_parquet(d / "results.parquet"), pd.read_parquet(d / "samples.parquet"),
            json.loads((d / "manifest.json").read_text()))


def _variant(m, fmt):
    (vid,) = [v for v in m["variants"] if fmt in v]
    return vid, m["variants"][vid]


def test_every_variant_has_per_language_results_and_fp32_is_unchanged(run, small_mt_run):
    import pandas as pd

    df, samples, m = run
    assert all(info["status"] == "ok" for info in m["variants"].values()), m["variants"]
    langs = sorted(set(samples.lang))
    assert len(langs) == 28
    for fmt in (FP8, INT4):
        vid, info = _variant(m, fmt)
        assert info["format"] == fmt
        rows = df[(df.variant == vid) & (df.metric == "chrf")]
        assert set(rows.slice) == {"all"} | {f"lang={lang}" for lang in langs}
        assert set(df[(df.variant == vid) & (df.metric == "delta_chrf")].slice) == set(rows.slice)
    # FP32 beside the new formats, on an opset-20 export, scores what small_mt_run's opset-17 FP32 scored.
    old = pd.read_parquet(small_mt_run / "results.parquet")
    key = ["metric", "slice"]
    a = df[(df.variant == "fp32") & df.metric.isin(["bleu", "chrf"])].set_index(key).value.sort_index()
    b = old[(old.variant == "fp32") & old.metric.isin(["bleu", "chrf"])].set_index(key).value.sort_index()
    assert a.index.equals(b.index) and np.allclose(a.values, b.values, atol=1e-9)


def test_both_graphs_carry_the_formats_q_dq(run):
    _, _, m = run
    for fmt in (FP8, INT4):
        _, info = _variant(m, fmt)
        art = Path(info["artifact"])
        for comp in ("encoder", "decoder"):
            g = onnx.load(art / f"{comp}.onnx").graph
            inits = {t.name: t for t in g.initializer}
            q = [n for n in g.node if n.op_type == "QuantizeLinear"]
            dq = [n for n in g.node if n.op_type == "DequantizeLinear"]
            if fmt == FP8:
                # activations and weights in E4M3FN: every zero point is FP8
                assert q and all(inits[n.input[2]].data_type == TensorProto.FLOAT8E4M3FN for n in q + dq)
                assert info["quantized_tensors"][comp] == len(q)
            else:
                # weight-only: no activation Q/DQ, every weight an INT4 initializer in blocks of 32 input channels
                assert not q and dq
                for n in dq:
                    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
                    assert inits[n.input[0]].data_type == TensorProto.INT4 and attrs["block_size"] == 32
                assert info["transform"][comp]["name"] == "awq" and info["transform"][comp]["scaled_tensors"] > 0


def test_decoding_both_graphs_gives_the_scored_text(run):
    """Token ids from each variant's encoder and decoder, by the plain (unsplit) decoder loop in the sweep's batches,
    decode to the text the sweep scored through its split fast-greedy path (INT4: all but at most 3 of 56)."""
    from qbench.backends.ort import OrtSession
    from qbench.models.generate import Generator
    from qbench.models.seq2seq import export_seq2seq
    from qbench.models.tokenize import Tokenizer

    _, samples, m = run
    spec = export_seq2seq(m["config"]["model"]["source"], Path(m["config"]["output"]["cache_dir"]) / "models",
                          opset=20)
    tok = Tokenizer(spec.tokenizer_dir, max_length=128)
    from qbench.data.manifest import load_manifest, load_split

    gc = m["config"]["generation"]
    rows = samples[samples.variant == "fp32"]  # every scored sentence, in the sweep's order
    by_id = {s.id: s for s in load_split(load_manifest(ROOT / "datasets/django_multi.yaml"), "test")}
    src = [f">>{r.lang}<< " + by_id[r.id].text for r in rows.itertuples()]
    # The sweep's own batches (qbench.tasks.decode._batches: by length, generation.batch_size each): in a Q/DQ
    # graph another batch shape can round one activation differently and send a fragile greedy path elsewhere.
    order = sorted(range(len(src)), key=lambda i: len(src[i]))
    batches = [order[k:k + gc["batch_size"]] for k in range(0, len(order), gc["batch_size"])]
    for fmt in (FP8, INT4):
        vid, info = _variant(m, fmt)
        art = Path(info["artifact"])
        prov = ["CPUExecutionProvider"]
        gen = Generator(OrtSession(art / "encoder.onnx", 2, prov), OrtSession(art / "decoder.onnx", 2, prov), spec)
        hyp: dict[int, str] = {}
        for idx in batches:
            enc = tok.encode_batch([src[i] for i in idx])
            ids = gen.generate(enc["input_ids"], enc["attention_mask"], gc["max_new_tokens"], 1)
            assert all(len(i) > 0 for i in ids)
            hyp.update(zip(idx, tok.decode_batch(ids)))
        want = list(samples[samples.variant == vid].set_index("id").loc[rows.id].hyp)
        differ = [(rows.lang.iloc[i], hyp[i], want[i]) for i in range(len(src)) if hyp[i] != want[i]]
        # FP8: identical. INT4 (blocked DequantizeLinear before each MatMul): on one 2-core AMD EPYC machine 3 of
        # the 56 greedy paths parted between the split and the plain decoder, each into a repetition in one of
        # them (on another machine none did); not explained yet, so bounded rather than hidden.
        assert len(differ) <= (0 if fmt == FP8 else 3), (fmt, differ)
