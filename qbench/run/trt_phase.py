"""The sweep's TensorRT phase: every variant's ONNX built as a strongly typed engine, its layer
precisions proven from the build log, and its latency measured where a supported GPU exists.

Builds run in a child process (qbench.backends.trt_build), so a crash, a hang or an out-of-memory
becomes this variant's failed row. A translation variant is two graphs, so two engines; their
figures carry ``graph=encoder`` / ``graph=decoder`` slices and an ``all`` slice that adds them up.
Where no supported GPU exists (every machine this was written on: TensorRT-RTX refuses SM90), the
latency row says ``not_run_here`` with the reason; no number is ever filled in.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

from qbench.config.errors import QbenchError, VariantFailed, first_line


def engine_key(artifact_sha256: str) -> str:
    """What names an artifact's engines in the cache: ``engines/<key>-<CC>-<int8 mode>`` (engine_dir_name).
    ``qbench cache --prune`` finds the engines a kept run needs by this key, from its manifest's sha256."""
    return artifact_sha256[:16]


def engine_dir_name(artifact_sha256: str, compute_capability: str, int8_mode: str) -> str:
    return f"{engine_key(artifact_sha256)}-{compute_capability}-{int8_mode}"


def dim_ranges(ctx) -> dict[str, tuple[int, int, int]]:
    """(min, opt, max) of each symbolic axis, from what the sweep will feed the engines.

    Batch: 1 up to the largest batch any phase uses; opt is the largest latency batch. Sequence: 1 up to
    the model's max_length; opt is the padded length of the largest latency batch (real inputs). The task
    adds its own axes (a decoder's steps and past K/V).
    """
    cfg = ctx.cfg
    lat = cfg.measure.latency.batch_sizes
    longest = cfg.model.max_length
    feeds = ctx.latency_feeds.get(max(lat)) if ctx.latency_feeds else None
    seq_opt = min(longest, int(feeds["input_ids"].shape[1])) if feeds is not None else longest // 2
    return ctx.task.dim_ranges(ctx, seq_opt)


def _graphs(ctx, artifact: Path, excluded) -> list[tuple[str, Path, list[str]]]:
    """(graph name, ONNX path, excluded node names) of every graph of one artifact."""
    graphs = ctx.task.graphs(Path(artifact))
    if list(graphs) == ["model"]:
        return [("model", graphs["model"], excluded if isinstance(excluded, list) else [])]
    ex = excluded if isinstance(excluded, dict) else {}
    return [(c, path, ex.get(c, [])) for c, path in graphs.items()]


def build_variant_engines(ctx, v, artifact: Path) -> tuple[list, dict]:
    """Build every graph of one variant; (metric tuples, manifest entry).

    Raises VariantFailed when a build fails or an exclusion did not hold in the engine.
    """
    from qbench.backends.tensorrt import TensorRTBackend, input_profiles
    from qbench.util.io import atomic_write_text
    from qbench.backends.layer_report import combine, parse_layers, summarize, to_records
    from qbench.quantize.qdq import load_model
    from qbench.util.io import safe_name as _safe

    tc = ctx.cfg.tensorrt
    be = TensorRTBackend(compute_capability=tc.compute_capability, build_timeout_s=tc.build_timeout_s)
    ranges = dim_ranges(ctx)
    vm = ctx.manifest["variants"][v.id]
    engines_dir = ctx.cache / "engines"
    timing = engines_dir / f"timing-{tc.compute_capability}.cache"
    metrics: list[tuple[str, str, float, str]] = []
    entry: dict = {"status": "ok", "profile": {k: list(r) for k, r in ranges.items()}, "graphs": {}}
    violations: list[str] = []
    implicit = tc.int8_mode == "implicit" and v.kind == "qbench"
    for graph, path, excluded in _graphs(ctx, Path(artifact), vm.get("excluded_nodes", [])):
        cache = None
        if implicit:  # TensorRT <= 10: the FP32 graph, with qbench's scales as the calibration cache
            path, excluded, cache = _implicit_inputs(ctx, v, graph)
        model = load_model(path)
        shapes = input_profiles(model, ranges)
        workdir = engines_dir / engine_dir_name(vm["artifact_sha256"], tc.compute_capability, tc.int8_mode) / graph
        warm = timing.is_file()
        try:
            engine, info, log_lines = be.build(path, workdir, shapes, timing_cache=timing, int8_cache=cache)
        except VariantFailed as e:
            raise VariantFailed(f"{graph}: {e}") from None
        info["timing_cache"] = "warm" if warm else "cold"
        layers = parse_layers(log_lines)
        # INT8 over FP16: the nodes it keeps in FP32 must run Float, like the fp16 baseline's.
        s = summarize(layers, model, excluded, keep_float=v.baseline == "fp16",
                      fp32_nodes=vm.get("fp32_nodes", []) if graph == "model" else [])
        rel = f"tensorrt/{_safe(v.id)}.{graph}.layers.json"
        atomic_write_text(ctx.run_dir / rel, json.dumps(to_records(layers), indent=1))
        entry["graphs"][graph] = {"build": info, "summary": s, "layers": rel, "engine": str(engine),
                                  "shapes": shapes}
        violations += [f"{graph}:{n}" for n in s["exclusion_violations"]]
        sl = "all" if graph == "model" else f"graph={graph}"
        metrics += _graph_metrics(sl, info, s)
    graphs = entry["graphs"].values()
    if len(graphs) > 1:  # an encoder and a decoder: the variant's 'all' slice adds them up
        c = combine([g["summary"] for g in graphs])
        metrics += [("engine_mb", "all", sum(g["build"]["engine_bytes"] for g in graphs) / 1e6, "MB"),
                    ("build_seconds", "all", sum(g["build"]["seconds"] for g in graphs), "s"),
                    ("int8_linear_flop_share", "all", c["int8_linear_flop_share"], "fraction")]
        metrics += [("linear_nodes", f"dtype={k}", n, "count") for k, n in sorted(c["linear_nodes_by_dtype"].items())]
    if violations:
        raise VariantFailed(f"exclusion did not hold in the engine: {', '.join(violations[:5])}")
    return metrics, entry


