"""Bringing an existing table: qbench JSON or a TensorRT cache, as a calibrator and through the CLI."""

import subprocess
import sys

import numpy as np
import pytest

from calibrators.table import FromTable, load_table
from qbench.calib import CalibrationTable, TensorStats, scale_of
from qbench.config.errors import ConfigError, QuantizationError
from qbench.calib.trt_cache import save_trt_cache

AMAX = {"a": 1.5, "b": 0.02, "c/with spaces:and colons": 37.25}


def _stats(names):
    return {n: TensorStats(absmax=1.0, count=1) for n in names}


def test_json_and_trt_cache_give_the_same_scales(tmp_path):
    t = CalibrationTable(dict(AMAX), calibrator="minmax")
    t.save(tmp_path / "t.json")
    save_trt_cache(t, tmp_path / "t.cache")
    for f in ("t.json", "t.cache"):
        got = FromTable(path=str(tmp_path / f)).table(_stats(["a", "b"]))
        assert set(got.amax) == {"a", "b"}  # only the tensors the model quantizes
        for k in got.amax:
            assert scale_of(got.amax[k]).view(np.uint32) == scale_of(AMAX[k]).view(np.uint32)
        assert got.calibrator == f"table[path={tmp_path / f}]"


def test_missing_tensor_is_an_error_listing_it(tmp_path):
    CalibrationTable({"a": 1.0}).save(tmp_path / "t.json")
    with pytest.raises(QuantizationError, match=r"1 tensor\(s\) .*not in the table: zz"):
        FromTable(path=str(tmp_path / "t.json")).table(_stats(["a", "zz"]))


def test_unreadable_or_garbled_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_table(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a qbench calibration table"):
        load_table(tmp_path / "bad.json")
    (tmp_path / "bad.cache").write_text("hello\n")
    with pytest.raises(ConfigError, match="bad.cache"):
        load_table(tmp_path / "bad.cache")


def test_cli_converts_both_ways_bit_exactly(tmp_path):
    CalibrationTable(dict(AMAX)).save(tmp_path / "t.json")
    run = lambda *a: subprocess.run([sys.executable, "-m", "qbench", "table", *a],  # noqa: E731
                                    capture_output=True, text=True)
    r = run(str(tmp_path / "t.json"), str(tmp_path / "t.cache"), "--trt-version", "8.6.1")
    assert r.returncode == 0 and "3 tensors" in r.stdout, r.stderr
    text = (tmp_path / "t.cache").read_text()
    assert text.splitlines()[0] == "TRT-8601-EntropyCalibration2"
    assert "a: 3c418306" in text  # float32(1.5 / 127) = 0.011811024, bits 0x3c418306
    assert run(str(tmp_path / "t.cache"), str(tmp_path / "back.json")).returncode == 0
    back = CalibrationTable.from_json((tmp_path / "back.json").read_text())
    for k, v in AMAX.items():
        assert scale_of(back.amax[k]).view(np.uint32) == scale_of(v).view(np.uint32)
