"""Translation variants built and scored in child processes (executor.isolate, and a pool of 2) equal the
in-process ones: the same metric rows and the same per-sample outputs. The child gets the data sets, the
model's sha256 and the FP32 reference (hypotheses, per-sample statistics) from its job, and hands back the
variant's sample rows and metric signatures: all of that must survive the trip."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("torch")
TIMING = ("eval_seconds", "latency_", "throughput_")


def _run(tmp: Path, cache: Path, executor: dict | None) -> Path:
    from qbench.config.schema import load_config
    from qbench.run.sweep import run_sweep

    cfg = {
        "name": "iso", "task": "translation",
        "model": {"source": str(ROOT / "examples/models/marian-en-es"), "max_length": 256},
        "data": {"manifest": str(ROOT / "datasets/bible_en_es.yaml"),
                 "calibration": {"split": "calibration", "n": 16, "seed": 0},
                 "evaluation": {"split": "test", "n": 12}},
        "calibration": {"batch_size": 16},
        "generation": {"max_new_tokens": 48, "batch_size": 16},
        "sweep": {"baselines": ["fp32", "ort_dynamic"], "calibrators": [{"name": "minmax"}], "exclusions": ["none"]},
        "gate": {"metric": "bleu", "max_drop": 5.0, "per": "lang"},
        "measure": {"latency": {"batch_sizes": [2], "warmup": 0, "runs": 1, "rounds": 1}},
        "output": {"dir": str(tmp / "out"), "cache_dir": str(cache)},
    }
    if executor:
        cfg["executor"] = executor
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return run_sweep(load_config(tmp / "cfg.yaml"))


def _rows(run: Path) -> pd.DataFrame:
    df = pd.read_parquet(run / "results.parquet")
    df = df[~df.metric.str.startswith(TIMING)].drop(columns=["run_id"])
    return df.sort_values(["variant", "backend", "metric", "slice"]).reset_index(drop=True)


def _samples(run: Path) -> pd.DataFrame:
    df = pd.read_parquet(run / "samples.parquet")
    return df.sort_values(list(df.columns[:3])).sort_index(axis=1).reset_index(drop=True)


@pytest.fixture(scope="module")
def ref(tmp_path_factory, qbench_cache) -> Path:
    return _run(tmp_path_factory.mktemp("iso-ref"), qbench_cache, None)


@pytest.mark.parametrize("executor", [{"isolate": True}, {"workers": 2}], ids=["isolated", "pool"])
def test_children_give_the_in_process_rows_and_samples(ref, tmp_path, qbench_cache, executor):
    got = _run(tmp_path, qbench_cache, executor)
    want = _rows(ref)
    assert set(want.status) == {"ok"} and set(want.variant) == {"fp32", "ort_dynamic", "minmax+none+s8s8"}
    pd.testing.assert_frame_equal(_rows(got), want)
    pd.testing.assert_frame_equal(_samples(got), _samples(ref))
    assert len(_samples(ref)) == 12 * 3