def _implicit_inputs(ctx, v, graph: str) -> tuple[Path, list[str], Path]:
    """(FP32 ONNX, no exclusions, calibration-cache file) for an implicit-INT8 build of one graph."""
    from qbench.calib import CalibrationTable
    from qbench.calib.trt_cache import save_trt_cache
    from qbench.util.io import safe_name as _safe

    vm = ctx.manifest["variants"][v.id]
    rel = vm["tables"][graph] if "tables" in vm else vm["table"]
    table = CalibrationTable.from_json((ctx.run_dir / rel).read_text())
    cache = save_trt_cache(table, ctx.run_dir / "tensorrt" / f"{_safe(v.id)}.{graph}.calib.cache")
    fp32 = ctx.fp32 / f"{graph}.onnx" if graph != "model" else ctx.fp32
    return fp32, [], cache


def _graph_metrics(sl: str, info: dict, s: dict) -> list[tuple[str, str, float, str]]:
    pre = "" if sl == "all" else f"{sl},"
    out = [("engine_mb", sl, info["engine_bytes"] / 1e6, "MB"), ("build_seconds", sl, info["seconds"], "s"),
           ("int8_linear_flop_share", sl, s["int8_linear_flop_share"], "fraction"),
           ("gemm_layers", sl, s["gemm_layers"], "count"), ("engine_layers", sl, s["layers"], "count"),
           ("reformat_layers", sl, s["reformat_layers"], "count"), ("cast_layers", sl, s["cast_layers"], "count"),
           ("excluded_nodes_held", sl, s["excluded_held"], "count")]
    out += [("linear_nodes", f"{pre}dtype={k}", n, "count") for k, n in sorted(s["linear_nodes_by_dtype"].items())]
    return out


def gpu_latency_rows(ctx, v, entry: dict) -> list[tuple[str, str, float, str]]:
    """Latency of the built engines on a supported GPU, as the task times them. Unverified: no such GPU where
    this was written."""
    return ctx.task.gpu_latency_rows(ctx, {g: Path(e["engine"]) for g, e in entry["graphs"].items()})


def parser_error_why(ctx, artifact: Path, error: str) -> str:
    """A failed build's parser message in words, read from the graph it names (qbench.quantize.trt_rules)."""
    from qbench.quantize.qdq import load_model
    from qbench.quantize.trt_rules import explain

    try:
        for graph, path in ctx.task.graphs(Path(artifact)).items():
            if error.startswith(f"{graph}:"):
                return explain(error, load_model(path))
    except Exception:  # noqa: BLE001 - the explanation is a courtesy; the failure is recorded either way
        return explain(error)
    return explain(error)


def run(ctx, variants: dict, artifacts: dict[str, Path], rows: list[dict], flush) -> None:
    """Build every finished variant's engines; append their rows; ``flush()`` after each variant."""
    from qbench.backends.trt_runtime import gpu_available
    from qbench.report.results import metric_rows
    from qbench.util.logs import log

    tc = ctx.cfg.tensorrt
    gpu, why = gpu_available()
    ctx.manifest["tensorrt"] = {"compute_capability": tc.compute_capability, "gpu": gpu, "gpu_reason": why}
    for vid, art in artifacts.items():
        v = variants[vid]
        desc = {**v.describe(), "backend": "tensorrt"}
        sig = ctx.manifest["variants"][vid]["signature"]
        log(f"tensorrt build ({tc.compute_capability}): {vid}")
        t0 = time.perf_counter()
        try:
            metrics, entry = build_variant_engines(ctx, v, art)
            rows += metric_rows(desc, sig, ctx.run_dir.name, metrics)
            if gpu:
                try:
                    rows += metric_rows(desc, sig, ctx.run_dir.name, gpu_latency_rows(ctx, v, entry))
                    entry["latency"] = "measured"
                except Exception as e:  # noqa: BLE001 - a runtime failure is this variant's, not the sweep's
                    entry["latency"] = f"failed: {first_line(e, None)}"
                    rows += metric_rows(desc, sig, ctx.run_dir.name, [("latency", "all", float("nan"), "")],
                                        status="failed")
            else:
                entry["latency"] = f"not_run_here: {why}"
                rows += metric_rows(desc, sig, ctx.run_dir.name, [("latency", "all", float("nan"), "")],
                                    status="not_run_here")
        except Exception as e:  # a failing build is this variant's failed row; the sweep goes on
            entry = {"status": "failed", "error": first_line(e, None)}
            # Its own name: `why` holds the no-GPU reason every later variant's latency row gives.
            parse_why = parser_error_why(ctx, art, entry["error"])
            if parse_why:
                entry["why"] = parse_why
            if not isinstance(e, QbenchError):  # a bug: keep its traceback
                entry["traceback"] = traceback.format_exc()
                traceback.print_exc()
            log(f"tensorrt: {vid} failed: {entry['error']}", warning=True)
            rows += metric_rows(desc, sig, ctx.run_dir.name, [("trt_build", "all", float("nan"), "")],
                                status="failed")
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        ctx.manifest["variants"][vid]["tensorrt"] = entry
        flush()
