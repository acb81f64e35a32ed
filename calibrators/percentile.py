"""Percentile calibration: amax = the p-th percentile of |x|, read from the histogram.

The reference is ModelOpt's ``modelopt.torch.quantization.calib.histogram._compute_amax_percentile``
(pytorch-quantization's rule): find the first bin at which the cumulative share of the values
reaches p / 100 and return that bin's **lower** edge (``edge="lower"``, the default). The result is
at most one bin below the true percentile, and never above it; ``percentile=100`` returns the lower
edge of the last non-empty bin, so it clips up to one bin (minmax is the calibrator for absmax).

``edge="upper"`` returns that bin's upper edge (capped at absmax): never below the true
percentile, at most one bin above it. This was the rule here before it followed the reference.

The rank is computed in exact decimal arithmetic. ModelOpt compares a float64 running sum of
``hist / total`` with ``p / 100``, which can step one bin higher when p * N / 100 is exactly a
cumulative count: with 999 values of 0.1 and one of 100.0, 99.9 / 100 is 0.9990000000000001 in
floats, above 999 / 1000, and the reference returns the outlier's bin. That is the only case in
which the two differ (tests/unit/test_calibrator_references.py shows both sides).
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from qbench.calib import Calibrator, TensorStats


class Percentile(Calibrator):
    """amax = the edge of the histogram bin where the cumulative share of |x| reaches p (ModelOpt's rule)."""

    name: ClassVar[str] = "percentile"
    needs: ClassVar[frozenset[str]] = frozenset({"absmax", "abs_hist"})
    key_params: ClassVar[tuple[str, ...]] = ("percentile",)
    percentile: float = Field(99.99, gt=0.0, le=100.0)
    edge: Literal["lower", "upper"] = "lower"

    def amax(self, t: TensorStats) -> float:
        if t.hist is None or t.count == 0:
            return t.absmax
        cdf = np.cumsum(t.hist)
        if cdf[-1] == 0:
            return t.absmax
        # The rank in exact decimal arithmetic: 99.9 / 100 * 1000 is 999.0000000000001 in floats,
        # which would move the answer up by one bin (and onto an outlier).
        target = math.ceil(Decimal(repr(self.percentile)) * int(cdf[-1]) / 100)
        idx = int(np.searchsorted(cdf, target, side="left"))
        return float(min((idx + (self.edge == "upper")) * t.bin_width, t.absmax))
