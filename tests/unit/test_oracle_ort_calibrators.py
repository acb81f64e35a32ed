"""Oracle: our calibrators against ONNX Runtime's own calibrators, on identical data and the same model."""

from pathlib import Path

import numpy as np
import pytest
from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

from calibrators.minmax import MinMax
from calibrators.percentile import Percentile
from qbench.calib import stats as st
from qbench.quantize.qdq import calibration_tensors, load_model

BINS = 2048


class _Reader:
    def __init__(self, batches):
        self._it = iter(batches)

    def get_next(self):
        return next(self._it, None)


def _batches(n_batches=6, batch=16):
    rng = np.random.default_rng(21)
    # Heavy-ish tails, and a growing scale, so ranges move between batches.
    return [{"X": (rng.standard_t(4, (batch, 8)) * (1 + 0.3 * i)).astype(np.float32)} for i in range(n_batches)]


def _ort(model: Path, tmp_path: Path, method, extra: dict) -> dict[str, float]:
    cal = create_calibrator(model, ["MatMul"], augmented_model_path=str(tmp_path / f"aug_{method.name}.onnx"),
                            calibrate_method=method, extra_options=extra)
    for b in _batches():  # one collect_data per batch, as quantize_static's strided mode does
        cal.collect_data(_Reader([b]))
    return {k: float(max(np.abs(np.asarray(v.range_value[0])).max(), np.abs(np.asarray(v.range_value[1])).max()))
            for k, v in cal.compute_data().data.items()}


def _ours(model: Path):
    tensors = calibration_tensors(load_model(model))
    return tensors, st.collect(model, tensors, _batches(), BINS, threads=1, mask_input="none")


def test_minmax_is_bit_identical_to_onnxruntime(mlp_model, tmp_path):
    tensors, stats = _ours(mlp_model)
    theirs = _ort(mlp_model, tmp_path, CalibrationMethod.MinMax, {})
    ours = MinMax().table(stats).amax
    assert set(tensors) == {"ln_out", "relu_out"}
    for t in tensors:
        assert ours[t] == theirs[t], t


def test_percentile_within_two_bins_of_onnxruntime(mlp_model, tmp_path):
    tensors, stats = _ours(mlp_model)
    for p in (99.0, 99.9):
        theirs = _ort(mlp_model, tmp_path, CalibrationMethod.Percentile, {"percentile": p, "num_bins": BINS})
        ours = Percentile(percentile=p).table(stats).amax
        for t in tensors:
            # ORT's |x| histogram spans [0, max] (re-binned as the max grows); ours sits on the power-of-two
            # lattice with bins at most 2x finer. Both answers are bin edges near the true percentile.
            ort_bin = theirs[t] and stats[t].absmax / BINS
            assert ours[t] == pytest.approx(theirs[t], abs=2 * max(stats[t].bin_width, ort_bin)), (t, p)
