"""Issue 18's calibration-set grid, in two steps (one command):

1. ``qbench sweep`` the config (benchmarks/debian-calib-sets-xx-en.yaml): five calibration sets x four
   calibrators under the fixed high-precision recipe;
2. take the ``--worst`` languages that lose most chrF under English-only calibration against balanced
   calibration (mean over the calibrators of the per-language ΔchrF against FP32, English set minus
   balanced set), add each of them alone as a calibration set ("only_<lang>", 512 of its calibration
   sentences), and sweep the grown grid. Its first variants come back from the cache (statistics) and the
   decoding journal (outputs), so only the new sets cost time.

Prints the final run directory on stdout (its report has the calibration-set effects section), and writes
the grown config beside the given one (``<name>.final.yaml``) so the run can be repeated by ``qbench sweep``.

    python benchmarks/calib_sets.py benchmarks/debian-calib-sets-xx-en.yaml --worst 3
    python benchmarks/calib_sets.py --summary reports/benchmark-debian-calib-sets-xx-en   # the docs' tables
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml


def sweep(config: Path) -> Path:
    out = subprocess.run([sys.executable, "-m", "qbench", "sweep", str(config), "--no-progress"],
                         stdout=subprocess.PIPE, text=True, check=True)
    return Path(out.stdout.strip().splitlines()[-1])


def worst_languages(run: Path, k: int, english: str = "english", base: str = "balanced") -> pd.Series:
    """Per language, mean over calibrators of ΔchrF(english set) - ΔchrF(balanced set); the k lowest."""
    r = pd.read_parquet(run / "results.parquet")
    d = r[(r.metric == "delta_chrf") & r.slice.str.startswith("lang=")].copy()
    d["lang"] = d.slice.str.slice(5)
    per = d.pivot_table(index="lang", columns="calibration_set", values="value", aggfunc="mean")
    return (per[english] - per[base]).sort_values().head(k)


def summary(run: Path) -> str:
    """Markdown: per set and calibrator the macro effect against the reference set with its interval and the
    languages it significantly loses or wins (Holm over languages); the smallest effect the test detects."""
    import json

    import yaml as _yaml

    from qbench.report.decision import load_samples
    from qbench.report.set_effects import set_effects

    m = json.loads((run / "manifest.json").read_text())
    root = Path(__file__).resolve().parents[1]
    groups = _yaml.safe_load((root / "datasets/debian_multi_xx_en.yaml").read_text())["language_groups"]["script"]
    g = m.get("gate") or {}
    e = set_effects(load_samples(run), m, "chrf", groups=groups, alpha=g.get("alpha", 0.05),
                    resamples=g.get("resamples", 1000), seed=g.get("seed", 0))
    langs = e[e.slice.str.startswith("lang=")]
    ref = next(iter(m["data"]["calibration_sets"]))
    n = int(langs.n.median())
    out = [f"Run `{m['run_id']}`: {len(set(langs.slice))} languages x {n} test sentences, ΔchrF of each set minus "
           f"'{ref}' for the same calibrator (paired bootstrap, 95%; Holm over languages per set and calibrator). "
           f"Median per-language 95% half-width: {langs.half_width.median():.2f} chrF (range "
           f"{langs.half_width.min():.2f}-{langs.half_width.max():.2f}), about the smallest effect a language "
           f"could show; {int(langs.significant.sum())} of {len(langs)} language effects significant.", "",
           "| set | calibrator | macro ΔchrF [95% CI] | worst language | significant losses | significant gains |",
           "|---|---|---|---|---|---|"]
    for (st, cal), d in e.groupby(["set", "calibrator"], sort=False):
        a = d[d.slice == "all"].iloc[0]
        L = d[d.slice.str.startswith("lang=")]
        w = L.loc[L.effect.idxmin()]
        sig = L[L.significant]
        fmt = lambda x: ", ".join(f"{r.slice[5:]} {r.effect:+.2f}" for r in x.itertuples()) or "none"  # noqa: E731
        out.append(f"| {st} | {cal} | {a.effect:+.2f} [{a.lo:+.2f}, {a.hi:+.2f}] | {w.slice[5:]} {w.effect:+.2f} "
                   f"[{w.lo:+.2f}, {w.hi:+.2f}] | {fmt(sig[sig.effect < 0])} | {fmt(sig[sig.effect > 0])} |")
    G = e[e.slice.str.startswith("group=")]
    gs = G[G.significant]
    out += ["", f"By script ({len(set(G.slice))} scripts, sentences pooled per script): {len(gs)} of {len(G)} "
                "effects significant" + (": " + ", ".join(f"{r.set}/{r.calibrator} {r.slice[6:]} {r.effect:+.2f}"
                                                         for r in gs.itertuples()) if len(gs) else ".")]
    done = {v.get("calibration_set") for v in m["variants"].values() if v.get("status") == "ok"}
    missing = [s for s in m["data"]["calibration_sets"] if s not in done]
    if missing:
        out += ["", f"Not in this run (no variant finished): {', '.join(missing)}."]
    return "\n".join(out)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--summary":
        print(summary(Path(sys.argv[2])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--worst", type=int, default=3)
    a = ap.parse_args()
    first = sweep(a.config)
    worst = worst_languages(first, a.worst)
    print("worst under English-only calibration (ΔchrF english - balanced, mean over calibrators):",
          ", ".join(f"{lang} {v:+.2f}" for lang, v in worst.items()), file=sys.stderr)
    cfg = yaml.safe_load(a.config.read_text())
    base = cfg["data"]["calibration_sets"]["balanced"]
    for lang in worst.index:
        cfg["data"]["calibration_sets"][f"only_{lang}"] = {
            "split": base["split"], "n": base["n"], "seed": base["seed"],
            "sampler": {"name": "lang_balanced", "languages": [lang]}}
    cfg["name"] = cfg["name"] + "-final"
    final = a.config.with_name(a.config.stem + ".final.yaml")
    final.write_text("# written by benchmarks/calib_sets.py from " + a.config.name + ": the worst languages under "
                     "English-only calibration added alone\n" + yaml.safe_dump(cfg, sort_keys=False, width=110))
    print(sweep(final))
    return 0


if __name__ == "__main__":
    sys.exit(main())
