"""qbench.quantize.roles: structural roles on synthetic graphs whose node names say nothing."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qbench.config.schema import ExclusionCfg
from qbench.quantize.qdq import match_exclusions, plan
from qbench.quantize.roles import find_roles, node_roles, stable_names
from qbench.quantize.nodes import quantizable_nodes

V, D, P = 50, 8, 16
LN = [f"n{i}" for i in range(3, 12)]          # the decomposed LayerNorm
RMS = [f"n{i}" for i in range(18, 25)]        # the T5-style RMSNorm


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _inits() -> dict:
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    e = f(V, D)
    return {"w0": e, "w1": f(P, D), "k0": np.float32(2.0), "k1": np.float32(1e-5), "w2": f(D), "w3": f(D),
            "w4": f(D, D), "w5": f(D), "w6": f(D, D), "w7": f(D), "w8": f(D), "w9": e.T.copy(), "w10": f(V),
            "w11": f(D, 3), "i0": np.arange(4, dtype=np.int64)}


@pytest.fixture
def model() -> onnx.ModelProto:
    """Pre-norm block: embeddings -> decomposed LN -> attention -> residual -> RMSNorm -> decoy MatMul ->
    LayerNormalization -> tied lm_head (+bias) -> logits[V]; a second decoy MatMul -> aux[3]."""
    mk = helper.make_node
    nodes = [
        mk("Gather", ["w0", "x"], ["a0"], name="n0"),
        mk("Gather", ["w1", "i0"], ["a1"], name="n1"),
        mk("Add", ["a0", "a1"], ["h0"], name="n2"),
        mk("ReduceMean", ["h0"], ["t3"], name="n3", axes=[-1]),
        mk("Sub", ["h0", "t3"], ["t4"], name="n4"),
        mk("Pow", ["t4", "k0"], ["t5"], name="n5"),
        mk("ReduceMean", ["t5"], ["t6"], name="n6", axes=[-1]),
        mk("Add", ["t6", "k1"], ["t7"], name="n7"),
        mk("Sqrt", ["t7"], ["t8"], name="n8"),
        mk("Div", ["t4", "t8"], ["t9"], name="n9"),
        mk("Mul", ["t9", "w2"], ["t10"], name="n10"),
        mk("Add", ["t10", "w3"], ["t11"], name="n11"),
        mk("MatMul", ["t11", "w4"], ["t12"], name="n12"),
        mk("Transpose", ["t11"], ["t13"], name="n13", perm=[0, 2, 1]),
        mk("MatMul", ["t12", "t13"], ["t14"], name="n14"),
        mk("Softmax", ["t14"], ["t15"], name="n15", axis=-1),
        mk("MatMul", ["t15", "t11"], ["t16"], name="n16"),
        mk("Add", ["h0", "t16"], ["t17"], name="n17"),
        mk("Pow", ["t17", "k0"], ["t18"], name="n18"),
        mk("ReduceMean", ["t18"], ["t19"], name="n19", axes=[-1]),
        mk("Add", ["t19", "k1"], ["t20"], name="n20"),
        mk("Sqrt", ["t20"], ["t21"], name="n21"),
        mk("Reciprocal", ["t21"], ["t22"], name="n22"),
        mk("Mul", ["t17", "t22"], ["t23"], name="n23"),
        mk("Mul", ["w5", "t23"], ["t24"], name="n24"),
        mk("MatMul", ["t24", "w6"], ["t25"], name="n25"),
        mk("LayerNormalization", ["t25", "w7", "w8"], ["t26"], name="n26", axis=-1),
        mk("MatMul", ["t26", "w9"], ["t27"], name="n27"),
        mk("Add", ["t27", "w10"], ["y"], name="n28"),
        mk("MatMul", ["t24", "w11"], ["z"], name="n29"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.INT64, ["b", 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4, V]),
                   helper.make_tensor_value_info("z", TensorProto.FLOAT, ["b", 4, 3])], _inits())


def _summary(groups):
    return [(g.nodes, g.output) for g in groups]


def test_exact_groups(model):
    roles = find_roles(model)
    assert set(roles) == {"layernorm", "softmax", "embeddings", "lm_head", "mlp_gate"}
    assert roles["mlp_gate"] == []                            # no gated MLP here
    assert _summary(roles["layernorm"]) == [(LN, "t11"), (RMS, "t24"), (["n26"], "t26")]
    assert [g.detail for g in roles["layernorm"]] == [
        "LayerNorm (decomposed, 9 nodes)", "RMSNorm (decomposed, 7 nodes)", "LayerNormalization op"]
    assert _summary(roles["softmax"]) == [(["n15"], "t15")]
    # Pre-norm: the embedding sum also feeds the residual Add, so the LayerNorm stays out of the block.
    assert _summary(roles["embeddings"]) == [(["n0", "n1", "n2"], "h0")]
    assert roles["embeddings"][0].detail == "token w0 [50x8] by x; table w1 [16x8] by computed indices"
    # n25 reaches the logits only through another MatMul; n29's output is not vocabulary-sized.
    assert _summary(roles["lm_head"]) == [(["n27", "n28"], "y")]
    assert roles["lm_head"][0].detail == "vocabulary logits [V=50] -> 'y', weight w9 [8, 50] (tied to w0)"
    assert node_roles(model)["n27"] == ["lm_head"]


def test_layernorm_exclusion_keeps_consumers_float(model):
    matched, warnings = match_exclusions(model, ExclusionCfg(roles=["layernorm"]))
    assert matched == set(LN) | set(RMS) | {"n26"} and warnings == []
    chosen, rep = plan(model, ExclusionCfg(roles=["layernorm"]))
    # Every MatMul reading a norm output (n12, n16, n25, n27, n29) stays float; Q x K^T reads neither.
    assert [n.name for n in chosen] == ["n14"]
    assert [n.name for n in plan(model, ExclusionCfg())[0]] == ["n12", "n14", "n16", "n25", "n27", "n29"]


def test_other_role_exclusions(model):
    assert match_exclusions(model, ExclusionCfg(roles=["attention_probs"])) == ({"n15"}, [])
    assert match_exclusions(model, ExclusionCfg(roles=["softmax", "lm_head"])) == ({"n15", "n27", "n28"}, [])
    chosen, _ = plan(model, ExclusionCfg(roles=["embeddings"]))
    assert [n.name for n in chosen] == ["n12", "n14", "n16", "n25", "n27", "n29"]  # h0 feeds no MatMul


def test_quantizable_nodes(model):
    q = {d["name"]: d for d in quantizable_nodes(model)}
    assert list(q) == ["n12", "n14", "n16", "n25", "n27", "n29"]
    assert q["n27"]["roles"] == ["lm_head", "reads layernorm output"]
    assert q["n27"]["float_if_excluded"] == ["layernorm", "lm_head"]
    assert q["n16"]["roles"] == ["reads layernorm output", "reads softmax output"]
    assert q["n14"]["roles"] == [] and q["n14"]["weight_shape"] is None
    assert (q["n14"]["M"], q["n14"]["K"], q["n14"]["N"]) == (4, 8, 4)
    assert q["n12"]["weight"] == "w4" and q["n12"]["weight_shape"] == [8, 8]
    assert (q["n12"]["batch"], q["n12"]["M"], q["n12"]["K"], q["n12"]["N"], q["n12"]["macs"]) == (["b"], 4, 8, 8, None)
    assert q["n29"]["roles"] == ["reads layernorm output"] and q["n29"]["N"] == 3


def test_unmatched_role_warns(model):
    tiny = _model([helper.make_node("MatMul", ["a", "w"], ["b"], name="m")],
                  [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3])],
                  [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 4])],
                  {"w": np.ones((3, 4), np.float32)})
    matched, warnings = match_exclusions(tiny, ExclusionCfg(roles=["softmax", "layernorm", "embeddings"]))
    assert matched == set()
    assert warnings == ["exclusion role 'softmax' matches no node", "exclusion role 'layernorm' matches no node",
                        "exclusion role 'embeddings' matches no node"]
    # With no vocabulary anywhere, the MatMul that produces a graph output is a classifier head.
    assert [g.detail for g in find_roles(tiny)["lm_head"]] == [
        "classifier head [N=4] -> 'b', weight w [3, 4] (no vocabulary-sized output)"]


def test_post_norm_embeddings_absorb_their_layernorm():
    """BERT style: word + type + position, then a LayerNorm that alone reads the sum; a Gemm classifier."""
    mk = helper.make_node
    rng = np.random.default_rng(1)
    inits = {"e": rng.standard_normal((V, D)).astype(np.float32), "t": np.zeros((2, D), np.float32),
             "p": np.zeros((P, D), np.float32), "g": np.ones(D, np.float32), "bb": np.zeros(D, np.float32),
             "pi": np.arange(4, dtype=np.int64), "c": np.ones((3, D), np.float32), "cb": np.zeros(3, np.float32)}
    nodes = [mk("Gather", ["e", "x"], ["a"], name="g0"), mk("Gather", ["t", "tt"], ["b"], name="g1"),
             mk("Add", ["a", "b"], ["s0"], name="s0"), mk("Gather", ["p", "pi"], ["c0"], name="g2"),
             mk("Add", ["s0", "c0"], ["s1"], name="s1"),
             mk("LayerNormalization", ["s1", "g", "bb"], ["h"], name="ln", axis=-1),
             mk("Gather", ["h", "zero"], ["cls"], name="pick", axis=1),
             mk("Gemm", ["cls", "c", "cb"], ["logits"], name="head", transB=1)]
    zero = helper.make_node("Constant", [], ["zero"], name="k", value=numpy_helper.from_array(np.array(0, np.int64)))
    m = _model([zero, *nodes], [helper.make_tensor_value_info("x", TensorProto.INT64, ["b", 4]),
                                helper.make_tensor_value_info("tt", TensorProto.INT64, ["b", 4])],
               [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 3])], inits)
    roles = find_roles(m)
    assert _summary(roles["embeddings"]) == [(["g0", "g1", "s0", "g2", "s1", "ln"], "h")]
    assert _summary(roles["layernorm"]) == [(["ln"], "h")]
    # The vocabulary (50) appears in no output: the Gemm is the encoder's classifier head.
    assert _summary(roles["lm_head"]) == [(["head"], "logits")]
    assert "classifier head [N=3]" in roles["lm_head"][0].detail
    q = quantizable_nodes(m, roles)
    assert q == [{"name": "head", "op_type": "Gemm", "activations": ["cls"], "weight": "c", "weight_shape": [3, 8],
                  "roles": ["lm_head"], "float_if_excluded": ["lm_head"], "batch": [], "M": "b", "K": 8, "N": 3,
                  "macs": None}]


def test_t5_style_cast_and_div_one_variant():
    """RMSNorm as torch exports T5LayerNorm: Cast -> Pow -> ReduceMean -> Add -> Sqrt -> Div(1, .) -> Mul -> Mul."""
    mk = helper.make_node
    nodes = [mk("Cast", ["x"], ["c"], name="a", to=TensorProto.FLOAT),
             mk("Pow", ["c", "two"], ["p"], name="b"), mk("ReduceMean", ["p"], ["r"], name="c", axes=[-1]),
             mk("Add", ["r", "eps"], ["e"], name="d"), mk("Sqrt", ["e"], ["s"], name="e"),
             mk("Div", ["one", "s"], ["i"], name="f"), mk("Mul", ["c", "i"], ["n"], name="g"),
             mk("Mul", ["w", "n"], ["y"], name="h")]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, D])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, D])],
               {"two": np.float32(2), "eps": np.float32(1e-6), "one": np.float32(1), "w": np.ones(D, np.float32)})
    assert _summary(find_roles(m)["layernorm"]) == [(list("abcdefgh"), "y")]


def test_unnamed_nodes_get_stable_names_and_are_excluded_by_role():
    """Exporters may leave node names empty: exclusions address nodes by name, so the planner names them first
    (the names qbench inspect shows), and a role exclusion then keeps what it covers in float."""
    mk = helper.make_node
    nodes = [mk("LayerNormalization", ["x", "g", "bb"], ["h"], axis=-1),
             mk("MatMul", ["h", "w"], ["y"]), mk("Softmax", ["y"], ["z"], name="MatMul_1")]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, D])],
               [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, D])],
               {"g": np.ones(D, np.float32), "bb": np.zeros(D, np.float32), "w": np.ones((D, D), np.float32)})
    assert stable_names(m) == ["LayerNormalization_0", "MatMul_1_", "MatMul_1"]
    assert _summary(find_roles(m)["layernorm"]) == [(["LayerNormalization_0"], "h")]
    assert [d["name"] for d in quantizable_nodes(m)] == ["MatMul_1_"]
    matched, warnings = match_exclusions(m, ExclusionCfg(roles=["layernorm"]))
    assert matched == {"LayerNormalization_0"} and warnings == []
    assert [n.name for n in m.graph.node] == ["LayerNormalization_0", "MatMul_1_", "MatMul_1"]
    from qbench.quantize.qdq import plan

    assert [n.name for n in plan(m, ExclusionCfg())[0]] == ["MatMul_1_"]
    assert plan(m, ExclusionCfg(roles=["layernorm"]))[0] == []  # the MatMul reads the LayerNorm's output
    assert plan(m, ExclusionCfg(op_types=["Softmax"]))[1].excluded_nodes == ["MatMul_1"]  # not every node


def test_name_hint_fallback():
    """A lookup table fed as a graph input is no initializer: only the old name hint finds it."""
    nodes = [helper.make_node("Gather", ["table", "x"], ["y"], name="/bert/embeddings/word/Gather")]
    m = _model(nodes, [helper.make_tensor_value_info("table", TensorProto.FLOAT, [V, D]),
                       helper.make_tensor_value_info("x", TensorProto.INT64, [4])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, D])], {})
    (g,) = find_roles(m)["embeddings"]
    assert g.nodes == ["/bert/embeddings/word/Gather"] and "name hint" in g.detail
    assert match_exclusions(m, ExclusionCfg(roles=["embeddings"])) == ({"/bert/embeddings/word/Gather"}, [])


def test_swiglu_gate():
    """Llama's MLP as torch exports it: SiLU(x Wg) = Mul(g, Sigmoid(g)), times x Wu, read by down_proj. Two decoys:
    the same shape with projections of different tensors, and a plain sigmoid GLU (Sigmoid(g) * u, not SiLU)."""
    mk = helper.make_node
    nodes = [mk("MatMul", ["x", "wg"], ["g"], name="gate_proj"), mk("Sigmoid", ["g"], ["s"], name="sig"),
             mk("Mul", ["g", "s"], ["a"], name="silu"), mk("MatMul", ["x", "wu"], ["u"], name="up_proj"),
             mk("Mul", ["a", "u"], ["p"], name="gate"), mk("MatMul", ["p", "wd"], ["y"], name="down_proj"),
             # decoy 1: SiLU(x Wg) * (y Wu): the two projections read different tensors
             mk("MatMul", ["x", "wg"], ["g2"], name="g2"), mk("Sigmoid", ["g2"], ["s2"], name="sig2"),
             mk("Mul", ["s2", "g2"], ["a2"], name="silu2"), mk("MatMul", ["y", "wu2"], ["u2"], name="u2"),
             mk("Mul", ["a2", "u2"], ["z"], name="mul2"),
             # decoy 2: Sigmoid(x Wg) * (x Wu): a GLU without the SiLU
             mk("MatMul", ["x", "wg"], ["g3"], name="g3"), mk("Sigmoid", ["g3"], ["s3"], name="sig3"),
             mk("MatMul", ["x", "wu"], ["u3"], name="u3"), mk("Mul", ["s3", "u3"], ["v"], name="mul3")]
    rng = np.random.default_rng(0)
    w = {k: rng.standard_normal(shape).astype(np.float32)
         for k, shape in (("wg", (D, 3)), ("wu", (D, 3)), ("wd", (3, D)), ("wu2", (D, 3)))}
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", D])],
               [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["b", d]) for o, d in (("z", 3), ("v", 3))], w)
    (g,) = find_roles(m)["mlp_gate"]
    assert (g.nodes, g.output, g.detail) == (["sig", "silu", "gate"], "p", "SwiGLU: SiLU(x W_gate) * (x W_up)")
    q = {d["name"]: d for d in quantizable_nodes(m)}
    assert q["down_proj"]["roles"] == ["reads mlp_gate output"]
    assert q["down_proj"]["float_if_excluded"] == ["mlp_gate"]
    assert q["gate_proj"]["roles"] == [] and q["up_proj"]["roles"] == []
