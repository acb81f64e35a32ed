"""The report's sections for ``exclude: auto`` variants: the search's trace, its confirmations, and the per-unit
sensitivity chart (from sensitivity.parquet)."""

from __future__ import annotations

import io
import re
from pathlib import Path

from qbench.report.tables import GATE_METRICS, _gate, _gate_words, _md, _num, _values
from qbench.report.task import task_for


# ---------------------------------------------------------------- exclude: auto (qbench.run.search)

_UNIT_GRAPH = re.compile(r"^([A-Za-z_]\w*):(.*)$")  # "decoder:/decoder/layers.3/fc1" -> graph, path


def unit_labels(ids: list[str]) -> dict[str, str]:
    """Short, unique chart labels: within each graph the leading path segments all its units share are dropped,
    and so is a first segment that repeats the graph's name.

    '/model/encoder/layer.3/output' -> 'layer.3/output'; 'decoder:/decoder/layers.3/encoder_attn' ->
    'decoder: layers.3/encoder_attn'. The last segment always stays; on a collision the full ids are used.
    """
    split = {}
    for u in ids:
        m = _UNIT_GRAPH.match(u)
        split[u] = (m.group(1), m.group(2)) if m else ("", u)
    out = {}
    for graph in dict.fromkeys(g for g, _ in split.values()):
        members = [u for u, (g, _) in split.items() if g == graph]
        segs = {u: split[u][1].split("/") for u in members}
        n = 0  # a graph's only unit keeps its path: nothing to tell it apart from
        shortest = min(len(x) for x in segs.values())
        while len(members) > 1 and n < shortest - 1 and len({tuple(x[:n + 1]) for x in segs.values()}) == 1:
            n += 1
        for u in members:
            rest = segs[u][n:]
            if rest[0] == "" and len(rest) > 1:  # the leading '/' of a node path
                rest = rest[1:]
            if graph and rest[0] == graph and len(rest) > 1:  # 'decoder:/decoder/...': the graph says it
                rest = rest[1:]
            out[u] = (f"{graph}: " if graph else "") + "/".join(rest)
    return out if len(set(out.values())) == len(out) else {u: u for u in ids}


def _error_of(metric: str, value: float) -> float:
    """The search's error: KL as is; for SQNR, the relative MSE 10^(−SQNR/10) (what RetrievalScorer ranks by)."""
    return float(value) if metric == "kl" else 10 ** (-float(value) / 10)


def sensitivity(df_sens, variant: str, ranking: list[str]) -> dict:
    """Per unit, in ranking order: the benefit of keeping it alone float, error(all_int8) − error(exclude_only),
    per language too (KL only), and the error with it alone quantized (quantize_only).

    The error is KL "all" where the run has KL (translation), else the relative MSE from SQNR (retrieval).
    Units in the parquet but not in the ranking follow it, by name. Missing values are None.
    """
    d = df_sens[df_sens.variant == variant]
    metric = "kl" if (d.metric == "kl").any() else "sqnr_db"
    d = d[d.metric == metric]
    err = {(r.mode, "" if r.mode == "all_int8" else r.unit, r.lang): _error_of(metric, r.value)
           for r in d.itertuples(index=False)}
    base = {lang: v for (mode, _, lang), v in err.items() if mode == "all_int8"}
    langs = sorted(lang for lang in base if lang != "all")
    names = list(ranking) + sorted({u for (mode, u, _) in err if mode != "all_int8"} - set(ranking))
    labels = unit_labels(names)

    def gain(u: str, lang: str):
        e = err.get(("exclude_only", u, lang))
        return None if e is None or lang not in base else base[lang] - e

    rows = [{"unit": u, "label": labels[u], "benefit": gain(u, "all"),
             "quantize_only": err.get(("quantize_only", u, "all")),
             "langs": {lang: g for lang in langs if (g := gain(u, lang)) is not None}} for u in names]
    return {"metric": metric, "all_int8": base.get("all"), "langs": langs, "rows": rows,
            "error_label": "KL(FP32 ‖ INT8) per token, nats" if metric == "kl"
            else "relative MSE of the outputs, 10^(−SQNR/10)"}


