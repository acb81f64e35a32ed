"""Evaluation sessions (qbench.tasks.common.batch_session): ONNX Runtime's without spin-waiting threads, the same
outputs as the latency sessions'; a backend without ``open_batch`` gets its ``open``."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from qbench.backends.ort import OrtBackend
from qbench.tasks.common import batch_session


@pytest.fixture
def model(tmp_path):
    w = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["y"])],
                          "g", [helper.make_tensor_value_info("x", TP.FLOAT, ["b", 64])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, ["b", 64])], [numpy_helper.from_array(w, "w")])
    path = tmp_path / "m.onnx"
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


def test_batch_sessions_do_not_spin_and_compute_the_same(model):
    be = OrtBackend(threads=2)
    x = {"x": np.random.default_rng(1).normal(size=(32, 64)).astype(np.float32)}
    with be.open(model) as timed, batch_session(be, model) as batch:
        spin = lambda s: s._sess.get_session_options().get_session_config_entry(  # noqa: E731
            "session.intra_op.allow_spinning")
        assert spin(batch) == "0"
        with pytest.raises(Exception):  # never set for the latency sessions: ONNX Runtime's default, spinning
            spin(timed)
        np.testing.assert_array_equal(timed.infer(x)[0], batch.infer(x)[0])


def test_a_backend_without_open_batch_gets_open():
    be = SimpleNamespace(open=lambda art: ("open", art))
    assert batch_session(be, "a.onnx") == ("open", "a.onnx")
