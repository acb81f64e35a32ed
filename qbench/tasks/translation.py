"""The translation task: two graphs (encoder, decoder) per variant, decoded and scored per language.

A variant's artifact is a directory holding ``encoder.onnx`` and ``decoder.onnx`` (the FP32 export's own
directory for the fp32 baseline). Each graph has its own statistics, table and Q/DQ, from one shared
calibration set: the encoder sees the calibration sources, the decoder the teacher-forced targets
(references, or FP32's own greedy outputs), so decoder ranges come from real decoding traces.

Quality: sacrebleu BLEU and chrF per language from per-sample sufficient statistics, the change
against FP32 with a paired bootstrap 95% interval, and the optional gate.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import ClassVar

import numpy as np

from qbench.util import progress
from qbench.util.logs import log
from qbench.config.errors import DataError, QbenchError
from qbench.run.variants import Variant
from qbench.tasks.base import Task
from qbench.tasks.decode import (GenerationSession, _target_ids, generator, latency_texts,  # noqa: F401
                                 sources, translate_artifact)
from qbench.tasks.common import cached_stats, cfg_key

COMPONENTS = ("encoder", "decoder")
BOOTSTRAP = 1000  # resamples for every confidence interval


def prepare_model(ctx, sha256: str | None = None) -> dict:
    """Export (cached) and open the tokenizer; returns the manifest's model entry (``sha256``: the graphs'
    hash, where the caller already has it)."""
    from qbench.models.seq2seq import export_seq2seq
    from qbench.models.tokenize import Tokenizer

    cfg = ctx.cfg
    from qbench.models import onnx_load
    from qbench.config import onnx_source

    exp = (onnx_load.seq2seq(cfg) if onnx_source.kind(cfg) else  # a folder of ONNX graphs, used as is
           export_seq2seq(cfg.model_source(), ctx.cache / "models", opset=cfg.model.opset))
    if exp.tokenizer_dir is None or not (exp.tokenizer_dir / "tokenizer.json").is_file():
        raise QbenchError(f"{cfg.model.source}: the model has no tokenizer.json (qbench tokenizes with the "
                          "`tokenizers` library; save a fast tokenizer beside the model)")
    ctx.fp32 = exp.encoder_path.parent
    ctx.spec = exp
    ctx.model_from_cache = exp.from_cache
    ctx.tokenizer = Tokenizer(exp.tokenizer_dir, max_length=cfg.model.max_length)
    return {"source": exp.source, "resolved": exp.resolved, "export_key": exp.key, "opset": exp.opset,
            "exporter": exp.exporter, "model_type": exp.model_type,
            "onnx_sha256": sha256 or dir_sha256(ctx.fp32),
            "onnx_path": str(ctx.fp32), "tokenizer_dir": str(exp.tokenizer_dir),
            "export_max_abs_diff": None if exp.encoder_max_abs_diff is None else exp.max_abs_diff,  # None: ONNX given
            "export_max_abs_diffs": {"encoder": exp.encoder_max_abs_diff, "decoder": exp.decoder_max_abs_diff,
                                     "decoder_with_past": exp.decoder_past_max_abs_diff,
                                     "decoder_split": exp.decoder_split_max_abs_diff}}


def dir_sha256(d: Path) -> str:
    """One hash over both graphs: a variant's identity."""
    from qbench.data.manifest import sha256_file

    h = hashlib.sha256()
    for c in COMPONENTS:
        h.update(sha256_file(Path(d) / f"{c}.onnx").encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- statistics


def calib_batches(ctx, set_name: str, comp: str):
    """(a function making a fresh iterator over graph ``comp``'s calibration batches, the statistics pass's options
    for them): the encoder sees the sources, the decoder teacher-forced targets with their padding masked out."""
    cc = ctx.cfg.calibration
    samples = ctx.calib_sets[set_name]
    n = -(-len(samples) // cc.batch_size)
    if comp == "encoder":
        return (lambda: progress.iterate(_encoder_batches(ctx, samples), f"statistics '{set_name}' encoder", n,
                                         "batch")), {}
    targets: dict = {}

    def batches():
        if not targets:  # decoded once, and only when a pass over the decoder runs (not for cached statistics)
            targets.update(_calibration_targets(ctx, samples))
        return progress.iterate(_decoder_batches(ctx, samples, targets), f"statistics '{set_name}' decoder", n,
                                "batch")
    return batches, {"mask_input": "target_mask", "seq_inputs": ["input_ids"]}


def ensure_stats(ctx, set_name: str) -> dict:
    """{component: {tensor: TensorStats}} for one calibration set; one pass per graph, cached on disk. With a
    SmoothQuant or AWQ variant in the sweep the pass also keeps max |x| per channel (qbench.tasks.transforms)."""
    from qbench.calib import stats as st
    from qbench.quantize.qdq import calibration_tensors
    from qbench.tasks.transforms import uses_smoothquant

    if set_name in ctx.stats:
        return ctx.stats[set_name]
    cc = ctx.cfg.calibration
    samples = ctx.calib_sets[set_name]
    channels = uses_smoothquant(ctx.cfg)
    out, info = {}, {}
    keys = st.sample_keys(samples, ctx.cfg.model.source_prefix)  # the same samples feed both graphs
    for comp in COMPONENTS:
        tensors = calibration_tensors(ctx.fp32_model(comp))
        key = st.cache_key(f"{ctx.manifest['model']['onnx_sha256']}:{comp}:{cc.decoder_targets}", keys, tensors,
                           cc.histogram_bins, cc.batch_size, cc.histogram, channels)
        batches, kw = calib_batches(ctx, set_name, comp)
        stats, hit, secs = cached_stats(ctx, key, ctx.fp32 / f"{comp}.onnx", tensors, batches, channels=channels,
                                        **kw)
        out[comp] = stats
        info[comp] = {"cache_key": key, "cache_hit": hit, "seconds": round(secs, 3),
                      "tensors": len(tensors)}
    ctx.stats[set_name] = out
    ctx.manifest["statistics"][set_name] = {**info, "bins": cc.histogram_bins, "histogram": cc.histogram,
                                            "decoder_targets": cc.decoder_targets, "channel_absmax": channels}
    return out


def _batched(ctx, samples):
    """Calibration batches sorted by source length: padding is masked anyway, but costs time."""
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].text))
    bs = ctx.cfg.calibration.batch_size
    return [[samples[i] for i in order[k:k + bs]] for k in range(0, len(order), bs)]


