"""SmoothQuant and INT8 embedding tables on the real MiniLM: the transformed FP32 graph against the original on
ONNX Runtime, and the all-INT8 QDQ model with INT8 embeddings built by TensorRT-RTX (SM89, on the CPU)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qbench.calib import CalibrationTable
from qbench.calib import stats as st
from qbench.config.schema import ExclusionCfg
from qbench.data.manifest import load_split
from qbench.models.tokenize import Tokenizer
from qbench.quantize.qdq import build_qdq, calibration_tensors, load_model
from qbench.quantize.smoothquant import smooth, smoothed_absmax


@pytest.fixture(scope="module")
def smoothed(minilm, kjv_web):
    tok = Tokenizer(minilm.tokenizer_dir, 64)
    texts = [s.text for s in load_split(kjv_web, "calibration")[:16]]
    fp32 = load_model(minilm.onnx_path)
    tensors = calibration_tensors(fp32)
    stats = st.collect(minilm.onnx_path, tensors, [tok.encode_batch(texts[i:i + 8]) for i in (0, 8)], channels=True)
    cmax = {t: s.channel_absmax for t, s in stats.items() if s.channel_absmax is not None}
    feeds = tok.encode_batch([s.text for s in load_split(kjv_web, "evaluation")[:8]])
    return fp32, stats, cmax, feeds


def _outputs(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.mark.parametrize("targets, n, muls", [("norm", 12, 0), ("all", 24, 12)])
def test_transformed_minilm_is_equivalent(smoothed, targets, n, muls):
    fp32, stats, cmax, feeds = smoothed
    model, s, src = smooth(fp32, cmax, 0.5, targets)
    # 12 LayerNorm outputs read by linear layers (embeddings -> layer 0 QKV, each attention LayerNorm -> FFN in,
    # each output LayerNorm -> the next QKV); "all" adds attention-out and FFN-down inputs through a Mul.
    assert len(s) == n and sum(q != t for q, t in src.items()) == muls
    for ref, got in zip(_outputs(fp32, feeds), _outputs(model, feeds)):
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    # the outlier channels' range moved into the weights: per-tensor amax of the smoothed LayerNorm outputs drops
    drops = [stats[src[q]].absmax / smoothed_absmax(stats[src[q]].channel_absmax, f) for q, f in s.items()]
    assert np.median(drops) > 2


def test_int8_embeddings_build_all_int8_in_tensorrt_rtx(smoothed, tmp_path):
    pytest.importorskip("tensorrt_rtx_bindings")
    from qbench.backends.layer_report import parse_layers, summarize
    from qbench.backends.tensorrt import TensorRTBackend, input_profiles

    fp32, stats, cmax, _ = smoothed
    model, s, src = smooth(fp32, cmax, 0.5)
    amax = {t: x.absmax for t, x in stats.items()}
    amax.update({q: smoothed_absmax(stats[src[q]].channel_absmax, f) for q, f in s.items()})
    out = tmp_path / "sq-emb.onnx"
    build_qdq(model, CalibrationTable(amax, "minmax"), ExclusionCfg(), "s8s8", out, embeddings=True)
    q = onnx.load(str(out))
    gathers = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("_rowint8")]
    assert len(gathers) == 3  # word, position and token-type tables
    assert out.stat().st_size < 24e6  # 58.7 MB with the FP32 word table
    shapes = input_profiles(q, {"batch": (1, 4, 8), "sequence": (1, 32, 64)})
    engine, info, log = TensorRTBackend().build(out, tmp_path / "engine", shapes)
    summary = summarize(parse_layers(log), model, [])
    assert summary["linear_nodes_by_dtype"] == {"Int8": 36}, summary["linear_nodes_by_dtype"]


def test_group_kinds_on_minilm_from_structure(smoothed):
    """Per-group alpha on the real graph: 12 norm, 6 attn_out, 6 ffn_down groups, told apart by structure (their
    MatMuls' names, which the structural rule never reads, say the same), and the transform stays exact."""
    from qbench.quantize.smoothquant import find_groups

    fp32, _, cmax, feeds = smoothed
    by_name = {"query": "norm", "intermediate": "norm", "attention/output": "attn_out", "output/dense": "ffn_down"}
    kinds = {}
    for g in find_groups(fp32, "all"):
        name = g.matmuls[0].name
        kinds[g.kind] = kinds.get(g.kind, 0) + 1
        assert g.kind == next(k for part, k in by_name.items() if part in name), name
    assert kinds == {"norm": 12, "attn_out": 6, "ffn_down": 6}
    model, _, _ = smooth(fp32, cmax, {"norm": 0.75, "attn_out": 0.8, "ffn_down": 0.95}, "all")
    for ref, got in zip(_outputs(fp32, feeds), _outputs(model, feeds)):
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
