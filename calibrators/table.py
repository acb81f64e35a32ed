"""Use a calibration table the user already has: qbench JSON or a TensorRT <=10 calibration cache.

Lets a sweep put an existing TensorRT cache side by side with qbench's calibrators, on the same
QDQ placement and the same evaluation. Every tensor the model quantizes must be in the file: a
missing one is an error listing them, never silently calibrated (DESIGN.md section 7).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from qbench.calib import CalibrationTable, Calibrator, TensorStats, _listed
from qbench.config.errors import ConfigError, QuantizationError


def load_table(path: Path) -> CalibrationTable:
    """A qbench table (``.json``) or a TensorRT cache (anything else), by content, not by name.

    Every problem is a one-line ``ConfigError`` naming the file (and, for a cache, the line).
    """
    import json

    from qbench.util.io import read_user_bytes
    from qbench.calib.trt_cache import decode_cache_bytes, from_trt_cache

    data = read_user_bytes(Path(path), "calibration table")
    text = decode_cache_bytes(data, source=str(path))
    if text.lstrip("\ufeff \t\r\n").startswith("{"):
        try:
            table = CalibrationTable.from_json(text.lstrip("\ufeff"))
        except RecursionError:
            raise ConfigError(f"{path}: not a qbench calibration table (JSON nested too deeply)") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not a qbench calibration table (invalid JSON: {e})") from None
        except ValueError as e:  # from_json says what is wrong, on one line
            raise ConfigError(f"{path}: not a qbench calibration table ({e})") from None
        bad = table.invalid()  # a file's problem here, so a ConfigError naming it (not check_finite's)
        if bad:
            raise ConfigError(f"{path}: amax must be finite and non-negative; {len(bad)} tensor(s) are not: "
                              + _listed(bad))
        return table
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
            raise QuantizationError(f"{self.path}: {len(missing)} tensor(s) the model quantizes (of {len(stats)}) "
                                    f"are not in the table: " + _listed(missing)
                                    + f" (the table has {len(loaded.amax)}; is it for another model?)")
        return CalibrationTable({t: loaded.amax[t] for t in sorted(stats)}, calibrator=self.signature())

    def amax(self, t: TensorStats) -> float:  # pragma: no cover - table() is the whole rule here
        raise NotImplementedError("FromTable works on the whole table")