def sensitivity_svg(df_sens, variant: str, ranking: list[str], chosen_k: int = 0) -> str:
    """Units top to bottom in ranking order. Left: the benefit of excluding the unit alone (bar; red for the
    units the chosen candidate excludes) with one dot per language; right: the error with the unit alone INT8."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, NullFormatter

    s = sensitivity(df_sens, variant, ranking)
    rows = s["rows"]
    if not rows:
        return ""
    n = len(rows)
    y = list(range(n))
    nan = float("nan")
    fs = 7 if n <= 40 else 5.5
    # svg.fonttype none: labels stay <text> (selectable, searchable); no mathtext, so '$' in a name is literal.
    with plt.rc_context({"svg.fonttype": "none", "text.parse_math": False}):
        if any(r["quantize_only"] is not None for r in rows):
            fig, (ax, axq) = plt.subplots(1, 2, sharey=True, figsize=(10.5, 1.5 + 0.2 * n),
                                          gridspec_kw={"width_ratios": [2.3, 1]})
        else:  # search.quantize_only off: nothing to draw on the right
            fig, ax = plt.subplots(figsize=(7.5, 1.5 + 0.2 * n))
            axq = None
        benefit = [nan if r["benefit"] is None else r["benefit"] for r in rows]
        colours = ["#d62728" if i < chosen_k else "#1f77b4" for i in range(n)]
        ax.barh(y, benefit, height=0.62, color=colours, zorder=2)
        multi = len(s["langs"]) > 1  # with one language its dot would sit on the bar's end
        lx = [v for r in rows for v in r["langs"].values()] if multi else []
        ly = [i for i, r in enumerate(rows) for _ in r["langs"]] if multi else []
        if lx:
            ax.scatter(lx, ly, s=7, c="#1d2329", alpha=0.55, linewidths=0, zorder=3)
        ax.axvline(0, c="#68707a", lw=0.8)
        ax.set_yticks(y, [r["label"] for r in rows], fontsize=fs)
        ax.set_ylim(n - 0.5, -0.5)  # most sensitive on top
        ax.set_xlabel(f"error reduction when only this unit stays float\n{s['error_label']}", fontsize=8)
        base = s["all_int8"]
        ax.set_title("excluding one unit" + ("" if base is None else f" (all-INT8 error {base:.4g})"), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=7)
        handles = ([Patch(color="#d62728", label=f"kept float by the chosen candidate (top {chosen_k})")]
                   if chosen_k else [])
        handles.append(Patch(color="#1f77b4", label="quantized (INT8) in the chosen candidate"))
        if 0 < chosen_k < n:
            for a in (ax, axq) if axq is not None else (ax,):
                a.axhline(chosen_k - 0.5, ls="--", c="#d62728", lw=0.8)
        if lx:
            handles.append(Line2D([], [], ls="", marker="o", ms=3, c="#1d2329", alpha=0.55,
                                  label=f"per language ({len(s['langs'])})"))
        ax.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.9)

        if axq is not None:
            q = [nan if r["quantize_only"] is None else r["quantize_only"] for r in rows]
            pos = [v for v in q if v == v and v > 0]
            axq.hlines(y, 0 if not pos else min(pos), q, color="#ff7f0e", lw=1, alpha=0.6)
            axq.scatter(q, y, marker="D", s=14, c="#ff7f0e", zorder=3, label="quantize_only")
            if pos and len(pos) == sum(v == v for v in q) and max(pos) / min(pos) > 50:
                axq.set_xscale("log")
                # plain tick text: the default log labels are mathtext, which is off here
                axq.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                axq.xaxis.set_minor_formatter(NullFormatter())
            axq.set_title("quantizing only this unit", fontsize=9)
            axq.set_xlabel(f"error with this unit alone INT8\n{s['error_label']}", fontsize=8)
            axq.grid(axis="x", alpha=0.3)
            axq.tick_params(axis="x", labelsize=7)
            axq.tick_params(axis="y", left=False)
        fig.tight_layout()
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
        plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


def svg_labels(svg: str) -> list[str]:
    """The <text> strings of an SVG made by sensitivity_svg, in document order (unescaped)."""
    import html as _html

    return [_html.unescape(t) for t in re.findall(r"<text\b[^>]*>([^<]*)</text>", svg)]


def _batch_name(b) -> str:
    return "" if b is None else str(b) if str(b).startswith("batch=") else f"batch={b}"


def _search_gate_text(g: dict) -> str:
    if not g:
        return "no gate in the manifest"
    from qbench.report.decision import SUMMED

    what, where = _gate_words(g)
    if g.get("metric") in SUMMED:  # lower is better: the budget is a rise in percent
        return f"{what} may rise by at most {g.get('max_drop')}% against FP32 {where}"
    return f"{what} may drop by at most {g.get('max_drop')} points against FP32 {where}"


def search_sections(df, manifest: dict, df_sens=None) -> list[dict]:
    """One dict per ``exclude: auto`` variant with a ``search`` record: summary, trace rows, sensitivity SVG."""
    val = _values(df)
    gate = (manifest.get("config") or {}).get("gate") or manifest.get("gate") or {}
    metric = gate.get("metric", "bleu")
    out = []
    for vid, info in manifest["variants"].items():
        s = info.get("search")
        if not s:
            continue
        chosen = s.get("chosen_k")
        trace = []
        for i, t in enumerate(s.get("trace") or []):
            where = t.get("worst")
            trace.append({
                "step": i + 1, "k": t.get("k"), "nodes": t.get("excluded_linear_nodes"),
                "quality": _num(t.get("quality_all")), "drop": _num(t.get("worst_drop")),
                "where": "" if where is None else "overall" if where == "all" else where,
                "pass": bool(t.get("pass")), "error": "" if t.get("error") is None else f"{t['error']:.4g}",
                "hi": _num(t.get("projected_hi")),
                "seconds": _num(t.get("seconds")), "chosen": t.get("k") == chosen,
                "units": ", ".join(t.get("excluded_units") or []),
            })
        row = next((t for t in trace if t["chosen"]), None)
        lat = {int(k.split("=", 1)[1]): v for k, v in (s.get("latency_p50_ms") or {}).items() if k.startswith("k=")}
        ss = s.get("scoring_subset") or {}
        base = s.get("base_quality") or {}
        has_sens = df_sens is not None and (df_sens.variant == vid).any()
        full = _gate(val, vid, metric)
        out.append({
            "variant": vid, "gate_text": _search_gate_text(gate), "metric_label": GATE_METRICS.get(metric, metric),
            "split": ss.get("split"), "n": ss.get("n"), "seed": ss.get("seed"),
            "ids_sha": (ss.get("ids_sha256") or "")[:16],
            "base_all": _num(base.get("all")), "base_langs": len([k for k in base if k != "all"]),
            "units": s.get("units"), "granularity": s.get("granularity"), "evaluations": s.get("evaluations"),
            "models_scored": s.get("models_scored"), "seconds": _num(s.get("seconds"), 1),
            "cpu_seconds": _num(s.get("cpu_seconds"), 1), "phases": s.get("phases_s") or {},
            "rank_n": (s.get("ranking_subset") or {}).get("n") if s.get("ranking") else None,  # None: nothing ranked
            "screen": s.get("screen"),
            "rank_by": (s.get("ranking_subset") or {}).get("rank_by"),
            "chosen_k": chosen, "chosen_nodes": None if row is None else row["nodes"], "chosen_row": row,
            "chosen_units": s.get("chosen_units") or [], "passing": s.get("passing") or [],
            "smallest": s.get("smallest_passing"), "prefer": s.get("prefer"),
            "by_latency": s.get("prefer") == "latency" and bool(lat),
            "latency": [{"k": k, "p50": _num(v), "chosen": k == chosen} for k, v in sorted(lat.items())],
            "latency_batch": _batch_name((s.get("latency_p50_ms") or {}).get("batch")),
            "error_label": task_for(manifest).fidelity_label,
            "trace": trace, "n_pass": sum(t["pass"] for t in trace), "n_fail": sum(not t["pass"] for t in trace),
            # runs before search.screen screened on the point estimate and recorded no projected bound
            "projected": any(t.get("projected_hi") is not None for t in s.get("trace") or []),
            "confirm": full,
            "confirmations": [{"k": c["k"], "pass": c["pass"], "drop": _num(c["worst_drop"]), "where": c["worst"],
                               "decision": c.get("decision"), "seconds": _num(c.get("seconds"))}
                              for c in s.get("confirmations") or []],
            "svg": sensitivity_svg(df_sens, vid, s.get("ranking") or [], chosen or 0) if has_sens else "",
            "has_sens_file": df_sens is not None,
        })
    return out


def _load_sensitivity(run_dir: Path):
    import pandas as pd

    p = run_dir / "sensitivity.parquet"
    return pd.read_parquet(p) if p.exists() else None


def _markdown_search(sections: list[dict]) -> list[str]:
    """The search trace of each auto variant, as Markdown tables."""
    lines = []
    for s in sections:
        plural = "" if s["evaluations"] == 1 else "s"
        where = ("on the evaluation set itself, no subset screen" if s.get("screen") == "none"
                 else f"on {s['n']} samples of {s['split']}")
        lines += ["", f"Automatic exclusion search: `{s['variant']}` (chosen k = {s['chosen_k']}, "
                      f"{s['evaluations']} evaluation{plural} {where})", "",
                  "| step | k | excluded linear nodes | quality | worst drop | "
                  + ("projected bound | screen | s |" if s["projected"] else "gate | s |"),
                  "|---|---|---|---|---|---|---|" + ("---|" if s["projected"] else "")]
        for t in s["trace"]:
            hi = f"{t['hi']} | " if s["projected"] else ""
            lines.append(f"| {t['step']} | {'**' + str(t['k']) + '** (chosen)' if t['chosen'] else t['k']} | "
                         f"{t['nodes']} | {t['quality']} | {t['drop']} {_md(t['where'])} | {hi}"
                         f"{'PASS' if t['pass'] else 'FAIL'} | {t['seconds']} |")
        if s["projected"]:
            lines += ["", "Screen: the upper bound of the drop the evaluation set's decision is projected to show "
                          "(the subset's bound, narrowed by sqrt(n subset / n evaluation)) must lie below the budget."]
        if s["phases"]:  # runs made before the search recorded its cost have no breakdown
            lines += ["", cost_line(s)]
    return lines


_PHASE_WORDS = {"fp32_reference": "FP32 reference", "ranking": "ranking", "subset_gate": "subset gate",
                "latency": "latency order", "confirmation": "confirmation"}


def cost_line(s: dict) -> str:
    """One sentence: the search's wall and CPU time, by phase, models scored and what the confirmations showed."""
    ph = ", ".join(f"{_PHASE_WORDS.get(k, k)} {v:.1f}" for k, v in s["phases"].items())
    rank = "" if not s.get("rank_n") else f"; ranking on {s['rank_n']} samples"
    rank += " by each unit's best language" if rank and s.get("rank_by") == "worst_language" else ""
    conf = "; ".join(f"k = {c['k']}: {c.get('decision') or ('PASS' if c['pass'] else 'FAIL')}"
                     for c in s["confirmations"])
    return (f"Search cost: {s['seconds']} s wall, {s['cpu_seconds']} s CPU, {s['models_scored']} models scored "
            f"(s by phase: {ph}{rank}). Confirmed on the evaluation set: {conf or 'none'}.")

