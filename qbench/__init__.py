"""qbench: a quantization calibration and accuracy workbench for TensorRT and ONNX Runtime.

Importing qbench stays cheap: onnxruntime, torch, tensorrt and datasets are imported
only inside the functions that need them.
"""

__version__ = "0.1.0"
