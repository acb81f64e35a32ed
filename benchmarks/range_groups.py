"""Which tensors' clipping costs accuracy? Restore one tensor group at a time to its minmax range.

    python benchmarks/range_groups.py reports/minilm-retrieval/<run_id> --calibrator percentile --n 400

Uses the run's cached statistics (no new calibration pass), builds an S8S8 QDQ model from the chosen
calibrator's table with one group of tensors put back to max|x|, and prints the mean cosine of its
embeddings against FP32 over the first n evaluation texts. Groups are matched by name in torch-exported
BERT-style graphs (LayerNorm outputs, Q, K^T, probabilities, V, context, GELU output).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

GROUPS = {
    "layernorm_out": r"LayerNormalization_output",
    "q": r"self/Transpose_output",
    "k_t": r"self/Transpose_2_output",
    "probs": r"Softmax_output",
    "v": r"self/Transpose_1_output",
    "context": r"self/Reshape_3_output",
    "gelu_out": r"intermediate_act_fn/Mul_1_output",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--calibrator", default="percentile", help="registered calibrator name (default params)")
    ap.add_argument("--n", type=int, default=400)
    args = ap.parse_args()

    from qbench.config import registry
    from qbench.calib import stats as st
    from qbench.backends.ort import OrtSession
    from qbench.calib import CalibrationTable
    from qbench.config.schema import ExclusionCfg
    from qbench.data.manifest import load_manifest, load_split
    from qbench.quantize.qdq import build_qdq
    from qbench.tasks.retrieval import embed, fidelity
    from qbench.models.tokenize import Tokenizer

    m = json.loads((Path(args.run_dir) / "manifest.json").read_text())
    fp32 = Path(m["model"]["onnx_path"])
    info = next(iter(m["statistics"].values()))  # the first calibration set's pass
    stats_file = Path(m["model"]["onnx_path"]).parents[2] / "stats" / f"{info['cache_key']}.npz"
    stats = st.load(stats_file)
    tok = Tokenizer(Path(m["model"]["tokenizer_dir"]), m["config"]["model"]["max_length"])
    texts = [s.text for s in load_split(load_manifest(Path(m["data"]["manifest"])), "evaluation")[: args.n]]
    ref = embed(OrtSession(fp32, 2, ["CPUExecutionProvider"]), tok, texts, 32)
    minmax = registry.calibrators.get("minmax")().table(stats)
    base = registry.calibrators.get(args.calibrator)().table(stats)

    def cosine(amax: dict) -> float:
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "q.onnx"
            build_qdq(fp32, CalibrationTable(amax), ExclusionCfg(), "s8s8", out)
            return fidelity(embed(OrtSession(out, 2, ["CPUExecutionProvider"]), tok, texts, 32), ref)

    print(f"{args.calibrator}, all tensors: cosine vs FP32 {cosine(base.amax):.4f}  (minmax: {cosine(minmax.amax):.4f})")
    for group, rx in GROUPS.items():
        names = [t for t in base.amax if re.search(rx, t)]
        amax = {t: (minmax.amax[t] if t in names else a) for t, a in base.amax.items()}
        ranges = ", ".join(f"{base.amax[t]:.1f}->{minmax.amax[t]:.1f}" for t in names[:6])
        print(f"  {group:14s} ({len(names):2d} tensors) at minmax: cosine {cosine(amax):.4f}   amax {ranges}")


if __name__ == "__main__":
    main()
