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
import signal
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from qbench import __version__, progress
from qbench.config import SweepConfig, build_plugin
from qbench.errors import ConfigError, DataError, QbenchError, first_line
from qbench.variants import Variant, expand

QDQ_VERSION = 1


def log(msg: str, warning: bool = False) -> None:
    """A timestamped line on stderr, drawn above the progress bars; ``--quiet`` keeps only warnings."""
    progress.echo(f"[qbench {time.strftime('%H:%M:%S')}] {msg}", important=warning)


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


def prepare(cfg: SweepConfig, run_dir: Path, data: dict | None = None, model_sha256: str | None = None) -> Context:
    """The sweep's context: the FP32 model (exported or from the cache), the data sets, the manifest's head.

    ``data`` (what ``load_data`` returned) and ``model_sha256`` come from the parent with a variant's job
    (qbench.isolate), so a child neither reloads nor re-samples the data (importing Hugging Face datasets
    alone costs a child 0.6 s; a remote worker then needs no data files) nor hashes the model again (a
    second per GB of model)."""
    from qbench.export import export_encoder
    from qbench.tokenize import Tokenizer

    cache = Path(os.environ.get("QBENCH_CACHE", cfg.output.cache_dir)).resolve()
    ctx = Context(cfg=cfg, run_dir=run_dir, cache=cache)
    t0 = time.perf_counter()
    if cfg.task == "translation":
        from qbench import translation

        model_entry = translation.prepare_model(ctx, model_sha256)
        hit = ctx.spec.from_cache
    else:
        exp = export_encoder(cfg.model_source(), cache / "models", opset=cfg.model.opset, pooling=cfg.model.pooling)
        ctx.fp32 = exp.onnx_path
        ctx.tokenizer = Tokenizer(exp.tokenizer_dir, max_length=cfg.model.max_length)
        hit = exp.from_cache
        model_entry = {"source": exp.source, "resolved": exp.resolved,
                       "onnx_sha256": model_sha256 or _sha(exp.onnx_path), "onnx_path": str(exp.onnx_path),
                       "tokenizer_dir": str(exp.tokenizer_dir), "export_key": exp.key,
                       "export_max_abs_diff": exp.max_abs_diff, "opset": exp.opset}
    log(f"model {cfg.model.source}: {'cached' if hit else 'exported'} ({time.perf_counter() - t0:.1f}s)")
    data = data or load_data(cfg)
    ctx.evalset, ctx.calib_sets = data["evalset"], data["calib_sets"]
    ctx.manifest = {
        "qbench_version": __version__, "run_id": run_dir.name, "sweep": cfg.name, "task": cfg.task,
        "gate": cfg.gate.model_dump() if cfg.gate else None,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": json.loads(cfg.model_dump_json()),
        "versions": {**versions(), **_backend(ctx).versions()}, "host": host_info(),
        "model": model_entry,
        "data": data["entry"],
        "statistics": {}, "statistics_passes": 0,
        "complete": False,  # True once every phase finished; a killed run is resumable (qbench sweep --resume)
        "variants": {},
    }
    return ctx


def load_data(cfg: SweepConfig) -> dict:
    """The evaluation set and the calibration sets (samples), and the manifest's ``data`` entry (hashes, sample
    ids): {"evalset", "calib_sets", "entry"}."""
    from qbench import registry
    from qbench.data import data_hashes, load_manifest, load_split
    from qbench.registry import plugin_signature

    man = load_manifest(cfg.manifest_path())
    ev = load_split(man, cfg.data.evaluation.split)
    evalset = ev[: cfg.data.evaluation.n] if cfg.data.evaluation.n else ev
    if cfg.data.evaluation.n_per_language:
        kept, seen = [], {}
        for s in evalset:
            seen[s.language] = seen.get(s.language, 0) + 1
            if seen[s.language] <= cfg.data.evaluation.n_per_language:
                kept.append(s)
        evalset = kept
    if any(s.reference is None for s in evalset):
        raise ConfigError(f"{man.path}: fields.reference: the {cfg.task} task needs a reference field")
    sets_info, calib_sets = {}, {}
    pools: dict[str, list] = {}
    for name, c in cfg.data.sets().items():
        if c.split not in pools:
            pools[c.split] = load_split(man, c.split)
        sampler = build_plugin(registry.samplers, c.sampler)
        try:
            picked = sampler.select(pools[c.split], c.n, c.seed)
        except DataError as e:  # name the config key and the pool, not only the sampler
            key = f"data.calibration_sets.{name}" if cfg.data.calibration_sets else "data.calibration"
            raise DataError(f"{key}.sampler: {e} (pool: split '{c.split}' of {man.path})") from None
        chosen = [pools[c.split][i] for i in picked]
        overlap = {s.id for s in chosen} & {s.id for s in evalset}
        if overlap:
            raise DataError(f"{man.path}: calibration set '{name}' and the evaluation set share {len(overlap)} "
                            f"sample id(s), e.g. {sorted(overlap)[0]}")
        calib_sets[name] = chosen
        sets_info[name] = {"split": c.split, "sampler": plugin_signature(sampler), "n": len(chosen), "seed": c.seed,
                           "sample_ids": [s.id for s in chosen]}
    entry = {"manifest": str(cfg.manifest_path()), "name": man.name, "sha256": data_hashes(man),
             "calibration": next(iter(sets_info.values())), "calibration_sets": sets_info,
             "evaluation": {"split": cfg.data.evaluation.split, "n": len(evalset)}}
    return {"evalset": evalset, "calib_sets": calib_sets, "entry": entry}


