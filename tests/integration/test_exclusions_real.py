"""Exclusions on the real exported MiniLM graph: what each one keeps float, by name."""

from qbench.config.schema import ExclusionCfg
from qbench.quantize.qdq import load_model, plan

QKV0 = {f"/model/encoder/layer.0/attention/self/{p}/MatMul" for p in ("query", "key", "value")}


def test_embeddings_role_keeps_layer0_qkv_float(minilm):
    model = load_model(minilm.onnx_path)
    assert len(plan(model, ExclusionCfg())[0]) == 48
    chosen, rep = plan(model, ExclusionCfg(roles=["embeddings"]))
    names = {n.name for n in chosen}
    # The embedding LayerNorm's output feeds layer 0's Q, K and V projections: those stay float.
    assert len(names) == 45 and not (QKV0 & names)
    assert "/model/embeddings/LayerNorm/LayerNormalization" in rep.excluded_nodes
    assert "/model/embeddings/word_embeddings/Gather" in rep.excluded_nodes
    assert rep.warnings == []


def test_softmax_exclusion_keeps_probs_times_v_float(minilm):
    chosen, rep = plan(load_model(minilm.onnx_path), ExclusionCfg(op_types=["Softmax"]))
    names = {n.name for n in chosen}
    assert len(names) == 42  # the 6 probs x V matmuls read a Softmax output
    assert not any(n.endswith("attention/self/MatMul_1") for n in names)
    assert all(f"/model/encoder/layer.{i}/attention/self/MatMul" in names for i in range(6))  # Q x K^T stays int8


def test_name_regex_exclusion(minilm):
    chosen, rep = plan(load_model(minilm.onnx_path), ExclusionCfg(names=[r"layer\.5/output/dense"]))
    # The regex matches the scope's MatMul and its bias Add; only the MatMul was a quantization candidate.
    assert len(chosen) == 47
    assert rep.excluded_nodes == ["/model/encoder/layer.5/output/dense/Add", "/model/encoder/layer.5/output/dense/MatMul"]
