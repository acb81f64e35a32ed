"""The release decision on every committed run with per-sample statistics, and how steady BLEU and chrF are.

    python benchmarks/decision_runs.py > benchmarks/decision_runs.txt

For each run under reports/ that has samples.parquet: every variant's decision (qbench.report.decision, the run's
own gate settings) under BLEU and under chrF with the same budget, and the paired-bootstrap standard error of
each language's drop, BLEU against chrF (the smaller, the steadier: fewer sentences decide). Then an A/A
check on the Django run: 200 variants of FP32's quality (where FP32 and a real INT8 variant differ, each
sentence's two outputs go to either side at random), gated by the point estimate and by the decision.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ALT = "percentile[percentile=99.99]+none+s8s8@balanced"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sims", type=int, default=200)
    args = ap.parse_args()

    from qbench.report import decision as dn
    from qbench.tasks import mt_metrics as mm

    for run in sorted((ROOT / "reports").iterdir()):
        samples = dn.load_samples(run)
        if samples is None:
            continue
        m = json.loads((run / "manifest.json").read_text())
        gate = dn.gate_of(m)
        print(f"## {run.name}: gate {gate}")
        print(f"{'variant':52s} {'looks':>5s}  {'BLEU decision':42s}  chrF decision")
        se = {"bleu": [], "chrf": []}
        for v in m["variants"]:
            if v == "fp32" or m["variants"][v].get("status") != "ok":
                continue
            cells = []
            for metric in ("bleu", "chrf"):
                d = dn.for_run(samples, {**m, "config": {**m.get("config", {}), "gate": {**gate, "metric": metric}}}, v)
                bs = d.by_state
                cells.append(f"{d.state} ({len(bs[dn.PASS])}/{len(bs[dn.FAIL])}/{len(bs[dn.INCONCLUSIVE])})")
                if d.state != dn.FAIL:  # the noise of working variants; a broken one's spread is its damage
                    se[metric].append([x.se for x in d.langs])
            print(f"{v:52s} {dn.looks(m, v):5d}  {cells[0]:42s}  {cells[1]}")
        print("(states: overall (PASS/FAIL/INCONCLUSIVE languages))")
        if se["bleu"]:
            b, c = np.asarray(se["bleu"]), np.asarray(se["chrf"])
            ratio = c / np.where(b > 0, b, np.nan)
            print(f"bootstrap SE of a language's drop over the non-FAIL variants ({b.size} language x variant pairs): "
                  f"BLEU median {np.median(b):.2f} (range {b.min():.2f}-{b.max():.2f}), chrF median {np.median(c):.2f} "
                  f"(range {c.min():.2f}-{c.max():.2f}); chrF/BLEU median {np.nanmedian(ratio):.2f}; "
                  f"sentences to reach the same SE: chrF needs {np.nanmedian(ratio) ** 2:.0%} of BLEU's")
        print()

    # A/A on the Django run
    samples = dn.load_samples(ROOT / "reports" / "example-django-multi")
    a, b = dn.paired_frames(samples, ALT)
    langs = a.lang.to_numpy(object)
    rng = np.random.default_rng(0)
    print(f"## A/A: {args.sims} variants of FP32's quality on example-django-multi (flips where FP32 and {ALT} "
          f"differ: {np.mean(a.hyp.to_numpy() != b.hyp.to_numpy()):.1%} of sentences), budget 1.0 per language")
    for metric in ("bleu", "chrf"):
        pp, pf, point = [], [], []
        order = sorted(set(langs))
        for lang in order:
            mask = langs == lang
            sa, sb = mm.stats_from_samples(a[mask])[metric], mm.stats_from_samples(b[mask])[metric]
            swap = rng.random((args.sims, int(mask.sum()), 1)) < 0.5
            full, res = dn.drops(np.where(swap, sb, sa), np.where(swap, sa, sb), metric,
                                 dn.counts_matrix(int(mask.sum()), int(np.ceil(10 * len(order) / 0.05)), 0))
            p1, p2 = dn._p_values(res, 1.0)
            pp.append(p1)
            pf.append(p2)
            point.append(full)
        pp, pf, point = np.stack(pp, 1), np.stack(pf, 1), np.stack(point, 1)
        for corr in ("holm", "bonferroni"):
            st, _ = dn.states(pp, pf, 0.05, corr)
            ov = dn.overall(st)
            print(f"{metric:5s} {corr:10s}: overall FAIL {np.mean(ov == dn.FAIL):.1%}, PASS {np.mean(ov == dn.PASS):.1%}, "
                  f"INCONCLUSIVE {np.mean(ov == dn.INCONCLUSIVE):.1%}; languages PASS {np.mean(st == dn.PASS):.1%}")
        unc = np.where(pf <= 0.05, dn.FAIL, np.where(pp <= 0.05, dn.PASS, dn.INCONCLUSIVE))
        print(f"{metric:5s} no control: overall FAIL {np.mean((unc == dn.FAIL).any(axis=1)):.1%} (each language at "
              f"alpha 0.05 alone)")
        print(f"{metric:5s} point estimate (worst language drop > 1.0 fails): FAIL {np.mean(point.max(axis=1) > 1.0):.1%}; "
              f"median worst-language drop {np.median(point.max(axis=1)):.2f}")


if __name__ == "__main__":
    main()
