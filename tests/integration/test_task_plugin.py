"""A third task, installed as a real package with a ``qbench.tasks`` entry point, runs through ``qbench sweep``
end to end and its rows reach results.parquet, report.html and ``qbench report --markdown``: the task contract
(qbench.tasks.base) is all a new task needs. The toy task classifies texts by a character histogram with a small
two-layer network of its own (ONNX built with onnx.helper, no hub); its quality is agreement with FP32's class."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]

PLUGIN = '''
"""Toy task: bag-of-characters classification by a two-layer MLP; quality = agreement with FP32's argmax."""
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qbench.tasks.base import Task
from qbench.tasks.common import QDQ_VERSION, backend, cached_stats, table_file

DIM, HIDDEN, CLASSES = 32, 24, 4


def features(texts):
    x = np.zeros((len(texts), DIM), np.float32)
    for i, t in enumerate(texts):
        for ch in t:
            x[i, ord(ch) % DIM] += 1.0
    return x / np.maximum(x.sum(axis=1, keepdims=True), 1.0)


def make_model(path):
    rng = np.random.default_rng(7)
    w1 = numpy_helper.from_array(rng.normal(0, 1.0, (DIM, HIDDEN)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 1.0, (HIDDEN, CLASSES)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["logits"], name="fc2")]
    g = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", DIM])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])], [w1, w2])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, path)
    return path


class ToyTask(Task):
    name: ClassVar[str] = "toy"
    quality: ClassVar[tuple] = ("agreement", "agreement with FP32")
    short_label: ClassVar[str] = "agree"

    def prepare_model(self, ctx, sha256=None):
        ctx.fp32 = make_model(ctx.cache / "models" / "toy.onnx")
        return {"source": ctx.cfg.model.source, "onnx_path": str(ctx.fp32),
                "onnx_sha256": sha256 or self.artifact_sha256(ctx.fp32)}

    def encode(self, ctx, texts):
        return {"x": features(texts)}

    def ensure_stats(self, ctx, set_name):
        from qbench.calib import stats as st
        from qbench.quantize.qdq import calibration_tensors

        if set_name not in ctx.stats:
            texts = [s.text for s in ctx.calib_sets[set_name]]
            tensors = calibration_tensors(ctx.fp32_model())
            cc = ctx.cfg.calibration
            ids = [s.id for s in ctx.calib_sets[set_name]]
            key = st.cache_key("toy:" + ctx.manifest["model"]["onnx_sha256"], ids, tensors, cc.histogram_bins,
                               cc.batch_size, cc.histogram)
            batches = lambda: ({"x": features(b)} for b in st.iter_batches(texts, cc.batch_size))
            ctx.stats[set_name] = cached_stats(ctx, key, ctx.fp32, tensors, batches)[0]
        return ctx.stats[set_name]

    def build_variant(self, ctx, v, out_dir=None):
        import hashlib, json
        from qbench.quantize.qdq import build_qdq

        if v.baseline == "fp32":
            return ctx.fp32, {}
        table = v.calibrator.table(self.ensure_stats(ctx, v.calib_set))
        rel = table_file(ctx, v.calibrator.signature(), v.calib_set)
        table.save(ctx.run_dir / rel)
        key = hashlib.sha256(json.dumps([QDQ_VERSION, table.to_json(), v.flavor]).encode()).hexdigest()[:16]
        out = (out_dir or ctx.cache / "variants") / f"toy-{key}.onnx"
        rep = build_qdq(ctx.fp32_model(), table, v.exclusion_cfg, v.flavor, out)
        return out, {"table": rel, "quantized_tensors": len(rep.quantized_tensors)}

    def evaluate(self, ctx, v, artifact):
        be = backend(ctx)
        with be.open(be.build(artifact, ctx.run_dir)) as sess:
            pred = sess.infer({"x": features([s.text for s in ctx.evalset])})[0].argmax(axis=1)
        if v.baseline == "fp32":
            ctx.fp32_ref["pred"] = pred
        agree = float((pred == ctx.fp32_ref["pred"]).mean())
        return [("agreement", "all", agree, "fraction"), ("size_mb", "all", Path(artifact).stat().st_size / 1e6, "MB")]
'''

PYPROJECT = '''
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "qbench-toy-task"
version = "0.0.1"

