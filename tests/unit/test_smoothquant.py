"""SmoothQuant as an FP32 graph transform, and weight-only INT8 embedding tables, on models built in code.

Oracles: ONNX Runtime running the original and the transformed graph; numpy for the factors, the per-channel
statistics and the embedding rows."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qbench.calib import stats as st
from qbench.quantize.embeddings import quantize_embeddings
from qbench.quantize.smoothquant import factors, find_groups, smooth, smoothed_absmax

C, H = 16, 24
RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _fresh_rng():
    """Each test draws from its own seeded stream: its data must not depend on which tests ran before it
    (run alone, test_transformed_graph_is_equivalent drew another model and its flatness check failed)."""
    global RNG
    RNG = np.random.default_rng(0)


def _model() -> onnx.ModelProto:
    """x -> LayerNorm -> {Q, K MatMuls (shared input), residual Add}; x -> decomposed RMSNorm -> MatMul -> out;
    a GELU -> MatMul (no norm: left alone). Channel 3 of the LayerNorm's scale is an outlier, as in BERT."""
    gamma = np.ones(C, np.float32)
    gamma[3] = 30.0
    inits = {
        "ln_g": gamma, "ln_b": RNG.normal(0, 0.1, C).astype(np.float32),
        "wq": RNG.normal(0, 0.2, (C, H)).astype(np.float32), "wk": RNG.normal(0, 0.2, (C, H)).astype(np.float32),
        "rms_g": (RNG.uniform(0.5, 2, C) * np.where(np.arange(C) == 5, 20, 1)).astype(np.float32),
        "w3": RNG.normal(0, 0.2, (C, H)).astype(np.float32), "w4": RNG.normal(0, 0.2, (H, H)).astype(np.float32),
        "eps": np.array(1e-6, np.float32), "two": np.array(2.0, np.float32),
    }
    nodes = [
        helper.make_node("LayerNormalization", ["x", "ln_g", "ln_b"], ["ln"], name="ln", axis=-1),
        helper.make_node("MatMul", ["ln", "wq"], ["q"], name="q"),
        helper.make_node("MatMul", ["ln", "wk"], ["k"], name="k"),
        helper.make_node("Add", ["ln", "x"], ["res"], name="res"),
        helper.make_node("Shape", ["ln"], ["ln_shape"], name="shape"),
        helper.make_node("Pow", ["x", "two"], ["sq"], name="pow"),
        helper.make_node("ReduceMean", ["sq"], ["ms"], name="mean", axes=[-1], keepdims=1),
        helper.make_node("Add", ["ms", "eps"], ["mse"], name="addeps"),
        helper.make_node("Sqrt", ["mse"], ["rms"], name="sqrt"),
        helper.make_node("Div", ["x", "rms"], ["xn"], name="div"),
        helper.make_node("Mul", ["xn", "rms_g"], ["rn"], name="rms_mul"),
        helper.make_node("MatMul", ["rn", "w3"], ["h3"], name="m3"),
        helper.make_node("Gelu", ["h3"], ["g3"], name="gelu", domain="com.microsoft"),
        helper.make_node("MatMul", ["g3", "w4"], ["out3"], name="m4"),
    ]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("q", "k", "res", "out3")]
    graph = helper.make_graph(nodes, "sq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", C])],
                              outs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def _run(model: onnx.ModelProto, x: np.ndarray, names=None) -> list[np.ndarray]:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for n in names or []:
        model.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([o.name for o in model.graph.output], {"x": x})


def _x(n=4, s=7) -> np.ndarray:
    return RNG.normal(0, 1, (n, s, C)).astype(np.float32)


def test_groups_found_where_a_norm_folds():
    groups = {g.tensor: g for g in find_groups(_model())}
    assert set(groups) == {"ln", "rn"}  # the GELU output has no norm to fold into
    assert {m.name for m in groups["ln"].matmuls} == {"q", "k"}
    assert [n.name for n in groups["ln"].others] == ["res"]  # Shape needs nothing
    assert groups["ln"].divide == ["ln_g", "ln_b"] and groups["rn"].divide == ["rms_g"]


def test_factors_equal_the_formula():
    a = np.abs(RNG.normal(0, 3, C)) + 0.1
    ws = [RNG.normal(0, 1, (C, H)), RNG.normal(0, 1, (C, H))]
    w = np.maximum(np.abs(ws[0]).max(1), np.abs(ws[1]).max(1))
    for alpha in (0.0, 0.5, 0.8, 1.0):
        np.testing.assert_allclose(factors(a, ws, alpha), a ** alpha / w ** (1 - alpha), rtol=1e-6)
    a[2] = 0.0  # a dead channel keeps its scale
    assert factors(a, ws, 0.5)[2] == 1.0


