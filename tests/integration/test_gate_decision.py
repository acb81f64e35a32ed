"""`qbench gate` on a real translation sweep (the shipped EN->ES Marian, 24 test verses): each of its four exit
codes, decided by the paired-bootstrap decision on the run's samples.parquet.

- 0 PASS: fp16 against FP32 with a 5-BLEU budget (24 verses cannot resolve less; the committed runs use 1.0
  on hundreds of sentences);
- 1 FAIL: percentile 5 clips 95% of every activation, and BLEU collapses;
- 2 cannot tell: the FP32 reference, and a variant the run does not have;
- 10 INCONCLUSIVE: the same run gated at a budget equal to fp16's observed drop: no test size decides a drop
  that sits exactly on the budget.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("torch")
BAD = "percentile[percentile=5.0]+none+s8s8"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, qbench_cache):
    from qbench.config.schema import load_config
    from qbench.run.sweep import run_sweep

    tmp = tmp_path_factory.mktemp("gate")
    cfg = {
        "name": "gate", "task": "translation",
        "model": {"source": str(ROOT / "examples/models/marian-en-es"), "max_length": 256},
        "data": {"manifest": str(ROOT / "datasets/bible_en_es.yaml"),
                 "calibration": {"split": "calibration", "n": 32, "seed": 0, "sampler": {"name": "random"}},
                 "evaluation": {"split": "test", "n": 24}},
        "calibration": {"batch_size": 16},
        "generation": {"max_new_tokens": 64, "batch_size": 12},
        "sweep": {"baselines": ["fp32", "fp16"], "calibrators": [{"name": "percentile", "percentile": 5.0}],
                  "exclusions": ["none"]},
        "gate": {"metric": "bleu", "max_drop": 5.0, "per": "lang", "resamples": 1000},
        "measure": {"latency": {"batch_sizes": [2], "warmup": 0, "runs": 1, "rounds": 2}},
        "output": {"dir": str(tmp / "out"), "cache_dir": str(qbench_cache)},
    }
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return run_sweep(load_config(path))


def _gate(run: Path, variant: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qbench", "gate", str(run), "--variant", variant],
                          capture_output=True, text=True, timeout=300)


def test_pass_fail_and_cannot_tell(run_dir):
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["gate"]["alpha"] == 0.05 and m["gate"]["resamples"] == 1000  # the decision's settings are recorded
    assert set(m["latency_rounds"]["fp32"]) == {"batch=2"} and len(m["latency_rounds"]["fp32"]["batch=2"]) == 2
    r = _gate(run_dir, "fp16")
    assert r.returncode == 0 and r.stdout.startswith("fp16: PASS: drop "), r.stdout + r.stderr
    r = _gate(run_dir, BAD)
    assert r.returncode == 1 and r.stdout.startswith(f"{BAD}: FAIL: drop "), r.stdout + r.stderr
    for v in ("fp32", "nope"):
        r = _gate(run_dir, v)
        assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1


def test_inconclusive_exits_10_and_says_what_would_decide(run_dir, tmp_path):
    from qbench.report import decision as dn

    samples = dn.load_samples(run_dir)
    drop = dn.decide(samples, "fp16", "bleu", 5.0).langs[0].drop
    strict = tmp_path / "strict"
    shutil.copytree(run_dir, strict)
    m = json.loads((strict / "manifest.json").read_text())
    m["config"]["gate"]["max_drop"] = drop
    (strict / "manifest.json").write_text(json.dumps(m))
    r = _gate(strict, "fp16")
    assert r.returncode == 10 and r.stdout.startswith("fp16: INCONCLUSIVE: drop "), r.stdout + r.stderr
    assert "not enough data to decide" in r.stdout
