"""report.html: one self-contained file rendered from results.parquet and manifest.json alone.

Two tasks share the page: retrieval (accuracy@1) and translation (BLEU/chrF per language, paired-bootstrap
deltas against FP32, a per-language drop gate). ``manifest["config"]["task"]`` picks one; retrieval is the
default. Every number is formatted here, in Python, so the HTML and the Markdown show the same strings.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

QUALITY = "accuracy_at_1"  # the retrieval quality metric
BASELINE = "fp32"
TASK_QUALITY = {"retrieval": (QUALITY, "accuracy@1"), "translation": ("bleu", "BLEU (macro mean over languages)")}
MT_METRICS = {"bleu": "BLEU", "chrf": "chrF"}


def task_of(manifest: dict) -> str:
    """The run's task: config.task, else a top-level task, else retrieval (runs from before tasks existed)."""
    return (manifest.get("config") or {}).get("task") or manifest.get("task") or "retrieval"


def _values(df) -> dict:
    """{(variant, metric, slice): value} of the ok rows."""
    ok = df[df.status == "ok"]
    return {(r.variant, r.metric, r.slice): r.value for r in ok.itertuples()}


def _batches(val: dict) -> list[str]:
    return sorted({s for (_, _, s) in val if s.startswith("batch=")}, key=lambda s: int(s.split("=")[1]))