@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_transformed_graph_is_equivalent(alpha):
    model, x = _model(), _x()
    (ln, rn), = [_run(model, _x(8, 5), ["ln", "rn"])[-2:]]
    cmax = {"ln": np.abs(ln).reshape(-1, C).max(0), "rn": np.abs(rn).reshape(-1, C).max(0)}
    smoothed, s, src = smooth(model, cmax, alpha)
    assert src == {"ln": "ln", "rn": "rn"}
    assert set(s) == {"ln", "rn"} and model.graph.node[0].name == "ln"  # the original is left untouched
    for ref, got in zip(_run(model, x), _run(smoothed, x)):
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    # The smoothed tensors carry x / s: their per-tensor absmax is the per-channel max |x| / s of the first pass.
    ln2, rn2 = _run(smoothed, x, ["ln", "rn"])[-2:]
    ln1, rn1 = _run(model, x, ["ln", "rn"])[-2:]
    np.testing.assert_allclose(ln2, ln1 / s["ln"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rn2, rn1 / s["rn"], rtol=1e-5, atol=1e-6)
    cm1 = np.abs(ln1).reshape(-1, C).max(0)
    assert smoothed_absmax(cm1, s["ln"]) == pytest.approx(float(np.abs(ln2).max()), rel=1e-5)
    # The outlier channel's range moved into the weights: the smoothed activation's range is flatter (on this
    # seeded model, more than 3x flatter at both alphas).
    assert (cm1.max() / cm1.min()) > 3 * (np.abs(ln2).reshape(-1, C).max(0).max() / np.abs(ln2).reshape(-1, C).max(0).min())


def test_targets_all_smooths_the_rest_through_a_mul():
    model, x = _model(), _x()
    names = ["ln", "rn", "g3"]
    outs = _run(model, _x(8, 5), names)[-3:]
    cmax = {n: np.abs(o).reshape(-1, o.shape[-1]).max(0) for n, o in zip(names, outs)}
    smoothed, s, src = smooth(model, cmax, 0.5, targets="all")
    assert src == {"ln": "ln", "rn": "rn", "g3_smoothed": "g3"}
    assert [n.input[0] for n in smoothed.graph.node if n.name == "m4"] == ["g3_smoothed"]
    for ref, got in zip(_run(model, x), _run(smoothed, x)):
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    g3 = _run(model, x, ["g3"])[-1]
    g3s = _run(smoothed, x, ["g3_smoothed"])[-1]
    np.testing.assert_allclose(g3s, g3 / s["g3_smoothed"], rtol=1e-5, atol=1e-6)


def test_shared_initializer_is_copied_not_changed_twice():
    model = _model()
    model.graph.node.append(helper.make_node("MatMul", ["x", "wq"], ["extra"], name="extra"))
    model.graph.output.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, None))
    cmax = {"ln": np.full(C, 2.0), "rn": np.full(C, 3.0)}
    smoothed, _, _ = smooth(model, cmax, 0.5)
    x = _x()
    for ref, got in zip(_run(model, x), _run(smoothed, x)):
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_channel_absmax_in_the_same_pass_ignores_padding(masked_model):
    """Per-channel max |x| against numpy over the unpadded positions, from the one pass that also histograms."""
    rng = np.random.default_rng(3)
    batches = []
    for _ in range(3):
        x = rng.normal(0, 1, (4, 6, 4)).astype(np.float32)
        mask = np.ones((4, 6), np.int64)
        mask[1, 4:] = 0
        mask[3, 2:] = 0
        x[~mask.astype(bool)] = 1e4  # padding garbage that must not count
        batches.append({"X": x, "attention_mask": mask})
    got = st.collect(masked_model, ["Y"], batches, channels=True)["Y"]
    want = np.max([np.abs(2 * b["X"][b["attention_mask"].astype(bool)]).max(0) for b in batches], axis=0)
    np.testing.assert_array_equal(got.channel_absmax, want)
    assert got.absmax == pytest.approx(float(want.max())) and want.max() < 100
    assert st.collect(masked_model, ["Y"], batches)["Y"].channel_absmax is None  # asked for only where needed