def _encoder_batches(ctx, samples):
    for b in _batched(ctx, samples):
        yield ctx.tokenizer.encode_batch(sources(ctx, b))


def _calibration_targets(ctx, samples) -> dict[str, list[int]]:
    """Target token ids per sample id: the references, or what FP32 greedy decoding produces."""
    if ctx.cfg.calibration.decoder_targets == "reference":
        if any(s.reference is None for s in samples):
            raise DataError("calibration: decoder_targets 'reference' needs a reference field in the data")
        ids = _target_ids(ctx, [s.reference for s in samples])
    else:
        gen = generator(ctx, ctx.fp32)
        g = ctx.cfg.generation
        ids = []
        batches = [samples[k:k + g.batch_size] for k in range(0, len(samples), g.batch_size)]
        for b in progress.iterate(batches, "calibration targets (FP32 greedy)", unit="batch"):
            enc = ctx.tokenizer.encode_batch(sources(ctx, b))
            ids += gen.generate(enc["input_ids"], enc["attention_mask"], g.max_new_tokens, 1)
    return {s.id: (t or [ctx.spec.eos_token_id]) for s, t in zip(samples, ids)}


def _decoder_batches(ctx, samples, targets):
    """Teacher-forced decoder feeds. Only target padding is masked (``target_mask``): tensors with a source
    axis (the cross-attention K/V inputs) also see the encoder's states at padded source positions. Batches
    of similar source length (``_batched``) keep that padding small."""
    gen = generator(ctx, ctx.fp32)  # the encoder states the decoder reads come from the FP32 encoder
    for b in _batched(ctx, samples):
        enc = ctx.tokenizer.encode_batch(sources(ctx, b))
        df = gen.teacher_forced(enc["input_ids"], enc["attention_mask"], [targets[s.id] for s in b])
        yield {**df.feeds, "target_mask": df.token_mask.astype(np.int64)}


# ---------------------------------------------------------------------------------------------- variants