[project.entry-points."qbench.tasks"]
toy = "qbench_toy_task:ToyTask"
'''

TEXTS = ["the quick brown fox", "jumps over the lazy dog", "pack my box with five dozen liquor jugs",
         "how vexingly quick daft zebras jump", "sphinx of black quartz, judge my vow", "a b c d e f g",
         "zzz yyy xxx", "lorem ipsum dolor sit amet", "consectetur adipiscing elit", "sed do eiusmod tempor",
         "incididunt ut labore", "et dolore magna aliqua", "ut enim ad minim veniam", "quis nostrud exercitation",
         "ullamco laboris nisi", "ut aliquip ex ea commodo", "duis aute irure dolor", "in reprehenderit in voluptate",
         "velit esse cillum", "dolore eu fugiat nulla", "pariatur excepteur sint", "occaecat cupidatat non proident",
         "sunt in culpa qui", "officia deserunt mollit", "anim id est laborum", "0123456789", "!!!???...",
         "mixed CASE Text", "tabs\tand spaces", "ümlaut ñ ç", "short", "a much longer sentence about nothing"]


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    src = tmp_path_factory.mktemp("toy-src")
    (src / "qbench_toy_task").mkdir()
    (src / "qbench_toy_task" / "__init__.py").write_text(PLUGIN)
    (src / "pyproject.toml").write_text(PYPROJECT)
    site = tmp_path_factory.mktemp("toy-site")
    # A real install (wheel build, dist-info with entry_points.txt) into a folder of its own; no network.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(src)], check=True, capture_output=True)
    return site


def _run(args, site, cwd, **env):
    e = {**os.environ, "PYTHONPATH": str(site) + os.pathsep + os.environ.get("PYTHONPATH", ""), **env}
    return subprocess.run([sys.executable, "-m", "qbench", *args], capture_output=True, text=True, cwd=cwd, env=e)


def _dataset(d: Path) -> Path:
    rows = [{"id": f"s{i:02d}", "text": t, "reference": t.upper()} for i, t in enumerate(TEXTS)]
    (d / "calibration.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:16]))
    (d / "evaluation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[16:]))
    (d / "toy.yaml").write_text(textwrap.dedent("""
        name: toy
        source: {kind: local, format: json}
        fields: {id: id, text: text, reference: reference}
        splits: {calibration: calibration.jsonl, evaluation: evaluation.jsonl}
    """))
    return d / "toy.yaml"


def test_a_third_task_from_an_entry_point_runs_a_sweep_and_reports(plugin_site, tmp_path):
    manifest = _dataset(tmp_path)
    cfg = tmp_path / "toy-sweep.yaml"
    cfg.write_text(textwrap.dedent(f"""
        name: toy
        task: toy
        model: {{source: toy-mlp}}
        data:
          manifest: {manifest}
          calibration: {{n: 16}}
          evaluation: {{n: 16}}
        sweep:
          baselines: [fp32]
          calibrators: [{{name: minmax}}, {{name: percentile, percentile: 90}}]
        measure: {{latency: {{batch_sizes: [4], warmup: 0, runs: 1, rounds: 1}}}}
    """))
    r = _run(["ls", "tasks"], plugin_site, tmp_path)
    listed = {line.split()[0]: line for line in r.stdout.splitlines()}
    assert r.returncode == 0 and set(listed) == {"retrieval", "translation", "causal_lm", "toy"}, r.stdout + r.stderr
    assert "graphs: encoder, decoder" in listed["translation"] and "graphs: model" in listed["toy"]
    # Without the plugin the task is unknown, and said so in one line with the key.
    r = _run(["validate", str(cfg)], tmp_path, tmp_path)
    assert r.returncode == 2 and "task" in r.stderr and "toy" in r.stderr, r.stderr
    r = _run(["sweep", str(cfg), "--out", str(tmp_path / "out"), "--no-progress"], plugin_site, tmp_path,
             QBENCH_CACHE=str(tmp_path / "cache"))
    assert r.returncode == 0, r.stderr[-2000:]
    (run,) = (tmp_path / "out" / "toy").iterdir()
    df = pd.read_parquet(run / "results.parquet")
    variants = ["fp32", "minmax+none+s8s8", "percentile[percentile=90.0]+none+s8s8"]
    assert set(df.variant) == set(variants) and set(df.status) == {"ok"}
    agree = df[df.metric == "agreement"].set_index("variant").value
    assert agree["fp32"] == 1.0
    # Oracle: ONNX Runtime on the artifact each variant's manifest entry names, features computed here.
    m = json.loads((run / "manifest.json").read_text())
    assert m["task"] == "toy" and m["complete"]
    sys.path.insert(0, str(plugin_site))
    try:
        from qbench_toy_task import features
    finally:
        sys.path.remove(str(plugin_site))
    x = features([json.loads(line)["text"] for line in (tmp_path / "evaluation.jsonl").read_text().splitlines()])
    pred = {v: ort.InferenceSession(m["variants"][v]["artifact"], providers=["CPUExecutionProvider"])
            .run(None, {"x": x})[0].argmax(axis=1) for v in variants}
    for v in variants:
        assert agree[v] == pytest.approx(float(np.mean(pred[v] == pred["fp32"])))
        assert m["variants"][v]["artifact_sha256"]
    qdq = [n.op_type for n in __import__("onnx").load(m["variants"]["minmax+none+s8s8"]["artifact"]).graph.node]
    assert qdq.count("QuantizeLinear") >= 2  # both MatMuls' activations quantized: a real INT8 variant
    # Latency was measured side by side for every variant, on the task's own feeds.
    lat = df[(df.metric == "latency_p50_ms") & (df.slice == "batch=4")]
    assert set(lat.variant) == set(variants) and (lat.value > 0).all()
    assert m["latency_inputs"] == {"batch=4": {"shape": [4, 32]}}
    # The report renders the task's rows: its own quality column, one row per variant.
    html = (run / "report.html").read_text()
    assert "agreement with FP32" in html and ">agree<" in html
    assert all(f">{v}<" in html for v in variants)
    md = _run(["report", str(run), "--markdown"], plugin_site, tmp_path)
    assert md.returncode == 0, md.stderr
    lines = md.stdout.splitlines()
    assert lines[0].startswith("| variant | agreement with FP32 | Δ vs FP32 |")
    for v in variants:
        row = next(line for line in lines if line.startswith(f"| `{v}` |"))
        assert row.split(" | ")[1] == f"{agree[v]:.4f}"
    assert "evaluation samples" in md.stdout