def test_channel_absmax_skips_a_last_axis_that_changes_length(masked_model):
    """Batches of different lengths with no mask (a translation encoder's pass): Y's last axis is static, so its
    maxima are numpy's; mask_f's last axis is the sequence, so it keeps none (it crashed on (14,) vs (16,))."""
    rng = np.random.default_rng(4)
    batches = [{"X": rng.normal(0, 1, (2, s, 4)).astype(np.float32), "attention_mask": np.ones((2, s), np.int64)}
               for s in (5, 7, 5)]
    got = st.collect(masked_model, ["Y", "mask_f"], batches, channels=True, mask_input=None)
    want = np.max([np.abs(2 * b["X"]).reshape(-1, 4).max(0) for b in batches], axis=0)
    np.testing.assert_array_equal(got["Y"].channel_absmax, want)
    assert got["mask_f"].channel_absmax is None and got["mask_f"].absmax == 1.0


def test_embeddings_int8_per_row(tmp_path):
    table = RNG.normal(0, 1, (500, 64)).astype(np.float32)
    table[7] *= 40  # one row with a large range keeps its own scale
    graph = helper.make_graph(
        [helper.make_node("Gather", ["emb", "ids"], ["e"], name="g", axis=0),
         helper.make_node("Gather", ["emb", "ids2"], ["e2"], name="g2", axis=0)], "emb",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"]),
         helper.make_tensor_value_info("ids2", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("e2", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(table, "emb")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    fp32_size = len(model.SerializeToString())
    assert quantize_embeddings(model) == ["emb"]
    assert len(model.SerializeToString()) < fp32_size / 4 + 500 * (4 + 1) + 1000  # int8 table, a scale and zero a row
    ids = np.arange(500, dtype=np.int64)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    e, e2 = sess.run(None, {"ids": ids, "ids2": ids[::-1].copy()})
    scale = (np.abs(table).max(1) / 127).astype(np.float32)
    want = np.clip(np.rint(table / scale[:, None]), -127, 127) * scale[:, None]
    np.testing.assert_allclose(e, want, rtol=1e-6)
    np.testing.assert_allclose(e2, want[::-1], rtol=1e-6)
    assert np.abs(e - table).max(1).max() <= 0.5 * scale.max() * 1.0001


def test_config_axis_and_variant_ids(tmp_path):
    from qbench.config.schema import SweepCfg
    from qbench.run.variants import expand

    sw = SweepCfg(baselines=["fp32"], calibrators=[{"name": "minmax"}], embeddings=["int8"],
                  transforms=["none", {"name": "smoothquant", "alpha": [0.5, 0.8]}])
    assert [t.signature() for t in sw.transforms] == ["none", "smoothquant[alpha=0.5]", "smoothquant[alpha=0.8]"]

    class Cfg:  # the parts of a SweepConfig that expand reads
        sweep = sw
        backend = type("B", (), {"name": "ort"})()
        data = type("D", (), {"sets": lambda self: {"default": None}})()

    ids = [v.id for v in expand(Cfg())]
    assert ids[1:] == ["minmax+none+s8s8+emb_int8", "minmax+none+s8s8+smoothquant[alpha=0.5]+emb_int8",
                       "minmax+none+s8s8+smoothquant[alpha=0.8]+emb_int8"]
    with pytest.raises(Exception, match=r"alpha must be within \[0, 1\]; got 1.5"):
        SweepCfg(transforms=[{"name": "smoothquant", "alpha": 1.5}])


def _layer() -> onnx.ModelProto:
    """One BERT layer (post-norm): LayerNorm -> Q, K, V -> softmax(QK^T) V -> Transpose/Reshape -> output projection
    (attn_out) -> residual LayerNorm -> FFN up -> GELU -> FFN down (ffn_down). Outlier channels in both norms."""
    g1, g2 = np.ones(C, np.float32), np.ones(C, np.float32)
    g1[3], g2[9] = 30.0, 12.0
    w = {n: RNG.normal(0, 0.2, shape).astype(np.float32) for n, shape in
         [("wq", (C, C)), ("wk", (C, C)), ("wv", (C, C)), ("wo", (C, C)), ("w1", (C, H)), ("w2", (H, C))]}
    w["w2"][5] *= 8  # one FFN-down weight row much larger than the rest, as in MiniLM
    inits = {**w, "g1": g1, "b1": RNG.normal(0, 0.1, C).astype(np.float32), "g2": g2,
             "b2": RNG.normal(0, 0.1, C).astype(np.float32), "shape": np.array([0, 0, C], np.int64)}
    mm = lambda a, b, o: helper.make_node("MatMul", [a, b], [o], name=o)  # noqa: E731
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g1", "b1"], ["ln1"], name="ln1", axis=-1),
        mm("ln1", "wq", "q"), mm("ln1", "wk", "k"), mm("ln1", "wv", "v"),
        helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
        mm("q", "kt", "scores"), helper.make_node("Softmax", ["scores"], ["p"], name="softmax", axis=-1),
        mm("p", "v", "ctx"), helper.make_node("Transpose", ["ctx"], ["ctx_t"], name="ctx_t", perm=[0, 1, 2]),
        helper.make_node("Reshape", ["ctx_t", "shape"], ["ctx_r"], name="ctx_r"),
        mm("ctx_r", "wo", "o"), helper.make_node("Add", ["o", "ln1"], ["res1"], name="res1"),
        helper.make_node("LayerNormalization", ["res1", "g2", "b2"], ["ln2"], name="ln2", axis=-1),
        mm("ln2", "w1", "h"), helper.make_node("Gelu", ["h"], ["gelu"], name="gelu", domain="com.microsoft"),
        mm("gelu", "w2", "out"),
    ]
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", C])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def test_alpha_per_group_kind():
    """Each group's factors follow s_j = max|X_j|^a / max|W_j,:|^(1-a) with its own kind's a (numpy oracle on
    the original weights), and the FP32 graph stays equivalent."""
    model = _layer()
    kinds = {g.tensor: g.kind for g in find_groups(model, "all")}
    assert kinds == {"ln1": "norm", "ctx_r": "attn_out", "ln2": "norm", "gelu": "ffn_down"}
    names = list(kinds)
    acts = dict(zip(names, _run(model, _x(8, 5), names)[1:]))
    cmax = {n: np.abs(a).reshape(-1, a.shape[-1]).max(0) for n, a in acts.items()}
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    readers = {"ln1": ["wq", "wk", "wv"], "ctx_r": ["wo"], "ln2": ["w1"], "gelu": ["w2"]}
    alpha = {"norm": 0.3, "attn_out": 0.6, "ffn_down": 0.9}
    smoothed, s, src = smooth(model, cmax, alpha, targets="all")
    for q, t in src.items():
        a = alpha[kinds[t]]
        w = np.max([np.abs(inits[n].astype(np.float64)).max(1) for n in readers[t]], axis=0)
        np.testing.assert_allclose(s[q], cmax[t].astype(np.float64) ** a / w ** (1 - a), rtol=1e-5)
    # one alpha for every group is the same as a mapping that gives each kind that alpha
    _, s_one, _ = smooth(model, cmax, 0.6, targets="all")
    _, s_map, _ = smooth(model, cmax, dict.fromkeys(alpha, 0.6), targets="all")
    assert all(np.array_equal(s_one[q], s_map[q]) for q in s_one) and not np.allclose(s["ln1"], s_one["ln1"])
    x = _x()
    ref, got = _run(model, x)[0], _run(smoothed, x)[0]
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_alpha_per_group_config(tmp_path):
    from qbench.config.schema import SweepCfg, load_config
    from qbench.config.errors import ConfigError

    sw = SweepCfg(baselines=["fp32"], transforms=[{"name": "smoothquant", "targets": "all", "alpha": [
        {"ffn_down": 0.95, "norm": 0.8, "attn_out": 0.5}, 0.8]}])
    assert [t.signature() for t in sw.transforms] == [
        "smoothquant[alpha.norm=0.8,alpha.attn_out=0.5,alpha.ffn_down=0.95,targets=all]",
        "smoothquant[alpha=0.8,targets=all]"]
    assert SweepCfg(transforms=[{"name": "smoothquant", "alpha": {"norm": 0.7}}]).transforms[0].signature() == \
        "smoothquant[alpha.norm=0.7]"
    cfg = tmp_path / "c.yaml"
    (tmp_path / "m.yaml").write_text("splits: {}\n")
    for alpha, targets, want in [
            ("{norm: 0.8, atn_out: 0.9, ffn_down: 0.9}", "all",
             "sweep.transforms[0].alpha: Value error, unknown group 'atn_out'; the groups are norm, attn_out, ffn_down"),
            ("{norm: 0.8}", "all", "exactly the groups targets: all smooths (norm, attn_out, ffn_down); got norm"),
            ("{norm: 0.8, ffn_down: 0.9}", "norm", "targets: norm smooths (norm); got norm, ffn_down"),
            ("{norm: 1.2, attn_out: 0.9, ffn_down: 0.9}", "all", "alpha.norm must be within [0, 1]; got 1.2")]:
        cfg.write_text(f"name: t\nmodel: {{source: m}}\ndata: {{manifest: m.yaml}}\nsweep:\n  baselines: [fp32]\n"
                       f"  transforms: [{{name: smoothquant, targets: {targets}, alpha: {alpha}}}]\n")
        with pytest.raises(ConfigError) as ei:
            load_config(cfg)
        assert "\n" not in str(ei.value) and want in str(ei.value), str(ei.value)
