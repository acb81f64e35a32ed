"""Which TensorRT imports here. Its own module: the builder, the runtime and the backend all ask, and
none of them should import another for it."""


def import_trt():
    """Full TensorRT (>= 10, strongly typed) where it imports, else TensorRT-RTX; None if neither."""
    try:
        import tensorrt as trt  # noqa: F401

        return trt, "tensorrt"
    except ImportError:
        pass
    try:
        import tensorrt_rtx_bindings as trt

        return trt, "tensorrt_rtx"
    except ImportError:
        return None, ""
