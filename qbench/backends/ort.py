"""ONNX Runtime backend: CPU everywhere (the embedded default); CUDA EP when onnxruntime-gpu is installed."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from qbench.config.errors import BackendUnavailable, ModelError, first_line


class OrtSession:
    def __init__(self, path: Path, threads: int, providers: list[str], spin: bool = True):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        if not spin:  # see OrtBackend.open_batch
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise here
        # A weight-only DequantizeLinear -> MatMul is fused into MatMulNBits, which by default (accuracy level 4)
        # quantizes the activations to int8 per block: a weight-only variant would be scored as W8A8/W4A8. Level 1
        # computes in FP32, as the format (and TensorRT's weight-only GEMMs, in their float type) means
        # (measured: tests/unit/test_formats.py). No other variant meets MatMulNBits.
        so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
        try:
            self._sess = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types; the first line is the useful part
            raise ModelError(f"{path}: ONNX Runtime cannot load the model: {first_line(e)}") from None
        self.input_names = [i.name for i in self._sess.get_inputs()]
        self.output_names = [o.name for o in self._sess.get_outputs()]
        self.threads = threads

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._sess.run(None, {k: v for k, v in feeds.items() if k in self.input_names})

    def close(self) -> None:
        self._sess = None

    def __enter__(self) -> "OrtSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class OrtBackend(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str] = "ort"
    threads: int = Field(2, ge=1)
    provider: str = "CPUExecutionProvider"

    def check(self) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise BackendUnavailable("backend 'ort': onnxruntime is not installed (pip install onnxruntime)") from None

    def versions(self) -> dict[str, str]:
        import onnxruntime as ort

        return {"onnxruntime": ort.__version__, "ort_provider": self.provider, "ort_threads": str(self.threads)}

    def device(self) -> str:
        import platform

        return f"{platform.processor() or platform.machine()} CPU, {self.threads} threads"

    def build(self, onnx_path: Path, workdir: Path) -> Path:
        # ONNX Runtime compiles at session creation; the QDQ ONNX is the artifact.
        return onnx_path

    def open(self, artifact: Path) -> OrtSession:
        return OrtSession(artifact, self.threads, [self.provider])

    def open_batch(self, artifact: Path) -> OrtSession:
        """A session for throughput work (evaluating batches of 32), whose idle threads sleep instead of
        spin-waiting for the next operator. Spinning saves microseconds per operator, which the latency runs
        keep (``open``); over a batch it buys nothing, and on a machine shared with other jobs the spinning
        threads burn the cores the work needs: embedding 1,000 texts with MiniLM INT8 on 2 loaded cores
        (load average 7) took 5.8-6.4 s wall and 3.9-4.5 s CPU without spinning, 9.3-10.5 s and 6.2-7.1 s
        with it. The outputs are the same: spinning changes when a thread wakes, not what it computes."""
        return OrtSession(artifact, self.threads, [self.provider], spin=False)


def cpu_float16_fallback(path: Path) -> dict:
    """How ONNX Runtime's CPU EP runs an FP16 graph, read from the graph it optimizes (written to a temp dir).

    Where the CPU EP has no FP16 kernel (MatMul among them in ORT 1.32) it inserts Casts and computes the node
    in FP32, and it drops the Casts between two such nodes, so a chain of them runs in FP32 end to end: their
    intermediate results are never rounded to FP16, as they are on a GPU. ``fp32_ops`` counts, per op type, the
    nodes that read an FP32 copy ORT made. Returns {"ort_inserted_casts": n, "fp32_ops": {...}, "evaluated_by": text}.
    """
    import tempfile

    import onnx
    import onnxruntime as ort

    orig = onnx.load(str(path), load_external_data=False)
    known = {n.name for n in orig.graph.node}
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory() as d:
        so.optimized_model_filepath = str(Path(d) / "opt.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        opt = onnx.load(so.optimized_model_filepath, load_external_data=False)
    inserted = [n for n in opt.graph.node if n.op_type == "Cast" and n.name not in known]
    up = {n.output[0] for n in inserted if any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute)}
    ops: dict[str, int] = {}
    for n in opt.graph.node:
        if n.op_type != "Cast" and any(x in up for x in n.input):
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
    ops = dict(sorted(ops.items()))
    text = (f"onnxruntime {ort.__version__} CPUExecutionProvider: it inserted {len(inserted)} Casts; "
            + ", ".join(f"{k} {v}" for k, v in ops.items())
            + " read an FP32 copy, so they and the nodes after them up to the next FP16 kernel compute in FP32")
    return {"ort_inserted_casts": len(inserted), "fp32_ops": ops, "evaluated_by": text}
