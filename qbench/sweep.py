"""The sweep runner: collect once, derive every variant, measure everything.

Order: export (cached) -> data -> calibration sample -> statistics (cached) -> per variant:
table -> QDQ (cached) -> session -> quality + latency -> rows. A failing variant becomes a failed
row and the sweep goes on; results and manifest are rewritten atomically after each variant.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from qbench import __version__
from qbench.config import SweepConfig, build_plugin
from qbench.errors import QbenchError
from qbench.variants import Variant, expand

QDQ_VERSION = 1


def log(msg: str) -> None:
    print(f"[qbench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Context:
    cfg: SweepConfig
    run_dir: Path
    cache: Path
    fp32: Path = Path()
    tokenizer: object = None
    calib_sets: dict = field(default_factory=dict)   # set name -> list[Sample]
    evalset: list = field(default_factory=list)
    manifest: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)        # set name -> {tensor: TensorStats}
    tables: dict = field(default_factory=dict)
    fp32_emb: np.ndarray | None = None
    latency_feeds: dict = field(default_factory=dict)
    fp32_quality: float | None = None                 # retrieval: FP32's accuracy@1, for the gate
    spec: object = None                               # translation: the Seq2SeqExport
    fp32_stats: dict | None = None                    # translation: FP32's per-sample metric statistics
    fp32_hyps: list = field(default_factory=list)
    sample_frames: dict = field(default_factory=dict)  # translation: variant -> samples.parquet rows
    search_sensitivity: dict = field(default_factory=dict)  # exclude: auto variant -> sensitivity records
    decoded: dict = field(default_factory=dict)  # translation: artifact path -> outputs on the evaluation set
    _fp32_models: dict = field(default_factory=dict)

    def fp32_model(self, component: str | None = None):
        """The FP32 ONNX (a translation graph: ``component``), parsed once per sweep: every variant reads it.
        Read-only."""
        if component not in self._fp32_models:
            from qbench.qdq import load_model

            self._fp32_models[component] = load_model(self.fp32 if component is None else
                                                      self.fp32 / f"{component}.onnx")
        return self._fp32_models[component]


def run_id_for(cfg: SweepConfig) -> str:
    h = hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:6]
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + f"-{h}"


def host_info() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count()}


def versions() -> dict:
    import importlib.metadata as md

    out = {"qbench": __version__}
    for pkg in ("onnx", "onnxruntime", "numpy", "datasets", "tokenizers", "torch", "transformers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def prepare(cfg: SweepConfig, run_dir: Path) -> Context:
    from qbench import registry
    from qbench.data import data_hashes, load_manifest, load_split
    from qbench.registry import plugin_signature
    from qbench.export import export_encoder
    from qbench.tokenize import Tokenizer

    cache = Path(os.environ.get("QBENCH_CACHE", cfg.output.cache_dir)).resolve()
    ctx = Context(cfg=cfg, run_dir=run_dir, cache=cache)
    t0 = time.perf_counter()
    if cfg.task == "translation":
        from qbench import translation

        model_entry = translation.prepare_model(ctx)
        hit = ctx.spec.from_cache
    else:
        exp = export_encoder(cfg.model_source(), cache / "models", opset=cfg.model.opset, pooling=cfg.model.pooling)
        ctx.fp32 = exp.onnx_path
        ctx.tokenizer = Tokenizer(exp.tokenizer_dir, max_length=cfg.model.max_length)
        hit = exp.from_cache
        model_entry = {"source": exp.source, "resolved": exp.resolved, "onnx_sha256": _sha(exp.onnx_path),
                       "onnx_path": str(exp.onnx_path), "tokenizer_dir": str(exp.tokenizer_dir),
                       "export_key": exp.key, "export_max_abs_diff": exp.max_abs_diff, "opset": exp.opset}
    log(f"model {cfg.model.source}: {'cached' if hit else 'exported'} ({time.perf_counter() - t0:.1f}s)")
    man = load_manifest(cfg.manifest_path())
    ev = load_split(man, cfg.data.evaluation.split)
    ctx.evalset = ev[: cfg.data.evaluation.n] if cfg.data.evaluation.n else ev
    if cfg.data.evaluation.n_per_language:
        kept, seen = [], {}
        for s in ctx.evalset:
            seen[s.language] = seen.get(s.language, 0) + 1
            if seen[s.language] <= cfg.data.evaluation.n_per_language:
                kept.append(s)
        ctx.evalset = kept
    if any(s.reference is None for s in ctx.evalset):
        raise QbenchError(f"{man.path}: fields.reference: the {cfg.task} task needs a reference field")
    sets_info = {}
    pools: dict[str, list] = {}
    for name, c in cfg.data.sets().items():
        if c.split not in pools:
            pools[c.split] = load_split(man, c.split)
        sampler = build_plugin(registry.samplers, c.sampler)
        chosen = [pools[c.split][i] for i in sampler.select(pools[c.split], c.n, c.seed)]
        overlap = {s.id for s in chosen} & {s.id for s in ctx.evalset}
        if overlap:
            raise QbenchError(f"{man.path}: calibration set '{name}' and the evaluation set share {len(overlap)} "
                              f"sample id(s), e.g. {sorted(overlap)[0]}")
        ctx.calib_sets[name] = chosen
        sets_info[name] = {"split": c.split, "sampler": plugin_signature(sampler), "n": len(chosen), "seed": c.seed,
                           "sample_ids": [s.id for s in chosen]}
    ctx.manifest = {
        "qbench_version": __version__, "run_id": run_dir.name, "sweep": cfg.name, "task": cfg.task,
        "gate": cfg.gate.model_dump() if cfg.gate else None,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": json.loads(cfg.model_dump_json()),
        "versions": {**versions(), **_backend(ctx).versions()}, "host": host_info(),
        "model": model_entry,
        "data": {"manifest": str(cfg.manifest_path()), "name": man.name, "sha256": data_hashes(man),
                 "calibration": next(iter(sets_info.values())), "calibration_sets": sets_info,
                 "evaluation": {"split": cfg.data.evaluation.split, "n": len(ctx.evalset)}},
        "statistics": {}, "statistics_passes": 0,
        "variants": {},
    }
    return ctx


def _sha(path: Path) -> str:
    from qbench.data import sha256_file

    if Path(path).is_dir():  # a translation variant: encoder + decoder
        from qbench.translation import dir_sha256

        return dir_sha256(path)
    return sha256_file(path)


def ensure_stats(ctx: Context, set_name: str) -> dict:
    """One statistics pass per calibration set serves every calibrator; cached by model, samples and settings.

    The manifest counts the passes actually run (``statistics_passes``), so reuse is visible.
    """
    from qbench import stats as st
    from qbench.qdq import calibration_tensors

    if set_name in ctx.stats:
        return ctx.stats[set_name]
    cc = ctx.cfg.calibration
    samples = ctx.calib_sets[set_name]
    tensors = calibration_tensors(ctx.fp32_model())
    key = st.cache_key(ctx.manifest["model"]["onnx_sha256"], [s.id for s in samples], tensors,
                       cc.histogram_bins, cc.batch_size, cc.histogram)
    texts = [s.text for s in samples]

    def batches():
        return (ctx.tokenizer.encode_batch(b) for b in st.iter_batches(texts, cc.batch_size))

    stats, hit, secs = cached_stats(ctx, key, ctx.fp32, tensors, batches)
    ctx.stats[set_name] = stats
    ctx.manifest["statistics"][set_name] = {"cache_key": key, "cache_hit": hit, "seconds": round(secs, 3),
                                            "tensors": len(tensors), "bins": cc.histogram_bins,
                                            "histogram": cc.histogram}
    log(f"statistics for set '{set_name}', {len(tensors)} tensors: "
        f"{'cache hit' if hit else 'collected'} ({secs:.1f}s)")
    return stats


def cached_stats(ctx: Context, key: str, model: Path, tensors: list[str], batches, **kw) -> tuple[dict, bool, float]:
    """(statistics of ``tensors``, cache hit, seconds): from the on-disk cache under ``key``, or collected in
    one pass, two for TensorRT's histogram layout (which needs each tensor's absmax before its histogram).
    ``batches()`` makes a fresh batch iterator. Passes run are counted in the manifest."""
    from qbench import stats as st

    cc = ctx.cfg.calibration
    path = ctx.cache / "stats" / f"{key}.npz"
    t0 = time.perf_counter()
    if path.is_file():
        return st.load(path), True, time.perf_counter() - t0
    stats = st.collect(model, tensors, batches(), cc.histogram_bins, ctx.cfg.backend.threads, **kw)
    ctx.manifest["statistics_passes"] += 1
    if cc.histogram == "trt":
        tops = {t: s.absmax for t, s in stats.items()}
        stats = st.collect(model, tensors, batches(), cc.histogram_bins, ctx.cfg.backend.threads,
                           fixed_top=tops, **kw)
        ctx.manifest["statistics_passes"] += 1
    st.save(stats, path)
    return stats, False, time.perf_counter() - t0


def table_file(ctx: Context, sig: str, calib_set: str, component: str | None = None) -> str:
    """A calibration table's path in the run dir: the set only when there is a choice, the graph if any."""
    multi = len(ctx.calib_sets) > 1
    return (f"tables/{_safe(sig)}" + (f"@{_safe(calib_set)}" if multi else "")
            + (f".{component}" if component else "") + ".json")