def _pareto_svg(df, batches: list[str], metric: str = QUALITY, label: str = "accuracy@1") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qbench.results import pareto_front

    ok = df[df.status == "ok"]
    fig, axes = plt.subplots(1, max(1, len(batches)), figsize=(5.2 * max(1, len(batches)), 4.0), squeeze=False)
    for ax, b in zip(axes[0], batches):
        lat = ok[(ok.metric == "latency_p50_ms") & (ok.slice == b)].set_index("variant").value
        acc = ok[(ok.metric == metric) & (ok.slice == "all")].set_index("variant").value
        names = [n for n in lat.index if n in acc.index]
        pts = [(lat[n], acc[n]) for n in names]
        front = set(pareto_front(pts))
        for i, (n, (x, y)) in enumerate(zip(names, pts)):
            ax.scatter([x], [y], s=46 if i in front else 22, c="#d62728" if i in front else "#1f77b4", zorder=3)
            ax.annotate(n if len(n) < 28 else n[:26] + "…", (x, y), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
        fr = sorted(pts[i] for i in front)
        if fr:
            ax.plot([p[0] for p in fr], [p[1] for p in fr], "--", c="#d62728", lw=1)
        ax.set_xlabel(f"p50 latency (ms), {b}")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


def _common(vid: str, info: dict, val: dict, batches: list[str]) -> dict:
    """The columns both tasks show: identity, status, latency, size, quantized nodes, TensorRT."""
    excluded = {s.split("=", 1)[1]: int(val[(vid, "nodes_excluded", s)])
                for (v, m, s) in val if v == vid and m == "nodes_excluded"}
    return {
        "variant": vid, "kind": info.get("kind", ""), "status": info.get("status", ""),
        "error": info.get("error", ""), "signature": info.get("signature", ""),
        "lat": {b: (val.get((vid, "latency_p50_ms", b)), val.get((vid, "latency_p99_ms", b))) for b in batches},
        "size": val.get((vid, "size_mb", "all")),
        "mm_q": val.get((vid, "nodes_quantized", "op=MatMul")), "mm_f": val.get((vid, "nodes_float", "op=MatMul")),
        "excluded": ", ".join(f"{op}: {n}" for op, n in sorted(excluded.items())),
        "trt": _trt_cell(info.get("tensorrt")),
    }


def leaderboard(df, manifest: dict) -> list[dict]:
    """Retrieval: one dict per variant, in manifest order: the numbers the table shows."""
    val = _values(df)
    base = val.get((BASELINE, QUALITY, "all"))
    batches = _batches(val)
    rows = []
    for vid, info in manifest["variants"].items():
        acc = val.get((vid, QUALITY, "all"))
        rows.append({
            **_common(vid, info, val, batches),
            "acc": acc, "delta": None if acc is None or base is None else (acc - base) * 100,
            "mrr": val.get((vid, "mrr", "all")), "cos": val.get((vid, "cosine_vs_fp32", "all")),
        })
    return rows


def _trt_cell(entry: dict | None) -> str:
    """The TensorRT column: INT8 share of linear-layer FLOPs and linear nodes by datatype, or why there is none."""
    if not entry:
        return ""
    if entry.get("status") != "ok":
        return "build failed (see the TensorRT table)"
    graphs = entry["graphs"]
    dts: dict[str, int] = {}
    i8 = tot = 0
    for g in graphs.values():
        i8 += g["summary"]["int8_linear_flops"]
        tot += g["summary"]["linear_flops"]
        for k, n in g["summary"]["linear_nodes_by_dtype"].items():
            dts[k] = dts.get(k, 0) + n
    return f"{(i8 / tot if tot else 0) * 100:.0f}% INT8 · {' '.join(f'{k} {n}' for k, n in sorted(dts.items()))}"


# What a failed TensorRT build usually means, for the reviewer who was not at the terminal.
_TRT_HINTS = [
    ("zero point", "TensorRT takes only symmetric INT8 Q/DQ (zero point 0); u8s8 quantizes activations as "
                   "asymmetric UINT8. Use the s8s8 flavour for TensorRT."),
    ("bias_DequantizeLinear", "ONNX Runtime's quantize_static writes INT32 DequantizeLinear nodes (biases), which TensorRT's "
              "ONNX parser rejects: ORT's QDQ output is not a TensorRT artifact as is."),
    ("timed out", "The build ran past tensorrt.build_timeout_s."),
    ("exclusion did not hold", "An excluded node runs in INT8 in the engine: the ONNX still quantizes it, "
                               "or TensorRT fused it with a quantized neighbour."),
]


_DYNAMIC_HINT = ("ONNX Runtime's quantize_dynamic quantizes asymmetrically (UINT8, non-zero zero points) and "
                 "emits DynamicQuantizeLinear / MatMulInteger: CPU-side forms TensorRT does not take.")


def trt_hint(error: str, variant: str = "") -> str:
    if variant == "ort_dynamic":
        return _DYNAMIC_HINT
    return next((h for k, h in _TRT_HINTS if k.lower() in error.lower()), "")


def trt_tables(manifest: dict) -> list[dict]:
    """Per variant and graph: what the engine runs, from the build log (see qbench.layer_report)."""
    out = []
    for vid, info in manifest["variants"].items():
        e = info.get("tensorrt")
        if not e:
            continue
        if e.get("status") != "ok":
            out.append({"variant": vid, "graph": "", "error": e.get("error", ""), "hint": trt_hint(e.get("error", ""), vid)})
            continue
        for graph, g in e["graphs"].items():
            s = g["summary"]
            out.append({
                "variant": vid, "graph": graph, "error": "", "hint": "",
                "engine_mb": g["build"]["engine_bytes"] / 1e6, "build_s": g["build"]["seconds"],
                "cache": g["build"].get("timing_cache", ""),
                "share": s["int8_linear_flop_share"] * 100,
                "dtypes": ", ".join(f"{k} {n}" for k, n in sorted(s["linear_nodes_by_dtype"].items())),
                "seen": f"{s['linear_nodes_seen']}/{s['linear_nodes']}",
                "held": s["excluded_held"], "unseen": s["excluded_unseen"],
                "layers": s["layers"], "reformat": s["reformat_layers"], "cast": s["cast_layers"],
                "latency": e.get("latency", ""), "log": g["layers"],
            })
    return out


# ---------------------------------------------------------------- translation: formatting

def _num(x, nd: int = 2) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def signed(x, nd: int = 2) -> str:
    """'+0.31', '−0.42' (a real minus sign), '0.00' for anything that rounds to zero; '' for no value."""
    if x is None or math.isnan(x):
        return ""
    s = f"{x:+.{nd}f}"
    return f"{0:.{nd}f}" if float(s) == 0 else s.replace("-", "\u2212")


def pvalue(p) -> str:
    return "" if p is None or math.isnan(p) else "<0.001" if p < 0.001 else f"{p:.3f}"


def _delta(val: dict, vid: str, metric: str, sl: str = "all") -> dict | None:
    """Paired-bootstrap delta vs FP32 of one metric and slice, with its interval, p and formatted text."""
    d = val.get((vid, f"delta_{metric}", sl))
    if d is None:
        return None
    lo, hi, p = (val.get((vid, f"delta_{metric}_{k}", sl)) for k in ("lo", "hi", "p"))
    has_ci = lo is not None and hi is not None
    return {"delta": d, "lo": lo, "hi": hi, "p": p, "sig": has_ci and (lo > 0 or hi < 0),
            "text": signed(d), "ci": f"{signed(d)} [{signed(lo)}, {signed(hi)}]" if has_ci else signed(d)}


def _gate(val: dict, vid: str, metric: str = "bleu") -> dict | None:
    """Gate verdict and the worst language: {'pass': bool|None, 'lang': 'de', 'drop': 1.52, 'worst': text}.

    ``worst_lang_drop`` is sliced by its language, or 'all' when the gate looks at the macro mean only.
    """
    g = val.get((vid, "gate", "all"))
    worst = [(s.removeprefix("lang="), v) for (v_, m, s), v in val.items() if v_ == vid and m == "worst_lang_drop"]
    if g is None and not worst:
        return None
    lang, drop = max(worst, key=lambda t: t[1]) if worst else (None, None)
    where = "macro mean" if lang == "all" else f"worst {lang}"
    label = MT_METRICS.get(metric, metric)
    return {"pass": None if g is None else g >= 0.5, "lang": lang, "drop": drop,
            "worst": "" if lang is None else f"{where}: {label} drop {_num(drop)}"}


def _node_counts(val: dict, vid: str) -> dict:
    """MatMul/Gemm nodes int8 and float, summed over slices such as 'graph=encoder,op=MatMul'."""
    q = [v for (v_, m, _), v in val.items() if v_ == vid and m == "nodes_quantized"]
    f = [v for (v_, m, _), v in val.items() if v_ == vid and m == "nodes_float"]
    return {"mm_q": sum(q) if q else None, "mm_f": sum(f)}


def translation_leaderboard(df, manifest: dict) -> list[dict]:
    """Translation: one dict per variant, in manifest order (BLEU, chrF, deltas with CIs, exact match, gate)."""
    val = _values(df)
    batches = _batches(val)
    gate_metric = (manifest.get("gate") or {}).get("metric", "bleu")
    rows = []
    for vid, info in manifest["variants"].items():
        exact = val.get((vid, "exact_match_vs_fp32", "all"))
        rows.append({
            **_common(vid, info, val, batches), **_node_counts(val, vid),
            "bleu": val.get((vid, "bleu", "all")), "chrf": val.get((vid, "chrf", "all")),
            "d_bleu": _delta(val, vid, "bleu"), "d_chrf": _delta(val, vid, "chrf"),
            "exact": None if exact is None else f"{exact * 100:.1f}%", "gate": _gate(val, vid, gate_metric),
        })
    return rows


# ---------------------------------------------------------------- translation: language x variant heatmaps

def languages(val: dict) -> list[str]:
    """Language codes of the run, best FP32 BLEU first (code order where FP32 has none)."""
    langs = {s.split("=", 1)[1] for (_, m, s) in val
             if s.startswith("lang=") and m in ("bleu", "chrf", "delta_bleu", "delta_chrf")}
    return sorted(langs, key=lambda c: (-val.get((BASELINE, "bleu", f"lang={c}"), -math.inf), c))


def _scale(deltas: list[float]) -> float:
    """Where the colour saturates: the 95th percentile of |delta|, at least 1 point, rounded up to 0.5."""
    if not deltas:
        return 1.0
    a = sorted(abs(d) for d in deltas)
    return max(1.0, math.ceil(a[min(len(a) - 1, int(0.95 * len(a)))] * 2) / 2)


def _colour(d: float, scale: float) -> tuple[str, str]:
    """Diverging background (red for drops, green for gains, white at 0) and a readable text colour."""
    t = min(1.0, abs(d) / scale)
    end = (215, 48, 39) if d < 0 else (26, 152, 80)
    rgb = [round(255 + t * (e - 255)) for e in end]
    return "#%02x%02x%02x" % tuple(rgb), "#ffffff" if t > 0.6 else "#1d2329"


def _cell(val: dict, vid: str, metric: str, sl: str, scale: float) -> dict:
    dl = _delta(val, vid, metric, sl)
    if dl is None or math.isnan(dl["delta"]):
        return {"text": "", "sig": False, "bg": "#f4f6f8", "fg": "#68707a", "title": f"{vid}, {sl}: no result"}
    bg, fg = _colour(dl["delta"], scale)
    base, new = val.get((BASELINE, metric, sl)), val.get((vid, metric, sl))
    title = f"{sl.removeprefix('lang=')} · {vid}: Δ{MT_METRICS[metric]} {dl['ci']}, p {pvalue(dl['p'])}"
    if base is not None and new is not None:
        title += f"; FP32 {_num(base)} → {_num(new)}"
    return {"text": dl["text"], "sig": dl["sig"], "bg": bg, "fg": fg, "title": title}


def heatmap(val: dict, metric: str, variants: list[str], langs: list[str]) -> dict:
    """Rows: the macro mean ('all'), then one per language; columns: FP32's score, then one delta per variant."""
    deltas = [v for (vid, m, s), v in val.items() if m == f"delta_{metric}" and vid in variants and s != "all"]
    scale = _scale(deltas)
    rows = []
    for sl in ["all"] + [f"lang={c}" for c in langs]:
        rows.append({"lang": "all (macro)" if sl == "all" else sl.split("=", 1)[1], "macro": sl == "all",
                     "base": _num(val.get((BASELINE, metric, sl))),
                     "cells": [_cell(val, vid, metric, sl, scale) for vid in variants]})
    legend = [(signed(x * scale, 1), *_colour(x * scale, scale)) for x in (-1, -0.5, 0, 0.5, 1)]
    return {"metric": metric, "label": MT_METRICS[metric], "cols": variants, "rows": rows,
            "scale": _num(scale, 1), "legend": legend}


def translation_context(df, manifest: dict) -> dict:
    """What the translation sections of the template need, beyond the leaderboard."""
    val = _values(df)
    langs = languages(val)
    infos = manifest["variants"]
    cols = [v for v, i in infos.items() if v != BASELINE and i.get("status") == "ok"
            and any((v, m, "all") in val for m in ("delta_bleu", "delta_chrf"))]
    return {"langs": langs, "gate_text": _gate_text(manifest.get("gate")),
            "heatmaps": [heatmap(val, m, cols, langs) for m in MT_METRICS] if cols else [],
            "not_shown": [v for v, i in infos.items() if v != BASELINE and v not in cols]}


def _gate_text(g: dict | None) -> str:
    if not g:
        return ""
    what = MT_METRICS.get(g.get("metric", "bleu"), g.get("metric", "bleu"))
    where = "in any language" if g.get("per", "lang") == "lang" else "overall"
    return f"a variant fails when its {what} drops by more than {g.get('max_drop')} against FP32 {where}"


# ---------------------------------------------------------------- outputs

def _env():
    import jinja2

    # autoescape=True: select_autoescape(["html"]) looks at the template name's last suffix, and
    # "report.html.j2" ends in .j2, so it would leave every string (variant ids, errors) unescaped.
    env = jinja2.Environment(loader=jinja2.PackageLoader("qbench", "templates"), autoescape=True)
    env.filters.update(signed=signed, pvalue=pvalue, num=_num)
    return env


def render(run_dir: str | Path) -> Path:
    from qbench.io import atomic_write_text
    from qbench.results import load

    run_dir = Path(run_dir)
    df, manifest = load(run_dir)
    task = task_of(manifest)
    metric, label = TASK_QUALITY.get(task, TASK_QUALITY["retrieval"])
    rows = translation_leaderboard(df, manifest) if task == "translation" else leaderboard(df, manifest)
    batches = list(rows[0]["lat"]) if rows else []
    mt = translation_context(df, manifest) if task == "translation" else {}
    html = _env().get_template("report.html.j2").render(
        m=manifest, rows=rows, batches=batches, task=task, mt=mt, trt=trt_tables(manifest),
        plot=_pareto_svg(df, batches, metric, label) if batches else "",
    )
    return atomic_write_text(run_dir / "report.html", html)


def markdown(run_dir: str | Path) -> str:
    """The leaderboard as a Markdown table, for READMEs and pull requests (numbers straight from the run)."""
    from qbench.results import load

    df, manifest = load(Path(run_dir))
    if task_of(manifest) == "translation":
        return _markdown_translation(translation_leaderboard(df, manifest), manifest)
    rows = leaderboard(df, manifest)
    batches = list(rows[0]["lat"]) if rows else []
    head = ["variant", "acc@1", "Δ vs FP32 (pts)", "MRR", "cos vs FP32"]
    trt = any(r["trt"] for r in rows)
    head += [f"p50 / p99 ms, {b}" for b in batches] + ["size MB", "MatMul int8/float"]
    head += ["TensorRT engine (build-only)"] if trt else []
    head += ["status"]
    f = lambda x, fmt: "" if x is None else format(x, fmt)  # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"`{r['variant']}`", f(r["acc"], ".4f"), f(r["delta"], "+.2f"), f(r["mrr"], ".4f"), f(r["cos"], ".4f")]
        cells += [f"{f(r['lat'][b][0], '.2f')} / {f(r['lat'][b][1], '.2f')}" for b in batches]
        mm = "" if r["mm_q"] is None else f"{int(r['mm_q'])}/{int(r['mm_f'])}"
        cells += [f(r["size"], ".1f"), mm] + ([r["trt"].replace("|", "/")] if trt else [])
        cells += [r["status"] + (f": {r['error']}" if r["error"] else "")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", _run_line(manifest, "evaluation pairs")]
    return "\n".join(lines)


def _md(s: str) -> str:
    """A string made safe for one Markdown table cell (an error's '<tag>' would vanish as HTML)."""
    return s.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def _markdown_translation(rows: list[dict], m: dict) -> str:
    batches = list(rows[0]["lat"]) if rows else []
    head = ["variant", "BLEU", "ΔBLEU [95% CI]", "chrF", "worst-language drop", "gate"]
    head += [f"p50 ms, {b}" for b in batches] + ["status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        g = r["gate"] or {}
        gate = "" if g.get("pass") is None else "PASS" if g["pass"] else "FAIL"
        worst = "" if g.get("lang") is None else f"{'macro' if g['lang'] == 'all' else g['lang']} {_num(g['drop'])}"
        cells = [f"`{r['variant']}`", _num(r["bleu"]), (r["d_bleu"] or {}).get("ci", ""), _num(r["chrf"]), worst, gate]
        cells += [_num(r["lat"][b][0]) for b in batches]
        cells += [_md(r["status"] + (f": {r['error']}" if r["error"] else ""))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", _run_line(m, "evaluation sentences")]
    if m.get("gate"):
        lines[-1] += f" Gate: {_gate_text(m['gate'])}."
    return "\n".join(lines)


def _run_line(m: dict, unit: str) -> str:
    """The provenance sentence under a Markdown table."""
    v, d = m.get("versions", {}), m.get("data", {})
    cal = d.get("calibration") or {}
    threads = (m.get("config", {}).get("backend") or {}).get("threads")
    return (f"Run `{m['run_id']}`: {m.get('host', {}).get('cpu')}, {threads} threads, "
            f"onnxruntime {v.get('onnxruntime')}, onnx {v.get('onnx')}, qbench {v.get('qbench')}; "
            f"{d.get('evaluation', {}).get('n')} {unit}, {cal.get('n')} calibration "
            f"samples (seed {cal.get('seed')}); latency inputs "
            + ", ".join(f"{b} {i['shape']}" for b, i in m.get("latency_inputs", {}).items()) + ".")
