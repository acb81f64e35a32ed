"""`qbench sweep --executor ray` on a real two-node Ray cluster gives the local executor's results.

A head and a second node (separate raylets, one CPU each) on loopback, started by a helper process this
module owns and stops; the real CLI drives the tiny MiniLM sweep of test_resume through it. Timing metrics
are the only rows allowed to differ (test_resume's normalisation). GPUs (gpus_per_job, CUDA_VISIBLE_DEVICES
per task) and nodes on separate machines cannot be tested here.

The Ray tests are skipped when Ray is not installed, unless QBENCH_REQUIRE_RAY=1 (then they fail). The
local pool (executor.workers) is tested here too: it needs no Ray.
"""

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from test_resume import CONFIG, _cmd, _comparable, _env, _only_run, _variants

STEP_S = 120  # any one step (the cluster's start, one sweep) past this fails the test
SEGV = "minmax+softmax+s8s8"
WORKER_DIES = "percentile[percentile=99.9]+none+s8s8"

# Runs in its own process: a head node and a second node of one CPU each, both on 127.0.0.1; prints the
# address and the node ids, then holds the cluster until its stdin closes.
CLUSTER = """
import sys
from ray.cluster_utils import Cluster

c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                  "include_dashboard": False})
c.add_node(num_cpus=1, node_ip_address="127.0.0.1")
c.wait_for_nodes(timeout=60)
print(c.address, *(n.node_id for n in c.list_all_nodes()), flush=True)
sys.stdin.read()
c.shutdown()
"""


def _ray_env(tmp: str) -> dict:
    # RAY_TMPDIR: this cluster's sessions and its "current cluster" file stay in our temporary directory.
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray resolves 127.0.0.1 to the loopback address, not to this
    # machine's network address (where nothing of this cluster listens).
    return {"RAY_TMPDIR": tmp, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def cluster():
    if os.environ.get("QBENCH_REQUIRE_RAY") != "1":
        pytest.importorskip("ray")
    tmp = tempfile.mkdtemp(prefix="qbr-")  # short: Ray's unix socket paths must fit in 107 characters
    err = open(Path(tmp) / "helper.err", "w+")  # a file, not a pipe nobody reads while the tests run
    p = subprocess.Popen([sys.executable, "-c", CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=err, text=True, start_new_session=True, env={**os.environ, **_ray_env(tmp)})

    def stop():
        try:
            p.stdin.close()
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # the helper's own group: its raylets die with it
            p.wait(timeout=30)
        err.close()
        shutil.rmtree(tmp, ignore_errors=True)

    try:
        sel = selectors.DefaultSelector()
        sel.register(p.stdout, selectors.EVENT_READ)
        if not sel.select(timeout=STEP_S):
            raise TimeoutError(f"the Ray cluster did not start within {STEP_S} s")
        line = p.stdout.readline().split()
        if not line:
            err.seek(0)
            raise RuntimeError(f"the Ray cluster did not start: {err.read()[-3000:]}")
        address, *nodes = line
        assert len(nodes) == 2, line
        yield address, set(nodes), _ray_env(tmp)
    finally:
        stop()


@pytest.fixture(scope="module")
def reference(minilm, qbench_cache, tmp_path_factory):
    """The local (in-process) executor's run of the sweep."""
    d = tmp_path_factory.mktemp("ray-ref")
    (d / "sweep.yaml").write_text(CONFIG)
    r = subprocess.run(_cmd(str(d / "sweep.yaml"), "--out", str(d / "ref")), env=_env(qbench_cache),
                       capture_output=True, text=True, timeout=STEP_S)
    assert r.returncode == 0, r.stderr
    return d, _only_run(d / "ref")


def _ray_sweep(cluster, qbench_cache, tmp_path, **env):
    address, _, ray_env = cluster
    cfg = tmp_path / "sweep.yaml"
    # kind stays local: --executor ray picks Ray. One CPU per task on one-CPU nodes: two tasks at once, one
    # on each node (backend.threads, the default request, is 2: no node would fit a task).
    cfg.write_text(CONFIG + f'executor: {{address: "{address}", cpus_per_job: 1}}\n')
    r = subprocess.run(_cmd(str(cfg), "--out", str(tmp_path), "--executor", "ray"), capture_output=True,
                       text=True, timeout=STEP_S, env={**_env(qbench_cache), **ray_env, **env})
    assert r.returncode == 0, r.stderr
    run = _only_run(tmp_path)
    return run, json.loads((run / "manifest.json").read_text())


def test_ray_on_two_nodes_equals_local(cluster, reference, qbench_cache, tmp_path):
    _, ref = reference
    run, m = _ray_sweep(cluster, qbench_cache, tmp_path)
    pd.testing.assert_frame_equal(_comparable(run), _comparable(ref))
    assert _variants(run) == _variants(ref)  # status, artifact sha256, done
    assert m["complete"] is True and m["config"]["executor"]["kind"] == "ray"
    where = [e["executor"] for e in m["variants"].values()]
    assert all(w["kind"] == "ray" and w["pid"] != w["worker_pid"] for w in where), where
    # One CPU per node and one per task: the four variants after FP32 ran two at a time, on both nodes.
    assert {w["node"] for w in where} == cluster[1], where


def test_segfault_and_a_dead_ray_worker_are_failed_rows_then_resume_locally(cluster, reference, qbench_cache,
                                                                           tmp_path):
    d, ref = reference
    run, m = _ray_sweep(cluster, qbench_cache, tmp_path,
                        QBENCH_FAULT_INJECT=f"segv:{SEGV},ray-worker-exit:{WORKER_DIES}")
    assert m["complete"] is True
    got, want = _comparable(run), _comparable(ref)
    for victim in (SEGV, WORKER_DIES):
        assert list(got[got.variant == victim].status) == ["failed"]
        assert m["variants"][victim]["done"] is True
    assert "killed by SIGSEGV" in m["variants"][SEGV]["error"]
    assert "Ray task failed" in m["variants"][WORKER_DIES]["error"]
    ok = ~got.variant.isin([SEGV, WORKER_DIES])
    pd.testing.assert_frame_equal(got[ok].reset_index(drop=True),
                                  want[~want.variant.isin([SEGV, WORKER_DIES])].reset_index(drop=True))
    # Resume works across executors: the local in-process executor retries the two failed variants.
    r = subprocess.run(_cmd(str(d / "sweep.yaml"), "--resume", str(run), "--retry-failed"),
                       env=_env(qbench_cache), capture_output=True, text=True, timeout=STEP_S)
    assert r.returncode == 0, r.stderr
    pd.testing.assert_frame_equal(_comparable(run), want)
    assert _variants(run) == _variants(ref)


def test_local_pool_of_two_equals_local(reference, qbench_cache, tmp_path):
    _, ref = reference
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(CONFIG + "executor: {workers: 2}\n")
    r = subprocess.run(_cmd(str(cfg), "--out", str(tmp_path)), capture_output=True, text=True, timeout=STEP_S,
                       env=_env(qbench_cache))
    assert r.returncode == 0, r.stderr
    run = _only_run(tmp_path)
    pd.testing.assert_frame_equal(_comparable(run), _comparable(ref))
    assert _variants(run) == _variants(ref)
    m = json.loads((run / "manifest.json").read_text())
    pids = {e["executor"]["pid"] for e in m["variants"].values()}
    assert len(pids) == len(m["variants"]) and os.getpid() not in pids  # each variant in a child of its own
