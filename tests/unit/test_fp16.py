"""FP16 conversion with FP32-kept nodes (qbench.quantize.fp16), on small real ONNX graphs and MiniLM.

Oracle everywhere: the FP32 model run by ONNX Runtime CPU. Types are read back with ONNX
shape inference on the converted model, never from our own bookkeeping.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qbench.config.errors import ConfigError, ModelError
from qbench.quantize.fp16 import convert_fp16

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
F32_MIN = float(np.finfo(np.float32).min)  # what exporters put in attention masks
KEEP = {"ln", "sm", "mm2"}
# FP16 keeps 11 significant bits: unit roundoff u = 2**-11 ~ 4.9e-4 per rounding. The toy graph rounds
# about 6 times on the way to outputs of magnitude ~1 (n, after a LayerNorm dividing by std ~1; Y2 is a
# probability times 8, exact). 5e-3 is ~10 u: about 8x the measured error (~6e-4), yet far below what a
# real bug does (a dropped mask, a wrong weight or a leaked -inf move outputs by O(1) or make NaN). With
# FP16 outputs (keep_io_types=False) the last rounding alone is up to 2**-8 on values in [4, 8): rtol covers it.
ATOL = RTOL = 5e-3


def _rng_arrays():
    rng = np.random.default_rng(0)
    mask = np.zeros(8, np.float32)
    mask[-1] = F32_MIN
    return {
        "W": (0.5 * rng.standard_normal((8, 8))).astype(np.float32),
        "b": (0.1 * rng.standard_normal(8)).astype(np.float32),
        "gamma": (1 + 0.1 * rng.standard_normal(8)).astype(np.float32),
        "mask": mask,
    }


def _toy_model() -> onnx.ModelProto:
    """MatMul -> Add -> LayerNorm -> Softmax -> Cast(to=FLOAT) -> Mul(const) -> Add(mask) -> Softmax
    -> Mul(float(X.shape[2])) = Y2, plus Z = MatMul(X, W) sharing W, and nz = Cast(h2, to=BOOL)."""
    w = _rng_arrays()
    scale = np.linspace(1.0, 4.0, 8, dtype=np.float32)
    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["h"], name="mm"),
        helper.make_node("Add", ["h", "b"], ["h2"], name="add"),
        helper.make_node("Constant", [], ["beta"], name="beta_c",
                         value=numpy_helper.from_array(np.full(8, 0.1, np.float32))),
        helper.make_node("LayerNormalization", ["h2", "gamma", "beta"], ["n"], name="ln", axis=-1),
        helper.make_node("Softmax", ["n"], ["p"], name="sm", axis=-1),
        helper.make_node("Cast", ["p"], ["pc"], name="cast", to=FLOAT),
        helper.make_node("Constant", [], ["s_c"], name="scale", value=numpy_helper.from_array(scale)),
        helper.make_node("Mul", ["pc", "s_c"], ["s"], name="mul"),
        helper.make_node("Add", ["s", "mask"], ["logits"], name="mask_add"),
        helper.make_node("Softmax", ["logits"], ["Y"], name="sm2", axis=-1),
        helper.make_node("Shape", ["X"], ["shp"], name="shape"),
        helper.make_node("Constant", [], ["i2"], name="idx", value=numpy_helper.from_array(np.array(2, np.int64))),
        helper.make_node("Gather", ["shp", "i2"], ["d"], name="gather"),
        helper.make_node("Cast", ["d"], ["df"], name="cast_d", to=FLOAT),
        helper.make_node("Mul", ["Y", "df"], ["Y2"], name="mul_d"),
        helper.make_node("MatMul", ["X", "W"], ["Z"], name="mm2"),
        helper.make_node("Cast", ["h2"], ["nz"], name="cast_bool", to=TensorProto.BOOL),
    ]
    graph = helper.make_graph(
        nodes, "toy", [helper.make_tensor_value_info("X", FLOAT, ["b", "s", 8])],
        [helper.make_tensor_value_info("Y2", FLOAT, ["b", "s", 8]),
         helper.make_tensor_value_info("n", FLOAT, ["b", "s", 8]),
         helper.make_tensor_value_info("Z", FLOAT, ["b", "s", 8]),
         helper.make_tensor_value_info("nz", TensorProto.BOOL, ["b", "s", 8])],
        [numpy_helper.from_array(v, k) for k, v in w.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def _types(model: onnx.ModelProto) -> dict[str, int]:
    g = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def _float_types(model: onnx.ModelProto) -> dict[str, set[int]]:
    """Node name -> the float element types of its inputs and outputs, as ONNX infers them."""
    types = _types(model)
    return {n.name: {types[t] for t in [*n.input, *n.output] if t and types[t] in (FLOAT, FLOAT16)}
            for n in model.graph.node}


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.fixture(scope="module")
def toy():
    model = _toy_model()
    x = np.random.default_rng(1).standard_normal((2, 3, 8)).astype(np.float32)
    before = model.SerializeToString()
    converted, info = convert_fp16(model, KEEP)
    assert model.SerializeToString() == before  # the input model is not mutated
    return model, converted, info, x


def test_valid_and_close_to_fp32(toy):
    model, converted, _, x = toy
    onnx.checker.check_model(converted, full_check=True)
    ref, got = _run(model, {"X": x}), _run(converted, {"X": x})
    assert {k: v.dtype for k, v in got.items()} == {k: v.dtype for k, v in ref.items()}
    for name in ("Y2", "n"):
        np.testing.assert_allclose(got[name], ref[name], rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(got["Z"], ref["Z"])  # all-FP32 path on the untouched FP32 weight
    np.testing.assert_array_equal(got["nz"], ref["nz"])
    assert np.all(got["Y2"][..., -1] == 0)  # the clamped mask still masks: no NaN, no leak
    print(f"\ntoy max abs diff: Y2 {np.abs(got['Y2'] - ref['Y2']).max():.3g}, "
          f"n {np.abs(got['n'] - ref['n']).max():.3g}")


def test_kept_nodes_compute_fp32_and_others_fp16(toy):
    _, converted, info, _ = toy
    by_node = _float_types(converted)
    original = {n.name for n in _toy_model().graph.node}
    fp32 = {k for k, v in by_node.items() if k in original and v == {FLOAT}}
    fp16 = {k for k, v in by_node.items() if k in original and v == {FLOAT16}}
    # beta_c only feeds the kept LayerNorm, so the constant follows it and stays FP32; Shape reads
    # only metadata and takes X as produced (FP32), without a Cast.
    assert fp32 == KEEP | {"beta_c", "shape"}
    assert fp16 == {"mm", "add", "cast", "scale", "mul", "mask_add", "sm2", "cast_d", "mul_d", "cast_bool"}
    assert next(n for n in converted.graph.node if n.name == "shape").input[0] == "X"
    assert info["fp32_nodes"] == sorted(KEEP) and info["fp16_nodes"] == len(fp16)
    attrs = {n.name: {a.name: a.i for a in n.attribute} for n in converted.graph.node}
    assert attrs["cast"]["to"] == FLOAT16 and attrs["cast_d"]["to"] == FLOAT16  # Cast(to=FLOAT) retargeted
    assert attrs["cast_bool"]["to"] == TensorProto.BOOL  # float -> bool Cast keeps its target


def test_casts_added_match_hand_count(toy):
    _, converted, info, _ = toy
    original = {n.name for n in _toy_model().graph.node}
    added = [n for n in converted.graph.node if n.name not in original]
    # By hand: X -> fp16 for mm (mm2 reads X as is); h2 -> fp32 for ln (cast_bool reads fp16 h2);
    # p -> fp16 for cast; Y2 computed fp16, cast back to FP32 under its own name. Weights/constants: none.
    assert {(n.op_type, n.input[0], n.attribute[0].i) for n in added} == {
        ("Cast", "X", FLOAT16), ("Cast", "h2", FLOAT), ("Cast", "p", FLOAT16), ("Cast", "Y2_fp16", FLOAT)}
    assert info["casts_added"] == len(added) == 4
    assert len({n.name for n in converted.graph.node}) == len(converted.graph.node)


def test_shared_weight_gets_both_dtypes(toy):
    _, converted, _, _ = toy
    w = _rng_arrays()["W"]
    nodes = {n.name: n for n in converted.graph.node}
    inits = _inits(converted)
    assert nodes["mm2"].input[1] == "W" and inits["W"].dtype == np.float32
    np.testing.assert_array_equal(inits["W"], w)
    copy = nodes["mm"].input[1]
    assert copy != "W" and inits[copy].dtype == np.float16
    np.testing.assert_array_equal(inits[copy], w.astype(np.float16))
    assert inits["b"].dtype == np.float16 and inits["gamma"].dtype == np.float32  # single-precision users


def test_mask_initializer_is_clamped(toy):
    _, converted, info, _ = toy
    mask = _inits(converted)["mask"]
    assert mask.dtype == np.float16 and mask[-1] == -65504 and np.all(mask[:-1] == 0)
    assert info["clamped_initializers"] == 1


def test_keep_io_types(toy):
    _, converted, _, _ = toy
    types = _types(converted)
    assert [types[v.name] for v in converted.graph.input] == [FLOAT]
    assert [types[v.name] for v in converted.graph.output] == [FLOAT, FLOAT, FLOAT, TensorProto.BOOL]


def test_fp16_io_when_not_kept(toy):
    model, _, _, x = toy
    converted, info = convert_fp16(model, KEEP, keep_io_types=False)
    types = _types(converted)
    assert [types[v.name] for v in converted.graph.input] == [FLOAT16]
    assert [types[v.name] for v in converted.graph.output] == [FLOAT16, FLOAT16, FLOAT16, TensorProto.BOOL]
    # By hand: X -> fp32 for mm2, h2 -> fp32, p -> fp16, and the FP32-computed outputs n and Z -> fp16.
    assert info["casts_added"] == 5
    ref, got = _run(model, {"X": x}), _run(converted, {"X": x.astype(np.float16)})
    for name in ("Y2", "n", "Z"):
        assert got[name].dtype == np.float16
        np.testing.assert_allclose(got[name].astype(np.float32), ref[name], rtol=RTOL, atol=ATOL)
    print("\nfp16 io max abs diff: " + ", ".join(f"{k} {np.abs(got[k] - ref[k]).max():.3g}" for k in ("Y2", "n", "Z")))


def test_constant_nodes_and_type_attributes():
    """Constant(value_float), ConstantOfShape with a huge and with a default (float32 0) value,
    EyeLike(dtype=FLOAT) and Resize's FP32-only scales; RandomNormal without dtype (FLOAT by default)."""
    nodes = [
        helper.make_node("Shape", ["X"], ["shp"], name="shape"),
        helper.make_node("ConstantOfShape", ["shp"], ["fill"], name="fill",
                         value=numpy_helper.from_array(np.array([F32_MIN], np.float32))),
        helper.make_node("ConstantOfShape", ["shp"], ["zeros"], name="zeros"),
        helper.make_node("Constant", [], ["half"], name="half", value_float=0.5),
        helper.make_node("EyeLike", ["eye_src"], ["eye"], name="eye", dtype=FLOAT),
        helper.make_node("Max", ["X", "fill"], ["a"], name="max"),
        helper.make_node("Sum", ["a", "zeros", "eye"], ["b"], name="sum"),
        helper.make_node("Mul", ["b", "half"], ["c"], name="mul"),
        helper.make_node("Resize", ["c", "", "scales"], ["Y"], name="resize", mode="nearest"),
    ]
    graph = helper.make_graph(
        nodes, "consts", [helper.make_tensor_value_info("X", FLOAT, [1, 1, 2, 4])],
        [helper.make_tensor_value_info("Y", FLOAT, [1, 1, 4, 8])],
        [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
         numpy_helper.from_array(np.zeros((2, 4), np.float32), "eye_src")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    converted, info = convert_fp16(model)
    onnx.checker.check_model(converted, full_check=True)
    by_node = _float_types(converted)
    assert all(by_node[k] == {FLOAT16} for k in ("fill", "zeros", "half", "eye", "max", "sum", "mul"))
    assert by_node["resize"] == {FLOAT16, FLOAT} and _inits(converted)["scales"].dtype == np.float32
    consts = {n.name: {a.name: a for a in n.attribute} for n in converted.graph.node}
    assert numpy_helper.to_array(consts["fill"]["value"].t).tolist() == [-65504.0]
    assert numpy_helper.to_array(consts["zeros"]["value"].t).dtype == np.float16
    assert list(consts["half"]) == ["value"] and consts["eye"]["dtype"].i == FLOAT16
    assert info["clamped_initializers"] == 1 and info["casts_added"] == 2  # X in, Y out
    x = np.arange(8, dtype=np.float32).reshape(1, 1, 2, 4)
    np.testing.assert_array_equal(_run(converted, {"X": x})["Y"], _run(model, {"X": x})["Y"])

    # RandomNormal has no FP16 kernel in ORT CPU: checked structurally only.
    graph = helper.make_graph([helper.make_node("RandomNormal", [], ["R"], name="rn", shape=[2])], "rn", [],
                              [helper.make_tensor_value_info("R", FLOAT, [2])])
    converted, _ = convert_fp16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert converted.graph.node[0].attribute[-1].name == "dtype" and converted.graph.node[0].attribute[-1].i == FLOAT16
    assert _types(converted)["R_fp16"] == FLOAT16 and _types(converted)["R"] == FLOAT


def test_subgraph_is_refused():
    branch = [helper.make_graph([helper.make_node("Identity", ["X"], [f"{b}_out"])], b, [],
                                [helper.make_tensor_value_info(f"{b}_out", FLOAT, [2])]) for b in ("then", "else")]
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["Y"], name="the_branch", then_branch=branch[0], else_branch=branch[1])],
        "if", [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
               helper.make_tensor_value_info("X", FLOAT, [2])],
        [helper.make_tensor_value_info("Y", FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelError, match="the_branch"):
        convert_fp16(model)


def test_unknown_keep_name_is_refused(toy):
    with pytest.raises(ConfigError, match="lnn"):
        convert_fp16(toy[0], {"ln", "lnn"})


def test_minilm_keeps_norms_fp32(minilm):
    from qbench.models.tokenize import Tokenizer

    model = onnx.load(str(minilm.onnx_path))
    keep = {n.name for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax")}
    assert len(keep) == 19  # 13 LayerNorms + 6 attention softmaxes
    converted, info = convert_fp16(model, keep)
    onnx.checker.check_model(converted, full_check=True)
    by_node = _float_types(converted)
    assert all(by_node[k] == {FLOAT} for k in keep)
    assert by_node[next(n.name for n in model.graph.node if n.op_type == "MatMul")] == {FLOAT16}
    assert info["fp32_nodes"] == sorted(keep)
    # Each kept node reads an FP16-computed tensor and feeds FP16 nodes: 2 casts each, plus the
    # FP16 embedding cast back to FP32 under its own name.
    assert info["casts_added"] == 2 * len(keep) + 1
    # The exporter's extended attention mask: Where(mask, 0, finfo(float32).min), a scalar Constant.
    assert info["clamped_initializers"] == 1
    where = next(n for n in converted.graph.node if n.op_type == "Where" and n.name == "/model/Where_1")
    big = next(n for n in converted.graph.node if n.output[0] == where.input[2])
    assert numpy_helper.to_array(big.attribute[0].t).tolist() == -65504.0

    texts = ["The cat sat on the mat.", "Hi",
             "Quantized encoders should keep their embeddings close to the FP32 baseline, even for a "
             "sentence that is quite a bit longer than the others, so the short ones are padded."]
    feeds = Tokenizer(minilm.tokenizer_dir, max_length=128).encode_batch(texts)
    assert feeds["attention_mask"].min() == 0  # padding present: the mask path is exercised
    ref = _run(model, feeds)["embedding"]
    got = _run(converted, feeds)["embedding"]
    assert got.dtype == np.float32 and np.isfinite(got).all()
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert np.all(cos > 0.999), cos
    print(f"\nminilm: cos {cos}, max abs diff {np.abs(ref - got).max():.3g}, {info['fp16_nodes']} fp16 nodes, "
          f"{info['casts_added']} casts")
