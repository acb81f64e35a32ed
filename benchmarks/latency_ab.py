"""Side-by-side latency of a run's variants, with an A/A control to show the noise floor.

    python benchmarks/latency_ab.py reports/minilm-retrieval/<run_id> --rounds 30

Opens every ok variant of the run (the artifacts named in manifest.json), plus a second session of
the FP32 model ("fp32#2", the A/A control), and times them round-robin: each round runs every
session `--runs` times at each batch size. Prints, per variant and batch size, the median over
rounds of the per-round p50, and its ratio to ort_dynamic and to fp32 with a bootstrap 95% interval
over rounds. On a shared 2-core VM the A/A ratio tells how much of any difference is noise.
``--variants A B ...`` times only those (fp32, its A/A twin and ort_dynamic always), so a long run stays short.

    python benchmarks/latency_ab.py reports/example-minilm-deploy --rounds 20 --runs 3 \
        --variants minmax+none+u8s8 minmax+attention_bmm+u8s8 minmax+attention_bmm+u8s8+ort_fused
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--runs", type=int, default=5, help="timed runs per session per round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="*", default=None, help="time only these (besides fp32 and ort_dynamic)")
    ap.add_argument("--batch-sizes", type=int, nargs="*", default=None, help="default: the run's latency batch sizes")
    args = ap.parse_args()

    from qbench.backends.ort import OrtSession
    from qbench.data.manifest import load_manifest, load_split
    from qbench.backends.measure import time_runs
    from qbench.models.tokenize import Tokenizer

    run = Path(args.run_dir)
    m = json.loads((run / "manifest.json").read_text())
    arts = {v: Path(e["artifact"]) for v, e in m["variants"].items() if e["status"] == "ok" and "artifact" in e
            and (args.variants is None or v in {"fp32", "ort_dynamic", *args.variants})}
    missing = set(args.variants or []) - set(arts)
    if missing:
        raise SystemExit(f"{run}: no ok variant named {', '.join(sorted(missing))}")
    arts["fp32#2"] = arts["fp32"]
    tok = Tokenizer(Path(m["model"]["tokenizer_dir"]), m["config"]["model"]["max_length"])
    ev = load_split(load_manifest(Path(m["data"]["manifest"])), m["data"]["evaluation"]["split"])
    texts = [s.text for s in ev[: m["data"]["evaluation"]["n"]]]
    rng = np.random.default_rng(args.seed)
    feeds = {b: tok.encode_batch([texts[i] for i in rng.choice(len(texts), b, replace=False)])
             for b in args.batch_sizes or m["config"]["measure"]["latency"]["batch_sizes"]}
    sessions = {k: OrtSession(p, args.threads, ["CPUExecutionProvider"]) for k, p in arts.items()}
    p50 = {b: {k: [] for k in sessions} for b in feeds}
    for r in range(args.rounds):
        order = list(sessions)
        np.random.default_rng(r).shuffle(order)  # no variant always runs first in a round
        for b, f in feeds.items():
            for k in order:
                t = time_runs(lambda: sessions[k].infer(f), 1, args.runs)
                p50[b][k].append(np.median(t) * 1e3)
    boot = np.random.default_rng(args.seed)
    for b in feeds:
        print(f"\nbatch {b} (input {list(feeds[b]['input_ids'].shape)}), {args.rounds} rounds x {args.runs} runs, "
              f"{args.threads} threads")
        print(f"{'variant':48s} {'p50 ms':>8s} {'vs ort_dynamic':>22s} {'vs fp32':>22s}")
        for k in sessions:
            x = np.array(p50[b][k])
            cols = []
            for ref in ("ort_dynamic", "fp32"):
                if ref not in p50[b]:
                    cols.append("")
                    continue
                ratio = x / np.array(p50[b][ref])  # paired by round: drift cancels
                bs = [np.median(ratio[boot.integers(0, len(ratio), len(ratio))]) for _ in range(2000)]
                cols.append(f"{np.median(ratio):.3f} [{np.percentile(bs, 2.5):.3f}, {np.percentile(bs, 97.5):.3f}]")
            print(f"{k:48s} {np.median(x):8.2f} {cols[0]:>22s} {cols[1]:>22s}")


if __name__ == "__main__":
    main()
