"""ONNX Runtime CPU's deployment form of a static QDQ model (qbench.quantize.ort_deploy), and INT8 over FP16
(qbench.quantize.qdq_fp16), on all-MiniLM-L6-v2 with real weights and real KJV text.

Oracles: the QDQ model itself run by ONNX Runtime (the deployment form must compute the same function), and
numpy for a single linear layer (the integers, scales and bias of the folded kernel, by hand).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qbench.config.errors import ModelError, QuantizationError
from qbench.config.schema import ExclusionCfg
from qbench.quantize.ort_deploy import fold_linear
from qbench.quantize.qdq import build_qdq, calibration_tensors, load_model, match_exclusions, plan
from qbench.quantize.qdq_fp16 import qdq_over_fp16, verify_fp16_scales

ATTENTION_BMM = ExclusionCfg(names=["attention/self/MatMul"])  # as examples/minilm-deploy.yaml


def _run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = {i.name for i in s.get_inputs()}
    return s.run(None, {k: v for k, v in feeds.items() if k in names})[0]


@pytest.fixture(scope="module")
def minilm_setup(minilm, kjv_web, tmp_path_factory):
    """MiniLM FP32, a minmax table from 16 calibration verses, and 8 evaluation verses as feeds."""
    from calibrators.minmax import MinMax
    from qbench.calib import stats as st
    from qbench.data.manifest import load_split
    from qbench.models.tokenize import Tokenizer

    tok = Tokenizer(minilm.tokenizer_dir, max_length=128)
    cal = [s.text for s in load_split(kjv_web, "calibration")[:16]]
    ev = [s.text for s in load_split(kjv_web, "evaluation")[:8]]
    fp32 = load_model(minilm.onnx_path)
    stats = st.collect(minilm.onnx_path, calibration_tensors(fp32), [tok.encode_batch(cal)], threads=1)
    return fp32, MinMax().table(stats), tok.encode_batch(ev), tmp_path_factory.mktemp("deploy")


def _qdq(setup, excl: ExclusionCfg, flavor: str) -> onnx.ModelProto:
    fp32, table, _, tmp = setup
    path = tmp / f"{flavor}-{len(excl.names)}.onnx"
    build_qdq(fp32, table, excl, flavor, path)
    return load_model(path)


def test_fused_form_equals_the_qdq_model_on_minilm(minilm_setup):
    qdq = _qdq(minilm_setup, ATTENTION_BMM, "u8s8")
    fused, info = fold_linear(qdq)
    onnx.checker.check_model(fused)
    before, after = Counter(n.op_type for n in qdq.graph.node), Counter(n.op_type for n in fused.graph.node)
    # 36 linear layers folded, each with its bias; query/key/value merged per layer (6 layers): 18 + 6 kernels.
    assert (info["folded"], info["bias_fused"], info["merged_groups"]) == (36, 36, 6)
    assert before["MatMul"] == 48 and after["MatMul"] == 12  # the attention MatMuls stay float, as excluded
    assert after["MatMulIntegerToFloat"] == 24 and after["Split"] == 6
    assert before["Add"] - after["Add"] == 36 and after["DequantizeLinear"] == 0
    assert after["QuantizeLinear"] == before["QuantizeLinear"] == 24  # one per quantized activation, kept
    feeds = minilm_setup[2]
    ref, got = _run(qdq, feeds), _run(fused, feeds)
    # Same integers and scales; only the order of FP32 sums differs (and ORT's own QDQ path uses the same
    # kernel): measured max |diff| ~1e-6 on embeddings of norm ~1. 1e-4 still fails any wrong scale or bias.
    assert np.abs(ref - got).max() < 1e-4, np.abs(ref - got).max()
    assert not np.allclose(ref, _run(minilm_setup[0], feeds), atol=1e-4)  # and it is quantized, not FP32


def test_one_folded_layer_against_numpy():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    # 7-bit weights: ONNX Runtime's u8s8 kernel on AVX2 without VNNI (this machine) adds pairs of u8 x s8 products
    # in int16 and saturates beyond 32767 (255 * 127 * 2 does not fit; 255 * 63 * 2 does). That is ONNX Runtime's
    # behaviour for every u8s8 model here, the QDQ one included, so it is left out of the oracle's reach.
    wq = rng.integers(-63, 64, (8, 6)).astype(np.int8)
    ws = (rng.random(6) * 0.02 + 0.001).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    xs = np.float32(np.abs(x).max() / 127)
    inits = [numpy_helper.from_array(wq, "Wq"), numpy_helper.from_array(ws, "Ws"),
             numpy_helper.from_array(np.zeros(6, np.int8), "Wz"), numpy_helper.from_array(b, "b"),
             numpy_helper.from_array(xs, "xs"), helper.make_tensor("xz", TensorProto.UINT8, [], [128])]
    nodes = [helper.make_node("QuantizeLinear", ["X", "xs", "xz"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="dq"),
             helper.make_node("DequantizeLinear", ["Wq", "Ws", "Wz"], ["Wd"], name="wdq", axis=1),
             helper.make_node("MatMul", ["xd", "Wd"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "b"], ["Y"], name="add")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 5, 8])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 5, 6])], inits)
    fused, info = fold_linear(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    assert [n.op_type for n in fused.graph.node] == ["QuantizeLinear", "MatMulIntegerToFloat"]
    xq = np.clip(np.round(x / xs) + 128, 0, 255)  # ONNX rounds half to even, as np.round
    want = ((xq - 128) * xs) @ (wq.astype(np.float32) * ws) + b
    np.testing.assert_allclose(_run(fused, {"X": x}), want, rtol=1e-5, atol=1e-5)


def test_float_model_has_nothing_to_fold(minilm_setup):
    with pytest.raises(ModelError, match="no MatMul reads a DequantizeLinear"):
        fold_linear(minilm_setup[0])


def test_int8_over_fp16_on_minilm(minilm_setup):
    qdq = _qdq(minilm_setup, ExclusionCfg(), "s8s8")
    keep, _ = match_exclusions(qdq, ExclusionCfg(roles=["layernorm", "softmax"]))
    assert len(keep) == 19  # 13 LayerNorms + 6 softmaxes, found in the QDQ graph
    f16, info = qdq_over_fp16(qdq, keep)
    onnx.checker.check_model(f16, full_check=True)
    assert (info["opset_from"], info["opset"]) == (17, 19) and info["fp32_nodes"] == sorted(keep)
    assert 0 < info["scale_max_rel_change"] < 2 ** -11  # FP16 rounding of each scale, nothing more
    inits = {t.name: t.data_type for t in f16.graph.initializer}
    qdq_nodes = [n for n in f16.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq_nodes) == 48 + 84 and all(inits[n.input[1]] == TensorProto.FLOAT16 for n in qdq_nodes)
    # Types from shape inference on the result: MatMuls compute in FP16, the kept nodes in FP32.
    inf = onnx.shape_inference.infer_shapes(f16).graph
    elem = {v.name: v.type.tensor_type.elem_type for v in [*inf.value_info, *inf.output]}
    mm = [n for n in f16.graph.node if n.op_type == "MatMul"]
    assert len(mm) == 48 and all(elem[n.output[0]] == TensorProto.FLOAT16 for n in mm)
    assert all(elem[n.output[0]] == TensorProto.FLOAT for n in f16.graph.node if n.name in keep)
    # Against FP32: as close as the FP32 QDQ model it came from. All-INT8 MiniLM is touchy (the same QDQ graph with
    # ORT's optimizations on and off differs by cosine ~0.987 here), so the bound is relative: measured 0.980 for
    # both; a broken mask, scale or cast gives NaN or cosine far below.
    feeds = minilm_setup[2]
    fp32, q32, got = _run(minilm_setup[0], feeds), _run(qdq, feeds), _run(f16, feeds)

    def cos(a, b):
        return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())

    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert cos(got, fp32) > cos(q32, fp32) - 0.01 and cos(got, fp32) > 0.95, (cos(got, fp32), cos(q32, fp32))
    # A scale that is not the FP16 rounding of the FP32 model's is caught, by node name.
    bad = onnx.ModelProto()
    bad.CopyFrom(f16)
    t = next(t for t in bad.graph.initializer if t.name == qdq_nodes[-1].input[1])
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float16(1.01), t.name))
    with pytest.raises(QuantizationError, match=qdq_nodes[-1].name):
        verify_fp16_scales(bad, qdq)


def test_layer_report_fp32_islands():
    """An FP32 island fused into TensorRT's INT8 attention kernel (with its Casts) holds; as an INT8 exclusion, or
    in a layer that neither touches Float nor fuses its Casts, it does not (layers as TensorRT-RTX reported them
    for minmax+none+s8s8+fp16 in examples/minilm-deploy.yaml)."""
    from qbench.backends.layer_report import Layer, summarize

    nodes = [helper.make_node("Cast", ["X"], ["x32"], name="c_in", to=TensorProto.FLOAT),
             helper.make_node("Softmax", ["x32"], ["s"], name="sm"),
             helper.make_node("Cast", ["s"], ["Y"], name="c_out", to=TensorProto.FLOAT16),
             helper.make_node("Softmax", ["X"], ["Z"], name="sm2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT16, [2, 4])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT16, [2, 4]),
                           helper.make_tensor_value_info("Z", TensorProto.FLOAT16, [2, 4])])
    model = helper.make_model(g)
    mha = Layer("_gemm_mha_v2", "kgen", ["Int8", "Int8", "Half"], ["Int8"], [], ["c_in", "sm", "c_out"])
    half = Layer("sm2", "Softmax", ["Half"], ["Half"], [], ["sm2"])
    ok = summarize([mha, half], model, [], fp32_nodes=["sm"])
    assert (ok["excluded_held"], ok["exclusion_violations"]) == (1, [])
    assert summarize([mha, half], model, ["sm"], fp32_nodes=["sm"])["exclusion_violations"] == ["sm"]
    assert summarize([mha, half], model, [], fp32_nodes=["sm2"])["exclusion_violations"] == ["sm2"]
