"""Power and error rate of qbench.report.decision on test sets of 1,000 sentences per language.

    python benchmarks/decision_power.py > benchmarks/decision_power.txt

Built from the committed Django run (reports/example-django-multi, 28 languages): in every simulation each
language gets a fresh test set of ``--n`` sentences drawn with replacement from its pool of (FP32 output, real
INT8 output) pairs, the two outputs going to either side at random (identical quality, flips at the observed
exact-match rate). In one language (``--lang``) a share of the variant's outputs is then replaced by worse
ones: the output cut to the first half of its words (what a decoder that stops early writes), scored by
sacrebleu against the reference. The share is set so that the planted loss is ``--loss`` chrF on average.
The decision then gates chrF with a budget of ``--budget`` per language, Holm over languages, alpha 0.05.

Prints: the mean planted loss, how often the planted language FAILs (power), and how often each other
language FAILs (false FAILs), and the overall states.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ALT = "percentile[percentile=99.99]+none+s8s8@balanced"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "reports" / "example-django-multi"))
    ap.add_argument("--sims", type=int, default=200)
    ap.add_argument("--n", type=int, default=1000, help="test sentences per language")
    ap.add_argument("--lang", default="de", help="the language with the planted loss")
    ap.add_argument("--loss", type=float, default=2.0, help="planted chrF loss")
    ap.add_argument("--budget", type=float, default=1.0)
    ap.add_argument("--plant", choices=("expected", "exact"), default="expected",
                    help="expected: the loss in expectation over test sets; exact: on each test set")
    ap.add_argument("--resamples", type=int, default=None,
                    help="default: what qbench gate uses, max(2000, 10 x languages / alpha)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import pandas as pd

    from qbench.report import decision as D
    from qbench.tasks import mt_metrics as mm

    t0 = time.perf_counter()
    samples = pd.read_parquet(Path(args.run) / "samples.parquet")
    a, b = D.paired_frames(samples, ALT)
    langs = a.lang.to_numpy(object)
    rng = np.random.default_rng(args.seed)
    order = sorted(set(langs))
    args.resamples = args.resamples or max(2000, int(np.ceil(10 * len(order) / 0.05)))
    counts = D.counts_matrix(args.n, args.resamples, args.seed)
    p_pass, p_fail, planted = [], [], None
    for lang in order:
        m = langs == lang
        sa, sb = mm.stats_from_samples(a[m])["chrf"], mm.stats_from_samples(b[m])["chrf"]
        draw = rng.integers(0, int(m.sum()), size=(args.sims, args.n))
        swap = rng.random((args.sims, args.n, 1)) < 0.5
        base, var = np.where(swap, sb[draw], sa[draw]), np.where(swap, sa[draw], sb[draw])
        if lang == args.lang:
            hyps = a[m].hyp.tolist()
            cut = [" ".join(h.split()[: len(h.split()) // 2]) for h in hyps]
            worse = mm.sample_stats(cut, a[m].ref.tolist(), lang)["chrf"][draw]
            u = rng.random((args.sims, args.n, 1))
            # The share of outputs replaced, by bisection: "expected": one share for all simulations, whose
            # loss on the expected summed statistics is --loss (the test sets' own noise stays in the
            # realized loss); "exact": a share per simulation that loses exactly --loss on its test set.
            if args.plant == "expected":
                mix, bad = (sa + sb).sum(axis=0)[None] / 2, worse.reshape(-1, worse.shape[-1]).mean(0)[None]
                bad = bad * len(sa)

                def loss(q):
                    return mm.corpus_scores(mix, "chrf") - mm.corpus_scores((1 - q[:, None]) * mix + q[:, None] * bad,
                                                                            "chrf")
                lo, hi = np.zeros(1), np.ones(1)
            else:
                base_score = mm.corpus_scores(base.sum(axis=1), "chrf")

                def loss(q):
                    return base_score - mm.corpus_scores(np.where(u < q[:, None, None], worse, var).sum(axis=1),
                                                         "chrf")
                lo, hi = np.zeros(args.sims), np.ones(args.sims)
            for _ in range(30):
                mid = (lo + hi) / 2
                low = loss(mid) < args.loss
                lo, hi = np.where(low, mid, lo), np.where(low, hi, mid)
            share = np.broadcast_to((lo + hi) / 2, (args.sims,))
            var = np.where(u < share[:, None, None], worse, var)
        parts = [D.drops(base[i:i + 50], var[i:i + 50], "chrf", counts) for i in range(0, args.sims, 50)]
        f, res = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])  # memory: 50 at once
        if lang == args.lang:
            planted = (share, f)
        pp, pf = D._p_values(res, args.budget)
        p_pass.append(pp)
        p_fail.append(pf)
    st, _ = D.states(np.stack(p_pass, 1), np.stack(p_fail, 1), 0.05, "holm")
    ov = D.overall(st)
    share, f = planted
    li = order.index(args.lang)
    others = [i for i in range(len(order)) if i != li]
    fail_other = (st[:, others] == D.FAIL).mean(axis=0)
    print(f"decision power: {args.sims} simulations, {len(order)} languages x {args.n} sentences, chrF budget "
          f"{args.budget} per language, holm, alpha 0.05, {args.resamples} resamples, seed {args.seed}")
    print(f"planted ({args.plant}) in {args.lang}: {share.mean():.1%} of outputs (mean) cut to half their words; "
          f"planted chrF loss mean "
          f"{f.mean():.2f} (sd {f.std(ddof=1):.2f})")
    print(f"power: {args.lang} FAILs in {np.mean(st[:, li] == D.FAIL):.1%} of simulations "
          f"(PASS {np.mean(st[:, li] == D.PASS):.1%}, INCONCLUSIVE {np.mean(st[:, li] == D.INCONCLUSIVE):.1%})")
    print(f"false FAILs: the other {len(others)} languages FAIL in at most {fail_other.max():.1%} of simulations "
          f"each (mean {fail_other.mean():.2%}); any other language FAILs in "
          f"{np.mean((st[:, others] == D.FAIL).any(axis=1)):.1%}")
    print(f"other languages PASS in {np.mean(st[:, others] == D.PASS):.1%} of (language, simulation) pairs")
    print("overall: " + ", ".join(f"{s} {np.mean(ov == s):.1%}" for s in (D.PASS, D.FAIL, D.INCONCLUSIVE)))
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
