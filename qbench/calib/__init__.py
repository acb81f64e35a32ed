"""Plugin types for calibration: statistics in, amax values out.

A calibrator never sees raw batches. It receives ``TensorStats`` (absmax, count and a
histogram of |x| on a power-of-two lattice) and returns an amax; scale = amax / 127,
symmetric, zero point 0, as TensorRT requires.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

Need = Literal["absmax", "abs_hist", "channel_absmax"]

# Smallest amax we emit: a tensor that is all zeros still needs a positive scale.
MIN_AMAX = 1e-8


def scale_of(amax: float, qmax: float = 127.0) -> np.float32:
    """The one place a Q scale is derived from an amax: symmetric, amax / qmax (127: int8; 448: FP8 E4M3; 7: int4)."""
    return np.float32(max(float(amax), MIN_AMAX) / qmax)


@dataclass
class TensorStats:
    """Statistics of one tensor, mergeable batch by batch without re-binning.

    The histogram counts |x| in ``len(hist)`` bins of width ``bin_width`` starting at 0.
    ``bin_width`` is always a power of two and only ever doubles (adjacent bins are summed),
    so the final histogram depends only on the data, never on batch order.
    """

    absmax: float = 0.0
    count: int = 0
    hist: np.ndarray | None = None
    bin_width: float = 0.0
    batch_absmax: list[float] = field(default_factory=list)
    # max |x| per channel of the last axis (the input channel a MatMul contracts over), where asked: SmoothQuant's need
    channel_absmax: np.ndarray | None = None

    @property
    def edges(self) -> np.ndarray:
        assert self.hist is not None
        return np.arange(len(self.hist) + 1, dtype=np.float64) * self.bin_width


class Calibrator(BaseModel):
    """Base class. Subclasses are pydantic models whose fields are the YAML parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset({"absmax"})

    def amax(self, t: TensorStats) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def table(self, stats: "dict[str, TensorStats]") -> "CalibrationTable":
        return CalibrationTable(
            {name: float(self.amax(t)) for name, t in sorted(stats.items())},
            calibrator=self.signature(),
        )

    def params(self) -> dict:
        return self.model_dump()

    # Parameters always shown in signatures, even at their defaults (the ones a reader compares).
    key_params: ClassVar[tuple[str, ...]] = ()

    def signature(self) -> str:
        """Name plus the parameters that are non-default or key, e.g. ``percentile[percentile=99.99]``."""
        from qbench.config.registry import plugin_signature

        return plugin_signature(self, self.key_params)


def _listed(names: list[str], limit: int = 5) -> str:
    """``a, b, c`` -- or the first ``limit`` and ``(+N more)``: a list that keeps an error on one short line."""
    shown = ", ".join(str(n) for n in names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


@dataclass
class CalibrationTable:
    """tensor name -> amax (per tensor). Saved as JSON; the QDQ builder reads nothing else."""

    amax: dict[str, float]
    calibrator: str = ""

    def scale(self, tensor: str, qmax: float = 127.0) -> np.float32:
        return scale_of(self.amax[tensor], qmax)

    def to_json(self) -> str:
        return json.dumps({"calibrator": self.calibrator, "amax": self.amax}, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "CalibrationTable":
        """Parse ``to_json``'s output. Anything else is a ``ValueError`` saying what is wrong (one line)."""
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object with an 'amax' mapping, got {type(d).__name__}")
        if not isinstance(d.get("amax"), dict):
            raise ValueError("no 'amax' mapping of tensor name -> amax" if "amax" not in d
                             else f"'amax' must map tensor names to numbers, got {type(d['amax']).__name__}")
        amax: dict[str, float] = {}
        for k, v in d["amax"].items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"amax of tensor {k[:60]!r} is not a number: {str(v)[:40]!r}")
            amax[k] = float(v)
        calibrator = d.get("calibrator", "")
        if not isinstance(calibrator, str):
            raise ValueError(f"'calibrator' must be a string, got {type(calibrator).__name__}")
        return cls(amax, calibrator)

    def save(self, path: Path) -> None:
        """Written atomically; a file that cannot be written is io.atomic_write's StorageError."""
        from qbench.util.io import atomic_write_text

        atomic_write_text(path, self.to_json())

    def invalid(self) -> list[str]:
        """Tensors whose amax is not a usable range: non-finite or negative."""
        return [k for k, v in self.amax.items() if not math.isfinite(v) or v < 0]

    def check_finite(self) -> None:
        from qbench.config.errors import QuantizationError

        bad = self.invalid()
        if bad:
            raise QuantizationError(f"calibration table has a non-finite or negative amax for {len(bad)} tensor(s): "
                                    + _listed(bad))
