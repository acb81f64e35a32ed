"""ONNX Runtime backend: CPU everywhere (the embedded default); CUDA EP when onnxruntime-gpu is installed."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from qbench.config.errors import BackendUnavailable, ModelError, first_line


class OrtSession:
    def __init__(self, path: Path, threads: int, providers: list[str]):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise here
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
