from __future__ import annotations

import math
from decimal import Decimal
from typing import ClassVar

import numpy as np
from pydantic import Field

from qbench.calib import Calibrator, TensorStats


class Percentile(Calibrator):
    """amax = the p-th percentile of |x|, read from the histogram (upper edge of the bin that reaches p).

    Reading the upper edge means the result is never below the true percentile and at most one
    bin above it.
    """

    name: ClassVar[str] = "percentile"
    needs: ClassVar[frozenset[str]] = frozenset({"absmax", "abs_hist"})
    key_params: ClassVar[tuple[str, ...]] = ("percentile",)
    percentile: float = Field(99.99, gt=0.0, le=100.0)

    def amax(self, t: TensorStats) -> float:
        if t.hist is None or t.count == 0:
            return t.absmax
        cdf = np.cumsum(t.hist)
        # The rank in exact decimal arithmetic: 99.9 / 100 * 1000 is 999.0000000000001 in floats,
        # which would move the answer up by one sample (and onto an outlier).
        target = math.ceil(Decimal(repr(self.percentile)) * int(cdf[-1]) / 100)
        idx = int(np.searchsorted(cdf, target, side="left"))
        return float(min((idx + 1) * t.bin_width, t.absmax))
