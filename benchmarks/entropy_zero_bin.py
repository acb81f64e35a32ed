"""How the entropy calibrator's reference rule moves the thresholds of a translation sweep's tensors.

    QBENCH_CACHE=/tmp/qb-cache python benchmarks/entropy_zero_bin.py examples/bible-en-es.yaml \
        [--set NAME] [--json out.json] [--committed reports/example-bible-en-es/tables/entropy]

Runs the sweep's statistics pass only (encoder and decoder, one calibration set: the first unless
--set names one), then computes each calibrated tensor's amax with ``entropy`` (the reference rule:
bin 0 counted as bin 1) and ``entropy[zero_bin=counted]`` (the earlier rule), next to its absmax.
Softmax outputs are found from graph structure (qbench.quantize.roles); the decoder's are split into
cross-attention (the key length is the source length: the scores' last axis does not grow with the
decoder's tokens) and self-attention by name, as torch's Marian export names them
(``encoder_attn`` / ``self_attn``). No variant is built or evaluated.

--committed PREFIX reads a committed run's entropy tables (PREFIX.encoder.json, PREFIX.decoder.json)
and says how many of its thresholds this pass's earlier-rule thresholds reproduce: the check that
the statistics here are the ones that run calibrated from.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def softmax_outputs(model) -> set[str]:
    from qbench.quantize.roles import find_roles

    return {g.output for g in find_roles(model).get("softmax", [])}


def kind_of(name: str, softmax: set[str]) -> str:
    if name not in softmax:
        return "other"
    if "encoder_attn" in name:
        return "cross-attention softmax"
    if "self_attn" in name:
        return "self-attention softmax"
    return "softmax"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--set", dest="set_name")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--committed", help="a committed run's entropy table prefix, e.g. reports/x/tables/entropy")
    args = ap.parse_args(argv)

    from calibrators.entropy import Entropy
    from qbench.tasks import translation
    from qbench.config.schema import load_config
    from qbench.run.context import prepare

    cfg = load_config(args.config)
    if cfg.task != "translation":
        raise SystemExit(f"{args.config}: a translation sweep is needed (task: {cfg.task})")
    with tempfile.TemporaryDirectory(prefix="qbench-entropy-") as tmp:
        ctx = prepare(cfg, Path(tmp))
        set_name = args.set_name or next(iter(ctx.calib_sets))
        stats = translation.ensure_stats(ctx, set_name)
        rows = []
        for comp, per_tensor in stats.items():
            softmax = softmax_outputs(ctx.fp32_model(comp))
            for name, t in sorted(per_tensor.items()):
                rows.append({"component": comp, "tensor": name, "kind": kind_of(name, softmax),
                             "absmax": t.absmax, "reference": Entropy().amax(t),
                             "counted": Entropy(zero_bin="counted").amax(t),
                             "bin0_over_bin1": float(t.hist[0] / max(t.hist[1], 1)) if t.hist is not None else None})
    print(f"{cfg.name}: calibration set '{set_name}', {len(rows)} tensors")
    print(f"{'component':9} {'kind':24} {'n':>3} {'reference amax':>22} {'counted amax':>22} {'ratio ref/counted':>22}")
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["component"], r["kind"]), []).append(r)
    for (comp, kind), rs in sorted(groups.items()):
        ref = np.array([r["reference"] for r in rs])
        cnt = np.array([r["counted"] for r in rs])
        ratio = ref / np.where(cnt > 0, cnt, np.nan)
        print(f"{comp:9} {kind:24} {len(rs):3d} {_span(ref):>22} {_span(cnt):>22} {_span(ratio, '.2f'):>22}")
    if args.committed:
        compare_committed(rows, args.committed)
    if args.json:
        args.json.write_text(json.dumps({"config": str(args.config), "set": set_name, "rows": rows}, indent=1))
    return 0


def compare_committed(rows: list[dict], prefix: str) -> None:
    n = same = 0
    worst = 0.0
    for comp in sorted({r["component"] for r in rows}):
        table = json.loads(Path(f"{prefix}.{comp}.json").read_text())["amax"]
        for r in rows:
            if r["component"] == comp and r["tensor"] in table:
                n += 1
                same += table[r["tensor"]] == r["counted"]
                worst = max(worst, abs(table[r["tensor"]] / r["counted"] - 1))
    print(f"committed {prefix}: {same} of {n} thresholds identical to entropy[zero_bin=counted] here, "
          f"the largest relative difference {worst:.1%}")


def _span(a: np.ndarray, fmt: str = ".4g") -> str:
    """min-max (median) of the finite values."""
    a = a[np.isfinite(a)]
    if not len(a):
        return "-"
    return f"{a.min():{fmt}}-{a.max():{fmt}} ({np.median(a):{fmt}})"


if __name__ == "__main__":
    raise SystemExit(main())
