from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from qbench.calib import Calibrator, TensorStats


class MinMax(Calibrator):
    """amax = max |x| over the calibration set, or an exponential moving average of per-batch maxima."""

    name: ClassVar[str] = "minmax"
    moving_average: bool = False
    averaging_constant: float = Field(0.01, gt=0.0, le=1.0)

    def amax(self, t: TensorStats) -> float:
        if not self.moving_average or not t.batch_absmax:
            return t.absmax
        ema = t.batch_absmax[0]
        for m in t.batch_absmax[1:]:
            ema += self.averaging_constant * (m - ema)
        return ema