def build_variant(ctx, v: Variant, out_root: Path | None = None) -> tuple[Path, dict]:
    """The encoder and decoder artifacts of one variant (a directory), in the cache's ``variants/`` or in
    ``out_root`` for a throwaway build (as the retrieval task's build_variant)."""
    from qbench.quantize import baselines

    out_root = out_root or ctx.cache / "variants"
    msha = ctx.manifest["model"]["onnx_sha256"][:16]
    if v.baseline == "fp32":
        return ctx.fp32, {}
    if v.kind == "external":  # a folder holding encoder.onnx and decoder.onnx, as given
        from qbench.quantize import foreign

        return foreign.external(v.path, {c: Path(v.path) / f"{c}.onnx" for c in COMPONENTS})
    if v.baseline == "ort_dynamic":
        d = out_root / f"{msha}-ort_dynamic"
        d.mkdir(parents=True, exist_ok=True)
        for comp in COMPONENTS:
            if not (d / f"{comp}.onnx").is_file():
                baselines.ort_dynamic(ctx.fp32 / f"{comp}.onnx", d / f"{comp}.onnx")
        return d, {}
    if v.baseline == "fp16":
        d = out_root / f"{msha}-fp16-{cfg_key(v)}"
        info: dict = {"excluded_nodes": {}, "fp16": {}, "warnings": []}
        for comp in COMPONENTS:
            _, i = baselines.fp16(ctx.fp32_model(comp), v.exclusion_cfg, d / f"{comp}.onnx")
            info["excluded_nodes"][comp], info["fp16"][comp] = i["excluded_nodes"], i["fp16"]
            info["warnings"] += [f"{comp}: {w}" for w in i["warnings"]]
        return d, info
    if v.baseline:
        raise QbenchError(f"variant {v.id}: baseline '{v.baseline}' is not available for translation")
    return qbench_variant(ctx, v, out_root, msha)


def qbench_variant(ctx, v: Variant, out_root: Path, msha: str) -> tuple[Path, dict]:
    """Both graphs of a qbench variant through the build every task shares (qbench.tasks.qdq_build): each from
    its own table, transform or AWQ scales, in the variant's format; one content key over both."""
    from qbench.tasks import qdq_build as qb

    weights, task = qb.weight_rule(ctx), TranslationTask()
    tables, files, fp32s, tinfos, extra = {}, {}, {}, {}, []
    for comp in COMPONENTS:
        tables[comp], files[comp], table_info = qb.graph_table(ctx, task, v, comp)
        fp32s[comp], graph_info, graph_extra = qb.graph_fp32(ctx, task, v, comp)
        extra += graph_extra
        if table_info or graph_info:
            tinfos[comp] = {**graph_info, **table_info}
    key = qb.variant_key(msha, {c: t.to_json() for c, t in tables.items()}, v, weights, extra)
    d = out_root / key
    d.mkdir(parents=True, exist_ok=True)
    info: dict = {"qdq_key": key, "tables": {c: f for c, f in files.items() if f}, "quantized_tensors": {},
                  "excluded_nodes": {}, "format": v.format.signature(), **({"transform": tinfos} if tinfos else {}),
                  **({"embeddings": v.embeddings} if v.embeddings != "float" else {})}
    warnings_by_comp = []
    for comp in COMPONENTS:
        rep, _ = qb.build_graph(v, fp32s[comp], tables[comp], weights, d / f"{comp}.onnx")
        info["quantized_tensors"][comp] = len(rep.quantized_tensors)
        # which activations carry Q/DQ: the report's calibration-set ranges show only these move
        info.setdefault("quantized_tensor_names", {})[comp] = list(rep.quantized_tensors)
        info["excluded_nodes"][comp] = rep.excluded_nodes
        warnings_by_comp.append(set(rep.warnings))
    # An exclusion may fit only one graph (lm_head lives in the decoder): warn when it fits neither.
    info["warnings"] = sorted(set.intersection(*warnings_by_comp))
    return d, info


def artifact_size_mb(art: Path) -> float:
    return sum((Path(art) / f"{c}.onnx").stat().st_size for c in COMPONENTS) / 1e6


# ---------------------------------------------------------------------------------------------- quality


