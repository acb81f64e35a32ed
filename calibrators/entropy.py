"""Entropy (KL) calibration: the algorithm of TensorRT's EntropyCalibrator2, as NVIDIA's reference code has it.

The reference is the histogram calibrator of pytorch-quantization, kept by ModelOpt as
``modelopt.torch.quantization.calib.histogram._compute_amax_entropy``. On the same histogram this
calibrator returns the same threshold (tests/unit/test_calibrator_references.py checks it against
ModelOpt's own function and against an independent implementation).

First the count of bin 0 is replaced by the count of bin 1 (``zero_bin="reference"``), as the
reference does (its code gives no reason); the effect is that the zeros and near-zeros a ReLU, an
attention mask or a softmax produce, all of which land in bin 0, no longer dominate the divergence.
Then, for each candidate threshold bin i >= start_bin:
P = hist[:i] with every count beyond i folded into bin i-1; Q = hist[:i] merged into 128 levels and
expanded back over the non-empty source bins of each level; choose the i that minimises KL(P || Q),
the largest i on ties. amax = i * bin_width (the upper edge of the last included bin).

``zero_bin="counted"`` keeps bin 0's real count: a plain reading of TensorRT's published description,
and what this calibrator did before it followed the reference. The two agree wherever bin 0 holds
about as much as bin 1 (Gaussian or Laplace tensors). They part on tensors whose mass sits in bin 0:
softmax probabilities, masked attention, GELU outputs (the negative side squashed towards 0). There
the real count makes P a spike at zero that every candidate's Q reproduces, so the divergence barely
penalises clipping, and the counted threshold comes out smaller, for attention probabilities 3 to 16
times (docs/calibrator-references.md has the figures).

The histogram is whatever the statistics pass collected. With ``calibration.histogram: trt`` that is
the reference's own layout, exactly 2048 bins over [0, absmax] (two passes). With the default
one-pass power-of-two lattice (see TensorStats), trimmed here to the last non-empty bin, 1025-2048
bins cover [0, absmax] instead.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from qbench.calib import Calibrator, TensorStats


def kl_divergence_curve(hist: np.ndarray, start_bin: int = 128, levels: int = 128, stride: int = 1):
    """Return (candidate bin counts i, KL(P||Q) for each). Vectorised per candidate."""
    hist = np.asarray(hist, dtype=np.float64)
    n = len(hist)
    total = hist.sum()
    tail = total - np.cumsum(hist)  # tail[i-1] = sum(hist[i:])
    candidates = np.arange(min(start_bin, n), n + 1, stride)
    kls = np.empty(len(candidates))
    for k, i in enumerate(candidates):
        p = hist[:i].copy()
        p[i - 1] += tail[i - 1]
        src = hist[:i]
        level = (np.arange(i) * levels) // i  # which of the 128 levels each source bin merges into
        nonzero = src > 0
        level_sum = np.bincount(level, weights=src, minlength=levels)
        level_nz = np.bincount(level, weights=nonzero, minlength=levels)
        q = np.where(nonzero, level_sum[level] / np.maximum(level_nz[level], 1), 0.0)
        p /= p.sum()
        qs = q.sum()
        if qs == 0:
            kls[k] = np.inf
            continue
        q /= qs
        mask = p > 0
        with np.errstate(divide="ignore"):
            kls[k] = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
    return candidates, kls


class Entropy(Calibrator):
    """The KL threshold of TensorRT's EntropyCalibrator2, as NVIDIA's reference code (ModelOpt) computes it.

    Bin 0 is counted as bin 1, as the reference does; ``zero_bin="counted"`` keeps its real count (the
    earlier rule, which clips tensors with most mass at zero harder: see the module)."""

    name: ClassVar[str] = "entropy"
    needs: ClassVar[frozenset[str]] = frozenset({"absmax", "abs_hist"})
    start_bin: int = Field(128, ge=1)
    stride: int = Field(1, ge=1)
    zero_bin: Literal["reference", "counted"] = "reference"

    def amax(self, t: TensorStats) -> float:
        if t.hist is None or t.count == 0 or t.absmax == 0.0:
            return t.absmax
        last = int(np.flatnonzero(t.hist)[-1]) + 1
        # The reference's histogram spans [0, absmax], so its last bin is never empty; trimming the
        # lattice's empty top bins gives the same layout (and the same candidates).
        hist = t.hist[:last].astype(np.float64)
        if self.zero_bin == "reference" and last > 1:
            hist[0] = hist[1]
        if last <= self.start_bin:
            return t.absmax
        cands, kls = kl_divergence_curve(hist, self.start_bin, 128, self.stride)
        # Ties go to the largest threshold, as in TensorRT and ModelOpt: clip as little as possible.
        best = len(kls) - 1 - int(np.argmin(kls[::-1]))
        return float(min(cands[best] * t.bin_width, t.absmax))
