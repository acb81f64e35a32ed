"""report.html: one self-contained file rendered from results.parquet and manifest.json alone."""

from __future__ import annotations

import io
from pathlib import Path

QUALITY = "accuracy_at_1"


def _pareto_svg(df, batches: list[str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qbench.results import pareto_front

    ok = df[df.status == "ok"]
    fig, axes = plt.subplots(1, max(1, len(batches)), figsize=(5.2 * max(1, len(batches)), 4.0), squeeze=False)
    for ax, b in zip(axes[0], batches):
        lat = ok[(ok.metric == "latency_p50_ms") & (ok.slice == b)].set_index("variant").value
        acc = ok[(ok.metric == QUALITY) & (ok.slice == "all")].set_index("variant").value
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
        ax.set_ylabel("accuracy@1")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


def leaderboard(df, manifest: dict) -> list[dict]:
    """One dict per variant, in manifest order: the numbers the table shows."""
    ok = df[df.status == "ok"]
    val = {(r.variant, r.metric, r.slice): r.value for r in ok.itertuples()}
    base = val.get(("fp32", QUALITY, "all"))
    batches = sorted({s for s in ok.slice if s.startswith("batch=")}, key=lambda s: int(s.split("=")[1]))
    rows = []
    for vid, info in manifest["variants"].items():
        acc = val.get((vid, QUALITY, "all"))
        excluded = {s.split("=", 1)[1]: int(val[(vid, "nodes_excluded", s)])
                    for (v, m, s) in val if v == vid and m == "nodes_excluded"}
        rows.append({
            "variant": vid, "kind": info.get("kind", ""), "status": info.get("status", ""),
            "error": info.get("error", ""), "signature": info.get("signature", ""),
            "acc": acc, "delta": None if acc is None or base is None else (acc - base) * 100,
            "mrr": val.get((vid, "mrr", "all")), "cos": val.get((vid, "cosine_vs_fp32", "all")),
            "lat": {b: (val.get((vid, "latency_p50_ms", b)), val.get((vid, "latency_p99_ms", b))) for b in batches},
            "size": val.get((vid, "size_mb", "all")),
            "mm_q": val.get((vid, "nodes_quantized", "op=MatMul")), "mm_f": val.get((vid, "nodes_float", "op=MatMul")),
            "excluded": ", ".join(f"{op}: {n}" for op, n in sorted(excluded.items())),
            "trt": _trt_cell(info.get("tensorrt")),
        })
    return rows


def _trt_cell(entry: dict | None) -> str:
    """The TensorRT column: INT8 share of linear-layer FLOPs and GEMM datatypes, or why there is none."""
    if not entry:
        return ""
    if entry.get("status") != "ok":
        err = entry.get("error", "")
        return f"build failed: {err[:100]}…" if len(err) > 100 else f"build failed: {err}"
    sm = entry["summary"]
    dts = ", ".join(f"{k} {n}" for k, n in sorted(sm["gemm_layers_by_input_dtype"].items()))
    return f"{sm['int8_linear_flop_share'] * 100:.0f}% INT8 FLOPs; GEMMs {dts}; latency not run here"


def render(run_dir: str | Path) -> Path:
    import jinja2

    from qbench.io import atomic_write_text
    from qbench.results import load

    run_dir = Path(run_dir)
    df, manifest = load(run_dir)
    rows = leaderboard(df, manifest)
    batches = list(rows[0]["lat"]) if rows else []
    env = jinja2.Environment(loader=jinja2.PackageLoader("qbench", "templates"),
                             autoescape=jinja2.select_autoescape(["html"]))
    html = env.get_template("report.html.j2").render(
        m=manifest, rows=rows, batches=batches, plot=_pareto_svg(df, batches) if batches else "",
    )
    return atomic_write_text(run_dir / "report.html", html)


def markdown(run_dir: str | Path) -> str:
    """The leaderboard as a Markdown table, for READMEs and pull requests (numbers straight from the run)."""
    from qbench.results import load

    df, manifest = load(Path(run_dir))
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
    m = manifest
    v = m["versions"]
    lines.append("")
    lines.append(f"Run `{m['run_id']}`: {m['host']['cpu']}, {m['config']['backend']['threads']} threads, "
                 f"onnxruntime {v.get('onnxruntime')}, onnx {v.get('onnx')}, qbench {v.get('qbench')}; "
                 f"{m['data']['evaluation']['n']} evaluation pairs, {m['data']['calibration']['n']} calibration "
                 f"samples (seed {m['data']['calibration']['seed']}); latency inputs "
                 + ", ".join(f"{b} {i['shape']}" for b, i in m.get("latency_inputs", {}).items()) + ".")
    return "\n".join(lines)