def table_for(ctx: Context, v: Variant):
    """(table, its path relative to the run dir): computed once per calibrator and set from shared statistics."""
    sig = v.calibrator.signature()
    if (v.calib_set, sig) not in ctx.tables:
        t = v.calibrator.table(ensure_stats(ctx, v.calib_set))
        t.check_finite()
        rel = table_file(ctx, sig, v.calib_set)
        t.save(ctx.run_dir / rel)
        ctx.tables[(v.calib_set, sig)] = (t, rel)
    return ctx.tables[(v.calib_set, sig)]


def _safe(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.=" else "_" for ch in s)


def _cfg_key(v: Variant) -> str:
    return hashlib.sha256(json.dumps(v.exclusion_cfg.model_dump()).encode()).hexdigest()[:12]


def build_variant(ctx: Context, v: Variant) -> tuple[Path, dict]:
    """The ONNX artifact of one variant, and what the manifest should know about how it was made."""
    from qbench import baselines, registry
    from qbench.qdq import build_qdq, load_model, plan, verify_scales

    out_dir = ctx.cache / "variants"
    out_dir.mkdir(parents=True, exist_ok=True)
    msha = ctx.manifest["model"]["onnx_sha256"][:16]
    if v.baseline == "fp32":
        return ctx.fp32, {}
    if v.baseline == "ort_dynamic":
        return baselines.ort_dynamic(ctx.fp32, out_dir / f"{msha}-ort_dynamic.onnx"), {}
    if v.baseline == "fp16":
        return baselines.fp16(ctx.fp32_model(), v.exclusion_cfg, out_dir / f"{msha}-fp16-{_cfg_key(v)}.onnx")
    if v.baseline == "ort_static":
        first = next(iter(ctx.calib_sets.values()))  # ORT's own calibration gets the first set
        ids = hashlib.sha256(json.dumps([s.id for s in first]).encode()).hexdigest()[:12]
        out = out_dir / f"{msha}-ort_static-{ids}.onnx"
        return baselines.ort_static(ctx.fp32, out, ctx.tokenizer, [s.text for s in first]), {}
    table, table_file = table_for(ctx, v)
    weights = build_plugin(registry.weight_rules, ctx.cfg.calibration.weights)
    key = hashlib.sha256(json.dumps([QDQ_VERSION, msha, table.to_json(), v.exclusion_cfg.model_dump(),
                                     v.flavor, weights.signature()]).encode()).hexdigest()[:16]
    out = out_dir / f"{key}.onnx"
    fp32 = ctx.fp32_model()
    hit = out.is_file()
    if hit:  # cached by content: still re-check every scale, so a stale or edited file cannot pass
        verify_scales(load_model(out), table, fp32, weights)
        rep = plan(fp32, v.exclusion_cfg)[1]
    else:
        rep = build_qdq(fp32, table, v.exclusion_cfg, v.flavor, out, weights)
    for w in rep.warnings:
        log(f"warning: variant {v.id}: {w}")
    return out, {"qdq_key": key, "qdq_cache_hit": hit,
                 "table": table_file, "quantized_tensors": len(rep.quantized_tensors),
                 "excluded_nodes": rep.excluded_nodes, "warnings": rep.warnings}


def evaluate(ctx: Context, v: Variant, artifact: Path) -> list[tuple[str, str, float, str]]:
    """Quality and structure of one variant. Latency is measured later, side by side (see latency_phase)."""
    from qbench.retrieval import fidelity, retrieval_metrics

    metrics: list[tuple[str, str, float, str]] = []
    q, d, eval_s = embed_pairs(ctx, artifact, ctx.evalset)
    m = retrieval_metrics(q, d)
    if v.baseline == "fp32":
        ctx.fp32_emb = np.concatenate([q, d])
        ctx.fp32_quality = m["accuracy_at_1"]
    metrics += [("accuracy_at_1", "all", m["accuracy_at_1"], "fraction"), ("mrr", "all", m["mrr"], "fraction")]
    gate = ctx.cfg.gate
    if gate is not None and v.baseline != "fp32" and ctx.fp32_quality is not None:
        drop = (ctx.fp32_quality - m["accuracy_at_1"]) * 100  # the budget is in percentage points
        metrics += [("gate", "all", float(drop <= gate.max_drop), "pass"), ("worst_lang_drop", "all", drop, "points")]
    if ctx.fp32_emb is not None:
        metrics.append(("cosine_vs_fp32", "all", fidelity(np.concatenate([q, d]), ctx.fp32_emb), "cosine"))
    metrics.append(("eval_seconds", "all", eval_s, "s"))
    metrics.append(("size_mb", "all", artifact.stat().st_size / 1e6, "MB"))
    return metrics + structure_metrics(ctx, v, artifact)


def embed_pairs(ctx: Context, artifact: Path, samples) -> tuple[np.ndarray, np.ndarray, float]:
    """(query embeddings, document embeddings, seconds spent embedding) of ``samples`` on one variant."""
    from qbench.retrieval import embed

    bs = ctx.cfg.measure.eval_batch_size
    backend = _backend(ctx)
    with backend.open(backend.build(artifact, ctx.run_dir)) as sess:
        t0 = time.perf_counter()
        q = embed(sess, ctx.tokenizer, [s.text for s in samples], bs)
        d = embed(sess, ctx.tokenizer, [s.reference for s in samples], bs)
        return q, d, time.perf_counter() - t0


def latency_session(ctx: Context, artifact: Path):
    """What latency code times for one variant: a whole translation, or one forward pass."""
    if ctx.cfg.task == "translation":
        from qbench.translation import GenerationSession

        return GenerationSession(ctx, artifact)
    backend = _backend(ctx)
    return backend.open(backend.build(artifact, ctx.run_dir))


def _backend(ctx: Context):
    from qbench import registry

    cfg = ctx.cfg
    return build_plugin(registry.backends, {"name": cfg.backend.name, "threads": cfg.backend.threads})


def structure_metrics(ctx: Context, v: Variant, artifact: Path) -> list[tuple[str, str, float, str]]:
    """How many MatMul/Gemm nodes run quantized or float, and how many nodes each exclusion kept out."""
    from qbench.qdq import load_model, match_exclusions, op_counts

    metrics = []
    counts = op_counts(load_model(artifact))
    for op in ("MatMul", "Gemm"):
        if counts["quantized"][op] + counts["float"][op]:
            metrics.append(("nodes_quantized", f"op={op}", counts["quantized"][op], "count"))
            metrics.append(("nodes_float", f"op={op}", counts["float"][op], "count"))
    if v.kind == "qbench":
        fp32 = ctx.fp32_model()
        excluded, _ = match_exclusions(fp32, v.exclusion_cfg)
        op_of = {n.name: n.op_type for n in fp32.graph.node}
        by_op: dict[str, int] = {}
        for name in excluded:
            by_op[op_of[name]] = by_op.get(op_of[name], 0) + 1
        metrics += [("nodes_excluded", f"op={op}", n, "count") for op, n in sorted(by_op.items())]
    return metrics


def latency_phase(ctx: Context, artifacts: dict[str, Path]) -> dict[str, list | str]:
    """Open every finished variant and time them round-robin, per batch size.

    Returns, per variant id, its latency metric tuples, or an error string if its session failed.
    """
    from qbench.measure import as_rows, interleaved

    lat = ctx.cfg.measure.latency
    out: dict[str, list | str] = {vid: [] for vid in artifacts}
    sessions = {}
    for vid, art in artifacts.items():
        try:
            sessions[vid] = latency_session(ctx, art)
        except Exception as e:  # noqa: BLE001 - recorded as this variant's failure
            out[vid] = f"latency: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    try:
        for b, feeds in ctx.latency_feeds.items():
            log(f"latency at batch {b}: {len(sessions)} variants x {lat.rounds} rounds x {lat.runs} runs")
            res = interleaved(sessions, feeds, lat.warmup, lat.runs, lat.rounds)
            for vid, r in res.items():
                if isinstance(r, Exception):
                    out[vid] = f"latency: {str(r).splitlines()[0] if str(r) else type(r).__name__}"
                    sessions.pop(vid).close()
                elif isinstance(out[vid], list):
                    out[vid] += as_rows(r, b)
    finally:
        for s in sessions.values():
            s.close()
    return out


def write_sensitivity(ctx: Context) -> None:
    """sensitivity.parquet: one tidy row per (search variant, mode, unit, metric, language)."""
    import pandas as pd

    from qbench.io import atomic_write

    rows = [{"variant": vid, **r} for vid, recs in ctx.search_sensitivity.items() for r in recs]
    if rows:
        df = pd.DataFrame(rows)
        atomic_write(ctx.run_dir / "sensitivity.parquet", lambda p: df.to_parquet(p, index=False))


def make_latency_feeds(ctx: Context) -> None:
    rng = np.random.default_rng(ctx.cfg.data.calibration.seed)
    if ctx.cfg.task == "translation":
        from qbench.translation import latency_texts

        texts = latency_texts(ctx)
    else:
        texts = [s.text for s in ctx.evalset]
    info = {}
    for b in ctx.cfg.measure.latency.batch_sizes:
        pick = [texts[i] for i in rng.choice(len(texts), size=min(b, len(texts)), replace=False)]
        ctx.latency_feeds[b] = ctx.tokenizer.encode_batch(pick)
        info[f"batch={b}"] = {"shape": list(ctx.latency_feeds[b]["input_ids"].shape)}
    ctx.manifest["latency_inputs"] = info


def run_sweep(cfg: SweepConfig, out_root: Path | None = None) -> Path:
    from qbench import report
    from qbench.results import metric_rows, write_manifest, write_results

    variants = expand(cfg)
    variants.sort(key=lambda v: v.baseline != "fp32")  # fp32 first: every fidelity is measured against it
    run_dir = Path(out_root or cfg.output.dir) / cfg.name / run_id_for(cfg)
    ctx = prepare(cfg, run_dir)
    tr = None
    if cfg.task == "translation":
        from qbench import translation as tr
    run_dir.mkdir(parents=True, exist_ok=True)  # only once the model and data loaded: no empty runs
    make_latency_feeds(ctx)
    rows: list[dict] = []
    artifacts: dict[str, Path] = {}
    by_id = {v.id: v for v in variants}
    sets = ctx.manifest["data"]["calibration_sets"]
    set_sig = {k: f"{k}:{i['sampler']}[n={i['n']},s={i['seed']}]" for k, i in sets.items()}

    def fail(v: Variant, entry: dict, err: str) -> None:
        entry.update(status="failed", error=err)
        log(f"variant {v.id} failed: {err}")
        rows[:] = [r for r in rows if r["variant"] != v.id]
        rows.extend(metric_rows(v.describe(), entry["signature"], run_dir.name,
                                [("status", "all", float("nan"), "")], status="failed"))

    for i, v in enumerate(variants, 1):
        t0 = time.perf_counter()
        log(f"variant {i}/{len(variants)}: {v.id}")
        entry: dict = {"status": "ok", **v.describe(), "signature": v.signature(set_sig.get(v.calib_set, ""))}
        ctx.manifest["variants"][v.id] = entry
        try:
            if v.exclusion == "auto":  # the search decides this variant's exclusions first
                from qbench import search

                log(f"search for {v.id}: sensitivity of every unit, then the gate on a scoring subset")
                try:
                    v, entry["search"] = search.resolve(ctx, v)
                finally:
                    write_sensitivity(ctx)
                by_id[v.id] = v
            artifact, info = (tr.build_variant if tr else build_variant)(ctx, v)
            entry.update(info)
            entry["artifact"] = str(artifact)
            entry["artifact_sha256"] = _sha(artifact)
            rows += metric_rows(v.describe(), entry["signature"], run_dir.name,
                                (tr.evaluate if tr else evaluate)(ctx, v, artifact))
            artifacts[v.id] = artifact
        except Exception as e:  # a crashing variant becomes a failed row; the sweep goes on
            if not isinstance(e, QbenchError):
                entry["traceback"] = traceback.format_exc()
                traceback.print_exc()
            fail(v, entry, str(e).splitlines()[0] if str(e) else type(e).__name__)
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        if tr:
            tr.write_samples(ctx)
        write_results(rows, run_dir)
        write_manifest(ctx.manifest, run_dir)
    if cfg.tensorrt is not None:
        from qbench import trt_phase

        def flush() -> None:
            write_results(rows, run_dir)
            write_manifest(ctx.manifest, run_dir)

        trt_phase.run(ctx, by_id, artifacts, rows, flush)
    for vid, lat in latency_phase(ctx, artifacts).items():
        entry = ctx.manifest["variants"][vid]
        if isinstance(lat, str):
            fail(by_id[vid], entry, lat)
        else:
            rows += metric_rows(by_id[vid].describe(), entry["signature"], run_dir.name, lat)
    write_results(rows, run_dir)
    write_manifest(ctx.manifest, run_dir)
    report.render(run_dir)
    log(f"wrote {run_dir}/results.parquet, manifest.json, report.html")
    return run_dir
