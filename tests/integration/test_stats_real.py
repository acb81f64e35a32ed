"""The statistics pass on the real MiniLM: oracle against plain, unpadded ONNX Runtime runs."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from qbench.calib import stats as st
from qbench.data.manifest import load_split
from qbench.config.errors import DataError
from qbench.quantize.qdq import calibration_tensors, load_model
from qbench.models.tokenize import Tokenizer


def _plain_outputs(model_path: Path, tensors: list[str], feeds: dict) -> list[np.ndarray]:
    """Independent of qbench.calib.stats: expose the tensors ourselves and run one unpadded sample."""
    m = onnx.load(str(model_path))
    for t in tensors:
        m.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(tensors, feeds)


def test_absmax_and_counts_equal_unpadded_runs(minilm, kjv_web):
    tok = Tokenizer(minilm.tokenizer_dir, 128)
    texts = [s.text for s in load_split(kjv_web, "calibration")[:24]]
    tensors = calibration_tensors(load_model(minilm.onnx_path))
    assert len(tensors) == 48  # 6 layers x (QKV input, Q, K^T, probs, V, context, FFN in, FFN-out in)

    # Padded batches of 8: padding must not enter the statistics.
    batches = [tok.encode_batch(texts[i:i + 8]) for i in range(0, 24, 8)]
    assert any((b["attention_mask"] == 0).any() for b in batches)
    got = st.collect(minilm.onnx_path, tensors, batches, bins=2048, threads=2)

    want_max = {t: 0.0 for t in tensors}
    want_count = {t: 0 for t in tensors}
    for text in texts:  # one sample at a time: no padding at all
        outs = _plain_outputs(minilm.onnx_path, tensors, tok.encode_batch([text]))
        for t, o in zip(tensors, outs):
            want_max[t] = max(want_max[t], float(np.abs(o).max()))
            want_count[t] += o.size
    for t in tensors:
        assert got[t].count == want_count[t], t
        assert got[t].absmax == pytest.approx(want_max[t], rel=1e-4), t
        assert got[t].hist.sum() == got[t].count


def test_non_finite_activation_names_tensor_and_batch(tmp_path):
    # y = MatMul(Log(x), W): log(0) = -inf reaches a MatMul input at a valid position.
    w = helper.make_tensor("W", TensorProto.FLOAT, [4, 2], np.ones(8, np.float32))
    g = helper.make_graph(
        [helper.make_node("Log", ["x"], ["logx"], name="log"), helper.make_node("MatMul", ["logx", "W"], ["y"], name="mm")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 2])], [w])
    path = tmp_path / "log.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    good = {"x": np.full((2, 4), 2.0, np.float32)}
    bad = {"x": np.array([[1, 2, 3, 4], [0, 1, 1, 1]], np.float32)}
    with pytest.raises(DataError, match=r"tensor 'logx'.*calibration batch 1"):
        st.collect(path, ["logx"], [good, bad], mask_input="none")
    with pytest.raises(DataError, match="empty"):
        st.collect(path, ["logx"], [], mask_input="none")
