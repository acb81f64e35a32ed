"""Score exclusion candidates of an ``exclude: auto`` run on the full evaluation set, outside the search.

Used for the README's "Measured: the multilingual model" table: how the per-language gate behaves on
the held-out strings for the search's own ranking (top-k units) and for hand-picked node sets.

    python benchmarks/heldout_candidates.py examples/django-multi-auto.yaml \\
        reports/example-django-multi-auto --k 0,4,8,12 --sets bmm_all_lmhead,attnv_all_lmhead

Each candidate prints its gate result, worst-language drop, overall change and exact-match rate against
FP32. It reuses the sweep's cache (statistics, QDQ artifacts), so only decoding costs time (~1 min each
on 2 cores for 3,286 strings).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

# Node-name regexes of the hand-picked sets (Marian naming, as exported by qbench).
SETS = {
    "bmm_all_lmhead": [r"/(self_attn|encoder_attn)/MatMul(_1)?$", r"^/lm_head/MatMul$"],
    "bmm_dec_lmhead": [r"^/decoder/.*/(self_attn|encoder_attn)/MatMul(_1)?$", r"^/lm_head/MatMul$"],
    "attnv_all_lmhead": [r"/(self_attn|encoder_attn)/MatMul_1$", r"^/lm_head/MatMul$"],
}


def main() -> None:
    from qbench.run import search
    from qbench.run.context import prepare
    from qbench.tasks import decode, translation as tr
    from qbench.tasks.translation_search import TranslationScorer
    from qbench.config.schema import ExclusionCfg, load_config
    from qbench.quantize.qdq import plan
    from qbench.run.variants import expand

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("run_dir", help="a finished run of the config (its manifest holds the search's ranking)")
    p.add_argument("--k", default="", help="comma-separated k: exclude the ranking's top k units")
    p.add_argument("--sets", default="", help=f"comma-separated names from {sorted(SETS)}")
    a = p.parse_args()

    cfg = load_config(a.config)
    manifest = json.loads((Path(a.run_dir) / "manifest.json").read_text())
    auto_id, info = next((vid, v["search"]) for vid, v in manifest["variants"].items() if "search" in v)
    ctx = prepare(cfg, Path(tempfile.mkdtemp(prefix="qbench-heldout-")))  # nothing is written there
    variants = {v.id: v for v in expand(cfg)}
    tr.evaluate(ctx, variants["fp32"], ctx.fp32)  # FP32's outputs and statistics: the gate's base
    models = {c: ctx.fp32_model(c) for c in ("encoder", "decoder")}
    by_id = {u.id: u for u in search.units(models, info["granularity"])}
    ranked = [by_id[u] for u in info["ranking"]]
    # full_quality needs only the context and the metric, not a scoring subset: skip the subset's decoding.
    scorer = TranslationScorer.__new__(TranslationScorer)
    scorer.ctx, scorer.tr, scorer.metric = ctx, decode, cfg.gate.metric
    s = search.Search(ctx, variants[auto_id], scorer, ranked)

    cands = [(f"top {k} units", search.exclusion_for(ranked[:k])) for k in map(int, filter(None, a.k.split(",")))]
    cands += [(name, ExclusionCfg(names=SETS[name])) for name in filter(None, a.sets.split(","))]
    for name, excl in cands:
        t0 = time.perf_counter()
        n_float = sum(len(plan(m, ExclusionCfg())[0]) - len(plan(m, excl)[0]) for m in models.values())
        art = s.build(excl)
        quality, base = scorer.full_quality(art)
        hyps = ctx.decoded.pop(str(art))[0]
        ok, drop, where = s.gate(quality, base)
        exact = float(np.mean([x == y for x, y in zip(hyps, ctx.fp32_ref["hyps"])]))
        print(f"{name}: float MatMuls {n_float}, {'pass' if ok else 'FAIL'}, worst drop {drop:.2f} ({where}), "
              f"overall {quality['all'] - base['all']:+.2f}, exact match {exact:.3f}, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
