"""Use a calibration table the user already has: qbench JSON or a TensorRT <=10 calibration cache.

Lets a sweep put an existing TensorRT cache side by side with qbench's calibrators, on the same
QDQ placement and the same evaluation. Every tensor the model quantizes must be in the file: a
missing one is an error listing them, never silently calibrated (DESIGN.md section 7).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from qbench.calib import CalibrationTable, Calibrator, TensorStats
from qbench.errors import ConfigError, QuantizationError


def load_table(path: Path) -> CalibrationTable:
    """A qbench table (``.json``) or a TensorRT cache (anything else), by content, not by name."""
    from qbench.trt_cache import from_trt_cache

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read calibration table: {e.strerror}") from None
    if text.lstrip().startswith("{"):
        try:
            return CalibrationTable.from_json(text)
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path}: not a qbench calibration table ({type(e).__name__})") from None
    return from_trt_cache(text, source=str(path))


class FromTable(Calibrator):
    """amax from a file: a qbench table JSON or a TensorRT <=10 calibration cache (relative paths: cwd)."""

    name: ClassVar[str] = "table"
    key_params: ClassVar[tuple[str, ...]] = ("path",)
    path: str

    def table(self, stats: dict[str, TensorStats]) -> CalibrationTable:
        loaded = load_table(Path(self.path))
        missing = sorted(set(stats) - set(loaded.amax))
        if missing:
            raise QuantizationError(f"{self.path}: {len(missing)} tensor(s) the model quantizes are not in the "
                                    f"table: " + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
        return CalibrationTable({t: loaded.amax[t] for t in sorted(stats)}, calibrator=self.signature())

    def amax(self, t: TensorStats) -> float:  # pragma: no cover - table() is the whole rule here
        raise NotImplementedError("FromTable works on the whole table")