def evaluate(ctx, v: Variant, art: Path) -> list[tuple[str, str, float, str]]:
    from qbench.tasks import mt_metrics as mm

    samples = ctx.evalset
    langs = [s.language for s in samples]
    refs = [s.reference for s in samples]
    # A search confirmation already decoded this artifact on the same set: the same ONNX gives the same
    # text, and eval_seconds is that decoding's time.
    hyps, eval_s = ctx.decoded.pop(str(art), (None, 0.0))
    if hyps is None:
        # eval_seconds: decoding time summed over batches, also over the batches an interrupted run journaled
        # and over parallel workers (one process's time, whatever generation.workers is)
        hyps, eval_s, resumed = translate_artifact(ctx, art, samples)
        if resumed:
            log(f"{v.id}: {resumed} decoded batches taken from the journal of an earlier run")
    stats = mm.sample_stats_by_lang(hyps, refs, langs)
    metrics: list[tuple[str, str, float, str]] = []
    for r in mm.score_stats(stats, langs).itertuples():
        metrics.append((r.metric, "all" if r.lang == "all" else f"lang={r.lang}", r.value, "score"))
        ctx.manifest.setdefault("metric_signatures", {}).setdefault(r.metric, {})[r.lang] = r.signature
    frame = mm.samples_frame([s.id for s in samples], langs, hyps, refs, stats["bleu"], stats["chrf"])
    frame.insert(0, "variant", v.id)
    ctx.sample_frames[v.id] = frame
    if v.baseline == "fp32":
        ctx.fp32_ref.update(stats=stats, hyps=hyps)
    elif ctx.fp32_ref.get("stats") is not None:
        metrics += _deltas(ctx, stats, langs)
        metrics.append(("exact_match_vs_fp32", "all",
                        float(np.mean([a == b for a, b in zip(hyps, ctx.fp32_ref["hyps"])])), "fraction"))
    metrics.append(("eval_seconds", "all", eval_s, "s"))
    metrics.append(("size_mb", "all", artifact_size_mb(art), "MB"))
    return metrics + structure_metrics(art)


def structure_metrics(art: Path) -> list[tuple[str, str, float, str]]:
    """MatMul/Gemm nodes running quantized or float, per graph."""
    from qbench.quantize.qdq import load_model, op_counts

    out = []
    for comp in COMPONENTS:
        counts = op_counts(load_model(Path(art) / f"{comp}.onnx"))
        for op in ("MatMul", "Gemm"):
            if counts["quantized"][op] + counts["float"][op]:
                out.append(("nodes_quantized", f"graph={comp},op={op}", counts["quantized"][op], "count"))
                out.append(("nodes_float", f"graph={comp},op={op}", counts["float"][op], "count"))
    return out


def _deltas(ctx, stats, langs) -> list[tuple[str, str, float, str]]:
    """Change against FP32 per language and overall, with paired-bootstrap intervals; then the gate."""
    from qbench.tasks import mt_metrics as mm

    seed = next(iter(ctx.cfg.data.sets().values())).seed
    df = mm.paired_bootstrap_by_lang(ctx.fp32_ref["stats"], stats, langs, metrics=("bleu", "chrf"), n=BOOTSTRAP, seed=seed)
    out = []
    for r in df.itertuples():
        sl = "all" if r.lang == "all" else f"lang={r.lang}"
        out += [(f"delta_{r.metric}", sl, r.delta, "score"), (f"delta_{r.metric}_lo", sl, r.lo, "score"),
                (f"delta_{r.metric}_hi", sl, r.hi, "score"), (f"delta_{r.metric}_p", sl, r.p, "p")]
    gate = ctx.cfg.gate
    if gate is not None:
        d = df[df.metric == gate.metric]
        rows = d[d.lang != "all"] if gate.per == "lang" else d[d.lang == "all"]
        worst = rows.loc[rows.delta.idxmin()]
        drop = -float(worst.delta)
        out.append(("gate", "all", float(drop <= gate.max_drop), "pass"))
        out.append(("worst_lang_drop", "all" if worst.lang == "all" else f"lang={worst.lang}", drop, "score"))
    return out


# ---------------------------------------------------------------------------------------------- the contract


