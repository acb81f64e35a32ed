"""The full-resolution multilingual benchmark's table: per language and direction, FP32's chrF, the INT8
recipe's chrF drop with its one-sided bounds, and the release decision (qbench.report.decision), from the two
committed runs of benchmarks/debian-multi-full-{xx-en,en-xx}.yaml.

    python benchmarks/debian_multi_full.py reports/benchmark-debian-multi-full-xx-en \\
        reports/benchmark-debian-multi-full-en-xx > benchmarks/debian_multi_full.txt
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import yaml

from qbench.report.decision import for_run, load_samples

ROOT = Path(__file__).resolve().parents[1]
VARIANT = "minmax+high_precision+s8s8"


def direction(run: Path):
    manifest = json.loads((run / "manifest.json").read_text())
    res = pd.read_parquet(run / "results.parquet")
    dec = for_run(load_samples(run), manifest, VARIANT)
    fp = res[(res.variant == "fp32") & (res.metric == "chrf") & res.slice.str.startswith("lang=")]
    fp32 = dict(zip(fp.slice.str.slice(5), fp.value))
    allrow = res[(res.metric == "chrf") & (res.slice == "all")].set_index("variant").value
    return manifest, dec, fp32, allrow


def main(xx_en: str, en_xx: str) -> None:
    groups = yaml.safe_load((ROOT / "datasets/debian_multi_xx_en.yaml").read_text())["language_groups"]["script"]
    runs = {"XX→EN": direction(Path(xx_en)), "EN→XX": direction(Path(en_xx))}
    print(f"Variant `{VARIANT}` (minmax, balanced 512-sentence calibration; embeddings, lm_head, LayerNorm and "
          "Softmax float) against FP32, greedy, every test segment.")
    for name, (m, dec, _, allrow) in runs.items():
        h = m["host"]
        print(f"- {name}: run `{m['run_id']}`, {sum(d.n for d in dec.langs):,} segments; {h['cpu']}, "
              f"{h['cpu_count']} cores; {dec.summary()}. Macro chrF FP32 {allrow['fp32']:.2f}, "
              f"INT8 {allrow[VARIANT]:.2f}.")
    print()
    print("| lang | script | n | FP32 chrF XX→EN | drop [bounds] | decision | FP32 chrF EN→XX | drop [bounds] | decision |")
    print("|---|---|---:|---:|---|---|---:|---|---|")
    by = {k: {d.lang: d for d in v[1].langs} for k, v in runs.items()}
    for lang in sorted(by["XX→EN"]):
        cells = [lang, groups.get(lang, "?"), f"{by['XX→EN'][lang].n:,}"]
        for name, (_, _, fp32, _) in runs.items():
            d = by[name][lang]
            state = d.state + (f" (needs ~{d.n_needed:,})" if d.n_needed else "")
            cells += [f"{fp32[lang]:.1f}", f"{d.drop:+.2f} [{d.lo:+.2f}, {d.hi:+.2f}]", state]
        print("| " + " | ".join(cells) + " |")
    print()
    print("drop: FP32 chrF minus INT8 chrF (positive: a loss), bounds one-sided at the level Holm's correction "
          "gave the language; decision against a budget of 1.0 chrF per language, alpha 0.05 over languages.")


if __name__ == "__main__":
    main(*sys.argv[1:3])
