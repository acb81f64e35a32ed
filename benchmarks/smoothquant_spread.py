"""What SmoothQuant does to each group of linear-layer inputs: channel spread of the activation, and the weights'
int8 error, per alpha. Numpy only, from a run's cached statistics (no new pass, no model run).

    python benchmarks/smoothquant_spread.py reports/example-smoothquant --alphas 0.5 0.8 0.95

Per group kind (norm: LayerNorm outputs; attn_out: attention-out inputs; ffn_down: FFN-down inputs), averaged over layers:
- spread: max over median of the per-channel max |x|, before and after dividing by s (1 is flat);
- weight error: ||dequant(quant(W)) - W|| / ||W|| of the per-output-channel int8 weights, before and after
  multiplying the rows by s.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.8, 0.95])
    ap.add_argument("--set", default="default")
    args = ap.parse_args()

    import onnx
    from onnx import numpy_helper

    from calibrators.weights import PerChannel
    from qbench.calib import stats as st
    from qbench.quantize.smoothquant import find_groups, smooth

    manifest = json.loads((args.run_dir / "manifest.json").read_text())
    cache = Path(os.environ.get("QBENCH_CACHE", manifest["config"]["output"]["cache_dir"]))
    stats = st.load(cache / "stats" / f"{manifest['statistics'][args.set]['cache_key']}.npz")
    fp32 = onnx.load(manifest["model"]["onnx_path"])
    cmax = {t: s.channel_absmax for t, s in stats.items() if s.channel_absmax is not None}
    inits = {t.name: numpy_helper.to_array(t) for t in fp32.graph.initializer}

    def werr(w: np.ndarray) -> float:
        q, sc = PerChannel().quantize(w, 1)
        return float(np.linalg.norm(q * sc[None, :] - w) / np.linalg.norm(w))

    def spread(a: np.ndarray) -> float:
        return float(a.max() / np.median(a))

    groups = find_groups(fp32, "all")
    print(f"{'alpha':>5}  {'group':<10} {'n':>2}  {'spread before':>13} {'after':>6}  {'weight err before':>17} {'after':>7}")
    for alpha in args.alphas:
        _, s, src = smooth(fp32, cmax, alpha, "all")
        rows: dict[str, list] = {}
        for g in groups:
            kind = g.kind  # the group kinds a per-group alpha names (qbench.config.transforms.GROUP_KINDS)
            ss = s[next(q for q, t in src.items() if t == g.tensor)]
            a = cmax[g.tensor]
            ws = [inits[m.input[1]] for m in g.matmuls]
            rows.setdefault(kind, []).append((spread(a), spread(a / ss), np.mean([werr(w) for w in ws]),
                                              np.mean([werr(w * ss[:, None]) for w in ws])))
        for kind, v in rows.items():
            m = np.array(v).mean(axis=0)
            print(f"{alpha:>5g}  {kind:<10} {len(v):>2}  {m[0]:>13.1f} {m[1]:>6.1f}  {m[2]:>17.4f} {m[3]:>7.4f}")


if __name__ == "__main__":
    main()