class TranslationTask(Task):
    """Seq2seq translation: greedy or beam decoding, BLEU and chrF per language with paired-bootstrap deltas."""

    name: ClassVar[str] = "translation"
    components: ClassVar[tuple[str, ...]] = COMPONENTS
    quality: ClassVar[tuple[str, str]] = ("bleu", "BLEU (macro mean over languages)")
    item_noun: ClassVar[str] = "sentences"
    layout: ClassVar[str] = "languages"
    fidelity_label: ClassVar[str] = "KL"
    per_language: ClassVar[bool] = True

    default_baselines: ClassVar[tuple[str, ...]] = ("fp32", "ort_dynamic")
    formats: ClassVar[frozenset[str]] = frozenset({"int8", "fp8", "int8_wo", "int4_wo"})

    def check_config(self, cfg, file: str) -> list[str]:
        problems = []
        if "fp16" in cfg.sweep.float_dtypes or any(v.float_dtype == "fp16" for v in cfg.sweep.extra):
            problems.append(f"{file}: sweep.float_dtypes: INT8 over FP16 is built for retrieval only (docs/deployment.md)")
        if any(v.ort_form != "qdq" for v in cfg.sweep.extra):
            problems.append(f"{file}: sweep.extra: ort_form: fused is built for retrieval only (docs/deployment.md)")
        if "ort_static" in cfg.sweep.baselines:
            problems.append(f"{file}: sweep.baselines: ort_static is not available for translation "
                            "(ONNX Runtime's static quantizer takes one graph; use qbench calibrators)")
        if cfg.gate is not None and cfg.gate.metric not in ("bleu", "chrf"):
            problems.append(f"{file}: gate.metric: translation is gated on bleu or chrf")
        return problems

    def prepare_model(self, ctx, sha256: str | None = None) -> dict:
        return prepare_model(ctx, sha256)

    def artifact_sha256(self, artifact: Path) -> str:
        return dir_sha256(artifact)

    def graphs(self, artifact: Path) -> dict[str, Path]:
        return {c: Path(artifact) / f"{c}.onnx" for c in COMPONENTS}

    def fp32_models(self, ctx) -> dict:
        return {c: ctx.fp32_model(c) for c in COMPONENTS}

    def ensure_stats(self, ctx, set_name: str) -> dict:
        return ensure_stats(ctx, set_name)

    def calib_batches(self, ctx, set_name: str, comp: str | None = None):
        return calib_batches(ctx, set_name, comp)

    def build_variant(self, ctx, v, out_dir: Path | None = None) -> tuple[Path, dict]:
        return build_variant(ctx, v, out_dir)

    def evaluate(self, ctx, v, artifact: Path) -> list[tuple[str, str, float, str]]:
        return evaluate(ctx, v, artifact)

    def latency_texts(self, ctx) -> list[str]:
        return latency_texts(ctx)

    def latency_session(self, ctx, artifact: Path):
        return GenerationSession(ctx, artifact)

    def scorer(self, ctx, subset: list):
        from qbench.tasks.translation_search import TranslationScorer

        return TranslationScorer(ctx, subset)

    def dim_ranges(self, ctx, seq_opt: int) -> dict[str, tuple[int, int, int]]:
        """Beams multiply a batch; the decoder takes one new token per step (teacher forcing up to the generation
        limit), past K/V from 0 (first step) to the generation limit."""
        cfg = ctx.cfg
        lat, longest, g = cfg.measure.latency.batch_sizes, cfg.model.max_length, cfg.generation
        beams = g.num_beams
        batch = (1, max(lat) * beams, max(*lat, g.batch_size) * beams)
        steps = g.max_new_tokens + 1
        return {"batch": batch, "sequence": (1, seq_opt, longest), "src_len": (1, seq_opt, longest),
                "tgt_len": (1, 1, steps), "past_len": (0, steps // 2, steps)}

    def gpu_latency_rows(self, ctx, engines: dict[str, Path]) -> list[tuple[str, str, float, str]]:
        """Wall time of whole greedy/beam generation through the encoder and decoder engines, as ORT is timed."""
        from qbench.backends.measure import as_rows, summarize, time_runs
        from qbench.backends.trt_runtime import TrtSession
        from qbench.models.generate import Generator

        lat, g = ctx.cfg.measure.latency, ctx.cfg.generation
        rows = []
        enc, dec = TrtSession(Path(engines["encoder"])), TrtSession(Path(engines["decoder"]))
        try:
            gen = Generator(enc, dec, ctx.spec)
            for b, feeds in ctx.latency_feeds.items():
                secs = time_runs(lambda: gen.generate(feeds["input_ids"], feeds["attention_mask"], g.max_new_tokens,
                                                      g.num_beams), lat.warmup, lat.runs * lat.rounds)
                rows += as_rows(summarize(secs, b), b)
        finally:
            enc.close()
            dec.close()
        return rows

    def leaderboard(self, df, manifest: dict) -> list[dict]:
        from qbench.tasks.translation_report import translation_leaderboard

        return translation_leaderboard(df, manifest)

    def report_context(self, df, manifest: dict, rows: list[dict] | None = None) -> dict:
        from qbench.tasks.translation_report import translation_context

        return translation_context(df, manifest)

    def markdown_table(self, df, manifest: dict, rows: list[dict] | None = None) -> str:
        from qbench.tasks.translation_report import markdown_translation

        return markdown_translation(self.leaderboard(df, manifest) if rows is None else rows, manifest)