def _artifact_sha(ctx: Context, artifact: Path) -> str:
    """sha256 of a variant's artifact; the FP32 baseline's is the model's, hashed once in ``prepare`` (a second
    per GB of model, not to be spent again per run and per resume)."""
    if Path(artifact) == Path(ctx.fp32):
        return ctx.manifest["model"]["onnx_sha256"]
    return _sha(artifact)


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
        return progress.iterate((ctx.tokenizer.encode_batch(b) for b in st.iter_batches(texts, cc.batch_size)),
                                f"statistics '{set_name}'", -(-len(texts) // cc.batch_size), "batch")

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


def build_variant(ctx: Context, v: Variant, out_dir: Path | None = None) -> tuple[Path, dict]:
    """The ONNX artifact of one variant, and what the manifest should know about how it was made.

    Artifacts go to the cache's ``variants/`` (reused by content key), or to ``out_dir`` for a throwaway
    build (the search's sensitivity models)."""
    from qbench import baselines, registry
    from qbench.qdq import build_qdq, load_model, plan, verify_scales

    out_dir = out_dir or ctx.cache / "variants"
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
        log(f"warning: variant {v.id}: {w}", warning=True)
    return out, {"qdq_key": key, "qdq_cache_hit": hit,
                 "table": table_file, "quantized_tensors": len(rep.quantized_tensors),
                 "excluded_nodes": rep.excluded_nodes, "warnings": rep.warnings}


def task_module(ctx: Context):
    """Where the sweep's task builds, evaluates and calibrates: qbench.translation, or this module (retrieval).
    Both have build_variant(ctx, v, out_dir=None), evaluate(ctx, v, artifact) and ensure_stats(ctx, set_name)."""
    if ctx.cfg.task == "translation":
        from qbench import translation

        return translation
    return sys.modules[__name__]


def build_and_evaluate(ctx: Context, v: Variant) -> tuple[Path, dict, list[tuple[str, str, float, str]]]:
    """(artifact, build info, metrics) of one variant, built and evaluated in this process for the sweep's
    task: what every executor runs, in process or in a child."""
    task = task_module(ctx)
    artifact, info = task.build_variant(ctx, v)
    return artifact, info, task.evaluate(ctx, v, artifact)


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
    with (backend.open(backend.build(artifact, ctx.run_dir)) as sess,
          progress.task("evaluation", total=2 * len(samples), unit="text") as t):
        sess = progress.counted(sess, t, samples=True)
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
    from qbench.measure import ROUNDS, as_rows, calls_per_session, interleaved

    lat = ctx.cfg.measure.latency
    out: dict[str, list | str] = {vid: [] for vid in artifacts}
    sessions = {}
    for vid, art in artifacts.items():
        try:
            sessions[vid] = latency_session(ctx, art)
        except Exception as e:  # noqa: BLE001 - recorded as this variant's failure
            out[vid] = f"latency: {first_line(e, None)}"
    try:
        for b, feeds in ctx.latency_feeds.items():
            log(f"latency at batch {b}: {len(sessions)} variants x {lat.rounds} rounds x {lat.runs} runs")
            calls = calls_per_session(lat.warmup, lat.runs, lat.rounds)
            with progress.task(f"latency batch={b}", total=len(sessions) * calls, unit="run") as t:
                res = interleaved({k: progress.counted(s, t) for k, s in sessions.items()}, feeds, lat.warmup,
                                  lat.runs, lat.rounds)
            for vid, r in res.items():
                if isinstance(r, Exception):
                    out[vid] = f"latency: {first_line(r, None)}"
                    sessions.pop(vid).close()
                elif isinstance(out[vid], list):
                    out[vid] += as_rows(r, b)
                    ctx.manifest.setdefault("latency_rounds", {}).setdefault(vid, {})[f"batch={b}"] = r[ROUNDS]
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


class Interrupted(BaseException):
    """SIGINT or SIGTERM during a sweep: a BaseException, so no variant's ``except Exception`` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM: what a shell reports for the signal


@contextmanager
def _signals_raise():
    """Turn SIGINT/SIGTERM into ``Interrupted`` for the duration (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _is_latency_row(r: dict) -> bool:
    """A row of the side-by-side latency phase (re-measured for every variant when a run resumes)."""
    return r["backend"] != "tensorrt" and str(r["slice"]).startswith("batch=")


def run_sweep(cfg: SweepConfig, out_root: Path | None = None, resume: Path | None = None,
              retry_failed: bool = False, config_path: str = "") -> Path:
    """Run every variant of ``cfg`` into a new run directory, or finish the run ``resume``."""
    from qbench import executors
    from qbench import resume as resuming

    executors.check(cfg)
    prev = None
    if resume is not None:
        prev = resuming.load(resume)
        resuming.check_config(prev, cfg, config_path or cfg.name)
        run_dir = Path(resume)
    else:
        run_dir = Path(out_root or cfg.output.dir) / cfg.name / run_id_for(cfg)
    ctx = prepare(cfg, run_dir)
    if config_path:
        ctx.manifest["config_file"] = str(Path(config_path).resolve())
    if prev is not None:
        resuming.check_inputs(prev, ctx.manifest)
    with _signals_raise():
        return _run(ctx, prev, retry_failed)


def _run(ctx: Context, prev, retry_failed: bool) -> Path:
    from qbench import executors

    variants = expand(ctx.cfg)
    # The executor first, before any directory is made: a Ray cluster that cannot be reached fails here.
    runner = executors.make(ctx, len(variants))
    try:
        return _run_on(ctx, prev, retry_failed, runner, variants)
    finally:
        runner.close(cancel=True)  # a no-op once the variants finished (closed then, before latency)


def _create_run_dir(ctx: Context) -> None:
    """The run directory appears with its manifest in it, never empty: it is made under a hidden name and
    renamed, so a run killed at any moment is either absent or resumable."""
    from qbench.results import write_manifest

    tmp = ctx.run_dir.parent / f".{ctx.run_dir.name}.creating"
    tmp.mkdir(parents=True, exist_ok=True)
    write_manifest(ctx.manifest, tmp)
    os.rename(tmp, ctx.run_dir)


def _run_on(ctx: Context, prev, retry_failed: bool, runner, variants: list[Variant]) -> Path:
    from qbench import report
    from qbench.results import metric_rows, write_manifest, write_results

    cfg, run_dir = ctx.cfg, ctx.run_dir
    variants.sort(key=lambda v: v.baseline != "fp32")  # fp32 first: every fidelity is measured against it
    tr = None
    if cfg.task == "translation":
        from qbench import translation as tr
    make_latency_feeds(ctx)
    if not run_dir.exists():  # only once the model and data loaded: no empty runs
        _create_run_dir(ctx)
    rows: list[dict] = []
    artifacts: dict[str, Path] = {}
    by_id = {v.id: v for v in variants}
    sets = ctx.manifest["data"]["calibration_sets"]
    set_sig = {k: f"{k}:{i['sampler']}[n={i['n']},s={i['seed']}]" for k, i in sets.items()}
    done: dict[str, dict] = {}
    if prev is not None:
        done = _take_over(ctx, prev, retry_failed, by_id, rows, artifacts)
        if len(done) == len(variants) and prev.manifest.get("complete"):
            log(f"{run_dir}: every variant finished already; nothing to resume")
            report.render(run_dir)
            return run_dir
        rows[:] = [r for r in rows if not _is_latency_row(r)]  # measured again, side by side, at the end

    def fail(v: Variant, entry: dict, err: str) -> None:
        entry.update(status="failed", error=err)
        log(f"variant {v.id} failed: {err}", warning=True)
        rows[:] = [r for r in rows if r["variant"] != v.id]
        rows.extend(metric_rows(v.describe(), entry["signature"], run_dir.name,
                                [("status", "all", float("nan"), "")], status="failed"))

    def flush() -> None:
        if tr:
            tr.write_samples(ctx)
        write_results(rows, run_dir)
        write_manifest(ctx.manifest, run_dir)

    todo = [v for v in variants if v.id not in done]
    if prev is not None:
        log(f"resuming {run_dir}: {len(done)} variant(s) finished, {len(todo)} to run")
    flush()  # a run directory always holds a manifest, so even a run killed in its first variant resumes
    entry: dict = {}
    try:
        if todo and runner.isolated:
            # One statistics pass per calibration set, here: the children read it from the cache.
            for name in {v.calib_set for v in todo if v.kind == "qbench"}:
                task_module(ctx).ensure_stats(ctx, name)
        _run_variants(ctx, runner, todo, by_id, set_sig, rows, artifacts, fail, flush)
        runner.close(cancel=False)  # (on an exception, _run cancels what still runs)
        if cfg.tensorrt is not None:
            from qbench import trt_phase

            pending = {k: a for k, a in artifacts.items() if "tensorrt" not in ctx.manifest["variants"][k]}
            with progress.task("tensorrt builds", total=len(pending), unit="variant") as t:
                def trt_flush() -> None:  # trt_phase calls it after each variant
                    flush()
                    t.advance()

                trt_phase.run(ctx, by_id, pending, rows, trt_flush)
        for vid, lat in latency_phase(ctx, artifacts).items():
            entry = ctx.manifest["variants"][vid]
            if isinstance(lat, str):
                fail(by_id[vid], entry, lat)
            else:
                rows += metric_rows(by_id[vid].describe(), entry["signature"], run_dir.name, lat)
    except Interrupted as e:
        # Abandon what was running: finished variants stay; the unfinished one has no rows and no "done".
        running = [vid for vid, en in ctx.manifest["variants"].items() if not en.get("done")]
        rows[:] = [r for r in rows if r["variant"] not in running and not _is_latency_row(r)]
        for vid in running:
            ctx.manifest["variants"][vid].update(status="interrupted")
        ctx.manifest["interrupted"] = {"signal": str(e), "utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        flush()
        log(f"interrupted by {e}: {sum(1 for en in ctx.manifest['variants'].values() if en.get('done'))} variant(s) "
            f"kept in {run_dir}; finish it with: qbench sweep CONFIG --resume {run_dir}", warning=True)
        raise
    ctx.manifest.pop("interrupted", None)
    ctx.manifest["complete"] = True
    flush()
    report.render(run_dir)
    log(f"wrote {run_dir}/results.parquet, manifest.json, report.html")
    return run_dir


def _run_variants(ctx: Context, runner, todo: list[Variant], by_id: dict, set_sig: dict, rows: list,
                  artifacts: dict, fail, flush) -> None:
    """Run ``todo`` on ``runner`` (qbench.executors): FP32 alone first (every fidelity metric is measured
    against it), then as many at once as the executor has slots. A variant is recorded the moment it
    finishes, in the order they finish: its rows, its manifest entry marked ``done``, results and manifest
    rewritten (``flush``); so a killed run resumes, with any executor. A failure is the variant's failed row.
    ``exclude: auto`` variants run their search here, in this process, before their job is submitted."""
    from qbench import isolate
    from qbench.results import metric_rows

    in_flight: dict[str, tuple[Variant, dict, float]] = {}  # id -> (variant, manifest entry, start)
    queue = list(todo)
    started = 0

    def settle(v: Variant, entry: dict, t0: float, work) -> bool:
        """Run ``work`` (a submission, or taking a finished job's result); a failure becomes the variant's
        failed row and ends it. True if ``work`` went through."""
        try:
            work()
            return True
        except Exception as e:  # a crashing variant becomes a failed row; the sweep goes on
            if isinstance(e, isolate.ChildBug):
                entry["traceback"] = e.child_traceback
            elif not isinstance(e, QbenchError):
                entry["traceback"] = traceback.format_exc()
                traceback.print_exc()
            fail(v, entry, first_line(e, None))
            end(entry, t0)
            return False

    def end(entry: dict, t0: float) -> None:
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        entry["done"] = True
        flush()
        bar.advance()

    def launch(v: Variant) -> None:
        nonlocal started
        started += 1
        t0 = time.perf_counter()
        log(f"variant {started}/{len(todo)}: {v.id}")
        entry = {"status": "ok", **v.describe(), "signature": v.signature(set_sig.get(v.calib_set, ""))}
        ctx.manifest["variants"][v.id] = entry
        resolved = [v]

        def submit() -> None:
            if v.exclusion == "auto":  # the search decides this variant's exclusions first
                from qbench import search

                log(f"search for {v.id}: sensitivity of every unit, then the gate on a scoring subset")
                try:
                    resolved[0], entry["search"] = search.resolve(ctx, v)
                finally:
                    write_sensitivity(ctx)
                by_id[v.id] = resolved[0]
                entry["resolved_exclusion"] = resolved[0].exclusion_cfg.model_dump()
            runner.submit(ctx, resolved[0])

        if settle(resolved[0], entry, t0, submit):
            in_flight[v.id] = (resolved[0], entry, t0)

    def record(d, v: Variant, entry: dict) -> None:
        entry["executor"] = dict(d.where)
        artifact, info, metrics = d.get()
        info = dict(info)
        entry["executor"].update(info.pop("executor", {}))
        entry.update(info)
        entry["artifact"] = str(artifact)
        entry["artifact_sha256"] = _artifact_sha(ctx, artifact)
        rows.extend(metric_rows(v.describe(), entry["signature"], ctx.run_dir.name, metrics))
        artifacts[v.id] = artifact

    with progress.task("variants", total=len(todo), unit="variant") as bar:
        while queue or in_flight:
            while (queue and len(in_flight) < runner.slots
                   and not any(rv.baseline == "fp32" for rv, _, _ in in_flight.values())):
                launch(queue.pop(0))
            if not in_flight:
                continue
            bar.note = ", ".join(in_flight)
            for d in runner.wait(ctx):
                v, entry, t0 = in_flight.pop(d.variant.id)
                if settle(v, entry, t0, lambda: record(d, v, entry)):
                    if runner.slots > 1:
                        node = entry["executor"].get("node")
                        log(f"variant {v.id}: done{f' on node {node[:8]}' if node else ''} "
                            f"({time.perf_counter() - t0:.1f}s)")
                    end(entry, t0)


def _same_artifact(ctx: Context, vid: str, artifact: Path, want: str | None) -> None:
    """A resumed variant's rows were measured on the artifact its manifest entry hashed; the one about to be
    re-timed (and built as an engine) must be that same file. A rebuild from a pruned cache gives the same
    bytes unless qbench or a library it quantizes with changed since; then the run cannot be resumed."""
    got = _artifact_sha(ctx, artifact)
    if want and got != want:
        raise DataError(f"cannot resume: variant {vid}'s artifact, rebuilt from the cache, differs from the one "
                        f"its rows were measured on (sha256 {got[:12]}, recorded {want[:12]}): qbench or a "
                        "library changed since that run; run the sweep again without --resume")


def _take_over(ctx: Context, prev, retry_failed: bool, by_id: dict, rows: list, artifacts: dict) -> dict[str, dict]:
    """Adopt the finished variants of ``prev``: their manifest entries, rows, samples, sensitivity records
    and artifacts (rebuilt from the cache when it was cleared: the same table gives the same bytes). When
    anything is left to run, FP32 is evaluated again in memory: the reference every later variant is
    compared with; its rows stay the ones on disk."""
    from qbench.config import ExclusionCfg

    done = {vid: e for vid, e in prev.finished(retry_failed).items() if vid in by_id}
    m = ctx.manifest
    m["created_utc"] = prev.manifest.get("created_utc", m["created_utc"])
    m["resumed"] = prev.manifest.get("resumed", []) + [
        {"utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "kept": sorted(done),
         "retry_failed": retry_failed}]
    for key in ("metric_signatures", "statistics", "statistics_passes", "tensorrt"):
        if key in prev.manifest:
            m[key] = prev.manifest[key]
    rows += [r for r in prev.rows if r["variant"] in done]
    for vid, e in done.items():
        m["variants"][vid] = e
        if e.get("resolved_exclusion") is not None:
            by_id[vid] = replace(by_id[vid], exclusion_cfg=ExclusionCfg(**e["resolved_exclusion"]))
    if prev.samples is not None and ctx.cfg.task == "translation":
        for vid, frame in prev.samples.groupby("variant", sort=False):
            if vid in done:
                ctx.sample_frames[vid] = frame.reset_index(drop=True)
    for r in prev.sensitivity:
        if r["variant"] in done:
            ctx.search_sensitivity.setdefault(r["variant"], []).append(
                {k: v for k, v in r.items() if k != "variant"})
    ok = [vid for vid, e in done.items() if e.get("status") == "ok"]
    if len(done) < len(by_id) or not prev.manifest.get("complete"):
        for vid in ok:  # cache hits unless the cache was cleared
            artifacts[vid] = task_module(ctx).build_variant(ctx, by_id[vid])[0]
            _same_artifact(ctx, vid, artifacts[vid], done[vid].get("artifact_sha256"))
        if "fp32" in done and "fp32" in by_id:
            frames = dict(ctx.sample_frames)
            task_module(ctx).evaluate(ctx, by_id["fp32"], artifacts["fp32"])
            ctx.sample_frames.update(frames)  # the rows on disk stay as they are
    return done
