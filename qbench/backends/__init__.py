"""Backends: build a runnable artifact from a (QDQ) ONNX model and open sessions on it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # a type only: importing a backend module (trt_calibrator) must not import numpy
    import numpy as np


class Session(Protocol):
    input_names: list[str]
    output_names: list[str]  # in the order infer() returns the outputs

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...

    def close(self) -> None: ...
