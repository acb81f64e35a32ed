"""Which calibration set protects which language: each set's effect against a reference set, per language and per
language group (e.g. script), with paired-bootstrap intervals.

A sweep that crosses calibration sets builds, for every calibrator, exclusion and flavor, one variant per set. Two
such variants translate the same sentences, so their difference is paired: ``effect = score(set) − score(reference)``
(positive: the set does better than the reference). Each language is resampled within itself
(``mt_metrics.paired_bootstrap_by_lang``: a language's row equals the bootstrap of that language alone); a group's
row pools the sentences of its languages into one corpus score. Over the languages of one pair, the
p-values are Holm-adjusted, so "significant" controls the chance of any false claim across languages at ``alpha``.
The smallest effect the test could have detected is reported too: with the interval's half-width w, an effect of
about w would have been flagged (per language, at 95%).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from qbench.config.errors import DataError

KEY = ("calibrator", "exclusion", "flavor", "backend")


def set_pairs(manifest: Mapping, reference: str | None = None) -> tuple[str | None, list[tuple[str, str, str]]]:
    """(reference set, [(set, variant, reference variant)]): every ok variant of a set other than the reference
    paired with the ok variant that differs from it in the calibration set alone. The reference defaults to the
    first calibration set of the run (the config's order)."""
    sets = list((manifest.get("data") or {}).get("calibration_sets") or {})
    if len(sets) < 2:
        return None, []
    ref = reference or sets[0]
    if ref not in sets:
        raise DataError(f"calibration set '{ref}' is not in this run (sets: {', '.join(sets)})")
    ok = {vid: v for vid, v in manifest["variants"].items() if v.get("status") == "ok" and v.get("calibration_set")}
    by_key = {(tuple(v.get(k) for k in KEY), v["calibration_set"]): vid for vid, v in ok.items()}
    pairs = []
    for (key, s), vid in by_key.items():
        if s != ref and (key, ref) in by_key:
            pairs.append((s, vid, by_key[(key, ref)]))
    order = {s: i for i, s in enumerate(sets)}
    return ref, sorted(pairs, key=lambda p: (order[p[0]], p[1]))


def set_effects(samples, manifest: Mapping, metric: str = "chrf", reference: str | None = None,
                groups: Mapping[str, str] | None = None, alpha: float = 0.05, resamples: int = 1000, seed: int = 0):
    """Tidy effects: one row per (pair, slice) with columns set, variant, reference_variant, calibrator,
    exclusion, flavor, slice ('all' = macro mean over languages, 'lang=xx', 'group=Latn'), n, effect, lo, hi, p,
    p_holm (languages only), significant, half_width. Empty when the run has fewer than two sets."""
    import pandas as pd

    from qbench.report.decision import paired_frames
    from qbench.tasks.mt_metrics import stats_from_samples

    ref, pairs = set_pairs(manifest, reference)
    cols = ["set", "variant", "reference_variant", "calibrator", "exclusion", "flavor", "slice", "n", "effect",
            "lo", "hi", "p", "p_holm", "significant", "half_width"]
    rows: list[dict] = []
    for s, vid, rvid in pairs:
        a, b = paired_frames(samples, vid, baseline=rvid)
        sa, sb = stats_from_samples(a)[metric], stats_from_samples(b)[metric]
        langs = a["lang"].astype(str).to_numpy(object)
        info = manifest["variants"][vid]
        common = {"set": s, "variant": vid, "reference_variant": rvid,
                  **{k: info.get(k) for k in ("calibrator", "exclusion", "flavor")}}
        boot = (metric, resamples, seed, alpha)
        rows += [{**common, **r} for r in _slice_rows(sa, sb, langs, "lang", boot, with_macro=True)]
        if groups:
            missing = sorted(set(langs) - set(groups))
            if missing:
                raise DataError(f"language '{missing[0]}' has no group in the dataset manifest's language_groups")
            glabels = np.array([groups[x] for x in langs], dtype=object)
            rows += [{**common, **r} for r in _slice_rows(sa, sb, glabels, "group", boot, with_macro=False)]
    return pd.DataFrame(rows, columns=cols)


def _slice_rows(sa, sb, labels, kind: str, boot: tuple, with_macro: bool) -> list[dict]:
    """Effect rows of one pair sliced by ``labels`` (languages, or their groups): each slice resampled within
    itself, Holm over the slices; with ``with_macro`` also the macro mean ('all', decided on its own p)."""
    from qbench.report.decision import adjust
    from qbench.tasks.mt_metrics import paired_bootstrap_by_lang

    metric, resamples, seed, alpha = boot
    df = paired_bootstrap_by_lang(sa, sb, labels, metrics=(metric,), n=resamples, seed=seed)
    per = df[df.lang != "all"]
    p_holm = dict(zip(per.lang, adjust(per.p.to_numpy(np.float64), "holm")))
    labels_, counts = np.unique(np.asarray(labels, dtype=str), return_counts=True)
    n = dict(zip(labels_, counts.tolist()))
    out = []
    for r in (df if with_macro else per).itertuples():
        ph = p_holm.get(r.lang)
        out.append({"slice": "all" if r.lang == "all" else f"{kind}={r.lang}",
                    "n": int(len(labels) if r.lang == "all" else n[r.lang]),
                    "effect": r.delta, "lo": r.lo, "hi": r.hi, "p": r.p, "p_holm": ph,
                    "significant": bool((r.p if ph is None else ph) <= alpha), "half_width": (r.hi - r.lo) / 2})
    return out


def effects_svg(effects, slices: Sequence[str], title: str) -> str:
    """Dot-and-interval plot: one row per slice, one colour per set (the effect against the reference set, with its
    95% interval; filled dots: significant after Holm over languages)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(effects["set"]))
    if effects.empty or not slices:
        return ""
    n, k = len(slices), len(sets)
    cmap = matplotlib.colormaps["tab10"]
    with plt.rc_context({"svg.fonttype": "none", "text.parse_math": False}):
        fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.22 * n * max(1, k) ** 0.5))
        for j, s in enumerate(sets):
            e = effects[effects["set"] == s].set_index("slice")
            off = (j - (k - 1) / 2) * (0.7 / max(k, 1))
            for i, sl in enumerate(slices):
                if sl not in e.index:
                    continue
                r = e.loc[sl]
                ax.hlines(i + off, r["lo"], r["hi"], color=cmap(j % 10), lw=1)
                ax.scatter([r["effect"]], [i + off], s=14, color=cmap(j % 10),
                           facecolors=cmap(j % 10) if r["significant"] else "white", zorder=3,
                           label=s if i == 0 else None)
        ax.axvline(0, c="#68707a", lw=0.8)
        ax.set_yticks(range(n), [sl.split("=", 1)[-1] if sl != "all" else "all (macro)" for sl in slices], fontsize=7)
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right", framealpha=0.9)
        buf = io.StringIO()
        fig.savefig(buf, format="svg", bbox_inches="tight")
        plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


def range_moves(manifest: Mapping, run_dir, pairs: Sequence[tuple[str, str]], top: int = 5) -> list[dict]:
    """Where a calibration set changes the amax: for each (variant, reference variant) pair, the tensors whose amax
    moves most against the reference set's (largest |log ratio|), read from the calibration tables the run keeps
    (``tables/*.json``). One row per pair: set, graph-qualified tensors with both amax values and their ratio."""
    import json
    import math
    from pathlib import Path

    from qbench.report.tables import table_paths

    def amax(vid: str) -> dict[str, float]:
        e = manifest["variants"][vid]
        paths = table_paths(e)
        names = e.get("quantized_tensor_names")   # runs before it was recorded: every calibrated tensor
        out = {}
        for graph, rel in paths.items():
            f = Path(run_dir) / rel
            if f.is_file():
                keep = None if names is None else set(names.get(graph, ()))
                out.update({(f"{graph}:" if graph else "") + k: float(v)
                            for k, v in json.loads(f.read_text())["amax"].items() if keep is None or k in keep})
        return out

    rows = []
    for vid, rvid in pairs:
        a, b = amax(vid), amax(rvid)
        moves = [(abs(math.log(a[k] / b[k])), k, a[k], b[k]) for k in sorted(set(a) & set(b)) if a[k] > 0 and b[k] > 0]
        moves.sort(key=lambda m: (-m[0], m[1]))
        rows.append({"set": manifest["variants"][vid].get("calibration_set"), "n": len(moves),
                     "quantized_only": "quantized_tensor_names" in manifest["variants"][vid],
                     "tensors": [{"tensor": k, "short": "/".join(k.split("/")[-3:]), "amax": x, "ref": y,
                                  "ratio": x / y} for _, k, x, y in moves[:top]]})
    return rows


def set_sections(manifest: Mapping, samples, run_dir=None) -> list[dict]:
    """The report's calibration-set sections: per calibrator, exclusion and flavor, a languages x sets table of
    effects against the reference set and the plot of the same; groups (scripts) first when the dataset has them;
    with ``run_dir``, the tensors whose amax each set moves most, beside the languages it significantly loses.
    Empty without per-sentence samples or with fewer than two sets."""
    if samples is None or "lang" not in getattr(samples, "columns", ()):
        return []
    gate = manifest.get("gate") or {}
    metric = gate.get("metric") if gate.get("metric") in ("bleu", "chrf") else "chrf"
    groupings = (manifest.get("data") or {}).get("language_groups") or {}
    gname, groups = next(iter(groupings.items()), (None, None))
    settings = gate.get("alpha", 0.05), gate.get("resamples", 1000), gate.get("seed", 0)
    eff = set_effects(samples, manifest, metric, groups=groups, alpha=settings[0], resamples=settings[1],
                      seed=settings[2])
    if eff.empty:
        return []
    ref = set_pairs(manifest)[0]
    out = []
    label = {"bleu": "BLEU", "chrf": "chrF"}[metric]
    for key, e in eff.groupby(["calibrator", "exclusion", "flavor"], sort=False):
        sets = list(dict.fromkeys(e["set"]))
        langs = sorted(s for s in set(e["slice"]) if s.startswith("lang="))
        gsl = sorted(s for s in set(e["slice"]) if s.startswith("group="))
        slices = ["all", *gsl, *langs]
        cell = {(r.slice, r.set): r for r in e.itertuples()}
        rows = []
        for sl in slices:
            cells = []
            for s in sets:
                r = cell.get((sl, s))
                cells.append(None if r is None else {
                    "text": f"{r.effect:+.2f}", "sig": bool(r.significant),
                    "title": f"{s} − {ref}, {sl}: {r.effect:+.2f} [{r.lo:+.2f}, {r.hi:+.2f}], n {r.n}, "
                             f"p {r.p:.3g}" + ("" if r.p_holm is None or r.p_holm != r.p_holm
                                                 else f", Holm {r.p_holm:.3g}"),
                    "bad": r.effect < 0})
            first = cell.get((sl, sets[0]))
            rows.append({"slice": "all (macro)" if sl == "all" else sl.split("=", 1)[1],
                         "kind": sl.split("=", 1)[0], "n": None if first is None else first.n, "cells": cells})
        lang_rows = e[e["slice"].str.startswith("lang=")]
        moves = []
        if run_dir is not None:
            pairs = list(dict.fromkeys(zip(e["variant"], e["reference_variant"])))
            losing = {st: ", ".join(f"{r.slice[5:]} {r.effect:+.2f}" for r in g.itertuples())
                      for st, g in lang_rows[lang_rows["significant"] & (lang_rows["effect"] < 0)].groupby("set")}
            moves = [{**m, "loses": losing.get(m["set"], "")} for m in range_moves(manifest, run_dir, pairs)]
        out.append({"moves": moves, "title": " + ".join(str(k) for k in key), "reference": ref, "sets": sets, "metric": label,
                    "group_name": gname, "rows": rows,
                    "detectable": float(lang_rows["half_width"].median()) if len(lang_rows) else None,
                    "significant": int(lang_rows["significant"].sum()), "tests": int(len(lang_rows)),
                    "svg": effects_svg(e, ["all", *gsl] if gsl else ["all", *langs],
                                       f"Δ{label} against '{ref}' ({' + '.join(map(str, key))})")})
    return out
