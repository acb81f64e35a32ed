"""The side-by-side table of a run that holds models qbench did not quantize (``sweep.external``, the peer
quantizers): per variant, who made it, its quality and fidelity, size, what calibrating it cost, its CPU
latency against FP32's, and what TensorRT made of it. Printed by ``qbench report RUN --markdown`` after the
leaderboard, only for such runs. Reads the leaderboard rows and the manifest; imports no other report module."""

from __future__ import annotations

SHORT = {"zero_point": "non-zero zero points", "int32": "INT32 bias DequantizeLinear",
         "integer_op": "ONNX Runtime integer ops", "act_per_channel": "per-channel activations",
         "type": "a Q/DQ type it does not take"}


def _maker(info: dict, manifest: dict) -> str:
    kind = info.get("kind")
    if kind == "qbench":
        return f"qbench {manifest.get('versions', {}).get('qbench', '')}".strip()
    if info.get("peer"):
        v = info.get("versions", {})
        tool = "NNCF " + v.get("nncf", "") if "nncf" in v else "ModelOpt " + v.get("nvidia-modelopt", "")
        return tool.strip()
    if kind == "external":
        p = info.get("producer") or {}
        p = next(iter(p.values())) if p and all(isinstance(v, dict) for v in p.values()) else p  # per graph
        made = " ".join(x for x in (p.get("producer_name"), p.get("producer_version")) if x)
        return f"external ({made or 'producer not recorded'}), sha256 {info.get('artifact_sha256', '')[:12]}"
    if info.get("calibrator") in ("ort_dynamic", "ort_static"):
        return f"ONNX Runtime {manifest.get('versions', {}).get('onnxruntime', '')}".strip()
    return "–"


def _cost(info: dict, manifest: dict) -> str:
    """Seconds (and peak MB where measured) that calibrating and quantizing this variant took."""
    if info.get("peer"):
        if "quantize_seconds" not in info:
            return ""
        cached = " (its cached run)" if info.get("peer_cache_hit") else ""
        return f"{info['quantize_seconds']:.0f} s, {info['peak_rss_mb'] / 1000:.1f} GB{cached}"
    if info.get("kind") == "qbench":
        st = manifest.get("statistics", {}).get(info.get("calibration_set") or "default", {})
        if st.get("cache_hit"):
            return "statistics from the cache"
        return f"{st['seconds']:.0f} s (one statistics pass, shared)" if "seconds" in st else ""
    return "–"


def _trt(info: dict) -> str:
    t = info.get("tensorrt") or {}
    if not t:
        return ""
    if t.get("status") != "ok":
        from qbench.quantize.trt_rules import WHY, explain_recorded

        why = explain_recorded(t.get("error", ""), t.get("why", ""))
        return "refused: " + next((SHORT[k] for k, w in WHY.items() if w in why and k in SHORT), "parser error")
    by: dict[str, int] = {}
    for g in (t.get("graphs") or {}).values():
        for k, n in g["summary"]["linear_nodes_by_dtype"].items():
            by[k] = by.get(k, 0) + n
    return " · ".join(f"{k} {n}" for k, n in sorted(by.items()))


def foreign_markdown(rows: list[dict], manifest: dict) -> list[str]:
    """Markdown lines (blank, title, table), or none when every variant is qbench's or a built-in baseline."""
    infos = manifest["variants"]
    if not any(i.get("kind") == "external" or i.get("peer") for i in infos.values()):
        return []
    base = next((r for r in rows if r["variant"] == "fp32"), None)
    batches = list(rows[0]["lat"]) if rows else []
    bleu = any("d_bleu" in r for r in rows)  # translation: ΔBLEU in place of Δ accuracy@1 and cosine
    head = ["variant", "made by", "ΔBLEU" if bleu else "Δ acc@1 (pts)", "chrF" if bleu else "cos vs FP32",
            "size MB", "calibration cost",
            *(f"p50 ÷ FP32, {b}" for b in batches), "TensorRT-RTX linear layers"]
    lines = ["", "Side by side (every variant calibrated on the same samples; p50 latency on ONNX Runtime CPU "
             "÷ FP32's, timed side by side):",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    f = lambda x, fmt: "" if x is None else format(x, fmt)  # noqa: E731
    for r in rows:
        info = infos[r["variant"]]
        ratios = []
        for b in batches:
            p, p0 = r["lat"][b][0], base["lat"][b][0] if base else None
            ratios.append(f"{p / p0:.2f}" if p is not None and p0 else "")
        q = ((r.get("d_bleu") or {}).get("delta"), r.get("chrf"), ".2f") if bleu else (r.get("delta"), r.get("cos"), ".4f")
        cells = [f"`{r['variant']}`", _maker(info, manifest), f(q[0], "+.2f"), f(q[1], q[2]),
                 f(r.get("size"), ".1f"), _cost(info, manifest), *ratios, _trt(info)]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return lines
