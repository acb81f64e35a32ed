"""MSE calibration: the amax that minimises the squared error of int8 fake quantization.

Two rules, both from the |x| histogram alone (calibrators never see raw batches):

``rule="reference"`` (the default) is ModelOpt's
``modelopt.torch.quantization.calib.histogram._compute_amax_mse`` (pytorch-quantization's rule):
every value is taken to sit at its bin's centre; the candidates are the centres of bins start_bin,
start_bin + stride, ... up to the second-to-last bin (the last is never a candidate); each candidate c
quantizes the centres with scale c / 127 (round half to even, clamped to +-127) and scores
sum(count * (Q(centre) - centre)**2); the first minimum wins. amax = that centre. ModelOpt computes in
float32 and this in float64: the two can pick different candidates only where two errors agree to
float32 precision (tests/unit/test_calibrator_references.py checks them equal on Gaussian, Laplace,
GELU-like and softmax-like tensors).

``rule="integral"`` is the rule this calibrator had before it followed the reference, and is described
below (mse_curve). It differs in the error model (values spread over their bin, the error integrated
exactly), the candidates (upper bin edges and absmax) and the tie-break (the largest amax).

The integral rule. Entropy matches the *shape* of the distribution; what a layer downstream actually
sees is the error x - Q(x). Here Q is the symmetric int8 quantizer the QDQ graph will use: scale s =
amax / 127, values rounded to the nearest of the 255 levels in [-amax, amax], anything beyond amax
clipped to it. A larger amax clips less but rounds more coarsely; the optimum balances the two.

The error is computed with every bin's count spread uniformly over the bin, and the error integrated
exactly over that interval (the rounding error is a sawtooth with a closed-form antiderivative). The
symmetric quantizer makes the error of x and -x equal, so |x| suffices. An earlier bin-centre model
(with upper-edge candidates) put every centre at the same phase of the sawtooth whenever the step
was a whole number of bins, underestimating the rounding error there by about bin_width**2 / 12 per
value and biasing the choice towards such candidates.

Candidates: the upper edges of bins start_bin, start_bin + stride, ... up to the last non-empty
bin, plus absmax itself. Ties go to the largest amax (clip as little as possible, as Entropy does);
the result never exceeds absmax.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from qbench.calib import Calibrator, TensorStats

LEVELS = 127  # positive int8 levels of the symmetric quantizer

# Candidates evaluated per vectorised block: bounds the (candidates x non-empty bins) temporaries
# to a few MB however many bins the histogram has.
_BLOCK = 256


def _sawtooth_integral(u: np.ndarray) -> np.ndarray:
    """Antiderivative of (u - round(u))**2: n/12 + (v**3 + 1/8)/3 with n = round(u), v = u - n."""
    n = np.floor(u + 0.5)
    v = u - n
    return n / 12.0 + (v ** 3 + 0.125) / 3.0


def centre_mse_curve(hist: np.ndarray, centre_idx: np.ndarray) -> np.ndarray:
    """ModelOpt's error (a sum, not its mean over bins) for the amax at each of the given bin centres.

    Centres are in units of the bin width: the error scales by bin_width**2 for every candidate alike,
    so the argmin is the same, and integer-plus-half centres keep the arithmetic exact up to rounding.
    """
    hist = np.asarray(hist, dtype=np.float64)
    nz = np.flatnonzero(hist)
    x = nz + 0.5
    err = np.empty(len(centre_idx))
    for start in range(0, len(centre_idx), _BLOCK):
        a = np.asarray(centre_idx[start:start + _BLOCK], dtype=np.float64)[:, None] + 0.5
        scale = LEVELS / a
        q = np.clip(np.round(x * scale), -LEVELS, LEVELS) / scale  # np.round: half to even, as torch
        err[start:start + _BLOCK] = ((q - x) ** 2) @ hist[nz]
    return err


def mse_curve(hist: np.ndarray, bin_width: float, candidates: np.ndarray) -> np.ndarray:
    """Total squared quantization error (sum over samples, not the mean) for each candidate amax.

    Each bin's count is spread uniformly over [lo, hi): below amax the error is the rounding
    sawtooth (step s = amax / 127), above it the clipping error (x - amax)**2; both are integrated
    exactly over the part of the bin they cover. Only non-empty bins take part.
    """
    hist = np.asarray(hist, dtype=np.float64)
    cands = np.asarray(candidates, dtype=np.float64)
    nz = np.flatnonzero(hist)
    weights = hist[nz] / bin_width
    lo, hi = nz * bin_width, (nz + 1) * bin_width
    err = np.empty(len(cands))
    for start in range(0, len(cands), _BLOCK):
        a = cands[start:start + _BLOCK, None]
        s = a / LEVELS
        top = np.minimum(hi, a)  # the part of the bin inside [0, amax]
        inside = np.where(top > lo, s ** 3 * (_sawtooth_integral(top / s) - _sawtooth_integral(lo / s)), 0.0)
        bottom = np.maximum(lo, a)  # the part beyond amax
        clipped = np.where(hi > a, ((hi - a) ** 3 - (bottom - a) ** 3) / 3.0, 0.0)
        err[start:start + _BLOCK] = (inside + clipped) @ weights
    return err


class Mse(Calibrator):
    """The clip minimising the squared int8 error: ModelOpt's bin-centre rule, or ``rule="integral"``.

    See the module for how the two rules differ."""

    name: ClassVar[str] = "mse"
    needs: ClassVar[frozenset[str]] = frozenset({"absmax", "abs_hist"})
    start_bin: int = Field(128, ge=1)
    stride: int = Field(1, ge=1)
    rule: Literal["reference", "integral"] = "reference"

    def candidates(self, t: TensorStats) -> np.ndarray:
        """Upper bin edges from start_bin to the last non-empty bin (every stride), then absmax."""
        assert t.hist is not None
        last = int(np.flatnonzero(t.hist)[-1]) + 1
        edges = np.arange(self.start_bin, last + 1, self.stride, dtype=np.float64) * t.bin_width
        return np.append(edges, t.absmax)

    def amax(self, t: TensorStats) -> float:
        if t.hist is None or t.count == 0 or t.absmax == 0.0 or not np.any(t.hist):
            return t.absmax
        if self.rule == "reference":
            return self._reference(t)
        cands = self.candidates(t)
        err = coarse_to_fine(lambda idx: mse_curve(t.hist, t.bin_width, cands[idx]), len(cands))
        best = float(cands[err == err.min()].max())   # ties: the largest amax
        return float(min(best, t.absmax))

    def _reference(self, t: TensorStats) -> float:
        # The reference's histogram spans [0, absmax], so its last bin is never empty: trimming the
        # lattice's empty top bins gives the same layout and the same candidates.
        last = int(np.flatnonzero(t.hist)[-1]) + 1
        idx = np.arange(self.start_bin, last, self.stride)
        if len(idx) == 0:  # no candidate below the last bin (the reference would fail here)
            return t.absmax
        err = centre_mse_curve(t.hist[:last], idx)
        return float((idx[int(np.argmin(err))] + 0.5) * t.bin_width)


COARSE = 16  # coarse pass: every 16th candidate; then every candidate near the 3 best coarse ones
KEEP = 3


def coarse_to_fine(curve, n: int) -> np.ndarray:
    """Error for each of n candidates, inf where not evaluated: a coarse scan, then dense windows.

    The error curve is smooth at the scale of 16 bins (both terms are integrals over the data), so
    its minimum lies within one coarse step of a coarse minimum; keeping the 3 best coarse points
    covers a second valley. About 8x fewer evaluations than the exhaustive scan on 2048 bins.
    """
    err = np.full(n, np.inf)
    coarse = np.unique(np.append(np.arange(0, n, COARSE), n - 1))
    err[coarse] = curve(coarse)
    dense: set[int] = set()
    for i in coarse[np.argsort(err[coarse], kind="stable")[:KEEP]]:
        dense.update(range(max(0, i - COARSE), min(n, i + COARSE + 1)))
    idx = np.array(sorted(dense - set(coarse.tolist())), dtype=np.int64)
    if len(idx):
        err[idx] = curve(idx)
    return err
