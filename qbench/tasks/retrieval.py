"""The retrieval task: embed queries (``text``) and documents (``reference``), score rank of the true pair.

One graph (a sentence encoder, exported from Hugging Face with its pooling); quality is accuracy@1 and MRR
over the evaluation pairs, fidelity the cosine of each variant's embeddings with FP32's.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import ClassVar

import numpy as np

from qbench.tasks.base import Task
from qbench.tasks.common import backend, batch_session, cached_stats, cfg_key, ort_fused, over_fp16, sqnr_db
from qbench.util import progress
from qbench.util.logs import log


def embed(session, tokenizer, texts: list[str], batch_size: int) -> np.ndarray:
    """Embeddings in input order. Texts are batched by length so that little compute goes to padding."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        emb = session.infer(tokenizer.encode_batch([texts[i] for i in idx]))[0]
        for i, e in zip(idx, emb):
            out[i] = e
    return np.stack(out).astype(np.float32)


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def ranks(queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """1-based rank of doc i among all docs for query i, by cosine similarity (ties count against us)."""
    sim = _normalize(queries) @ _normalize(docs).T
    true = np.diag(sim)
    return (sim > true[:, None]).sum(axis=1) + 1


def retrieval_metrics(queries: np.ndarray, docs: np.ndarray) -> dict[str, float]:
    r = ranks(queries, docs)
    return {"accuracy_at_1": float((r == 1).mean()), "mrr": float((1.0 / r).mean())}


def fidelity(emb: np.ndarray, ref: np.ndarray) -> float:
    """Mean cosine between a variant's embeddings and FP32's, row by row."""
    return float((_normalize(emb) * _normalize(ref)).sum(axis=1).mean())


class RetrievalTask(Task):
    """Sentence embeddings: accuracy@1 and MRR of finding each query's paired document, cosine to FP32."""

    name: ClassVar[str] = "retrieval"
    quality: ClassVar[tuple[str, str]] = ("accuracy_at_1", "accuracy@1")
    short_label: ClassVar[str] = "acc@1"
    plot_title: ClassVar[str] = "Accuracy against latency"
    item_noun: ClassVar[str] = "pairs"
    formats: ClassVar[frozenset[str]] = frozenset({"int8", "fp8", "int8_wo", "int4_wo"})
    bias_correction: ClassVar[bool] = True

    def check_config(self, cfg, file: str) -> list[str]:
        problems = []
        if cfg.gate is not None and cfg.gate.metric != "accuracy_at_1":
            problems.append(f"{file}: gate.metric: retrieval is gated on accuracy_at_1")
        if cfg.gate is not None and cfg.gate.per == "lang":
            problems.append(f"{file}: gate.per: retrieval has no languages; use per: all")
        return problems

    def prepare_model(self, ctx, sha256: str | None = None) -> dict:
        from qbench.models.export import export_encoder
        from qbench.models.tokenize import Tokenizer

        cfg = ctx.cfg
        from qbench.config import onnx_source
        from qbench.models import onnx_load

        exp = (onnx_load.encoder(cfg) if onnx_source.kind(cfg) else  # an ONNX file, used as is
               export_encoder(cfg.model_source(), ctx.cache / "models", opset=cfg.model.opset, pooling=cfg.model.pooling))
        ctx.fp32 = exp.onnx_path
        ctx.tokenizer = Tokenizer(exp.tokenizer_dir, max_length=cfg.model.max_length)
        ctx.model_from_cache = exp.from_cache
        return {"source": exp.source, "resolved": exp.resolved,
                "onnx_sha256": sha256 or self.artifact_sha256(exp.onnx_path), "onnx_path": str(exp.onnx_path),
                "tokenizer_dir": str(exp.tokenizer_dir), "export_key": exp.key,
                "export_max_abs_diff": exp.max_abs_diff, "opset": exp.opset}

    def calib_batches(self, ctx, set_name: str, comp: str | None = None):
        """(a function making a fresh iterator over the calibration set's batches (the model's feeds), the
        statistics pass's options for them: none, nothing is padded that the pass does not mask itself)."""
        from qbench.calib import stats as st

        cc = ctx.cfg.calibration
        texts = [s.text for s in ctx.calib_sets[set_name]]

        def batches():
            return progress.iterate((ctx.tokenizer.encode_batch(b) for b in st.iter_batches(texts, cc.batch_size)),
                                    f"statistics '{set_name}'", -(-len(texts) // cc.batch_size), "batch")
        return batches, {}

    def ensure_stats(self, ctx, set_name: str) -> dict:
        """One statistics pass per calibration set serves every calibrator; cached by model, samples and settings.

        The manifest counts the passes actually run (``statistics_passes``), so reuse is visible. With a
        SmoothQuant variant in the sweep the same pass also keeps max |x| per channel (qbench.tasks.transforms).
        """
        from qbench.calib import stats as st
        from qbench.quantize.qdq import calibration_tensors
        from qbench.tasks.transforms import uses_smoothquant

        if set_name in ctx.stats:
            return ctx.stats[set_name]
        cc = ctx.cfg.calibration
        samples = ctx.calib_sets[set_name]
        tensors = calibration_tensors(ctx.fp32_model())
        channels = uses_smoothquant(ctx.cfg)
        key = st.cache_key(ctx.manifest["model"]["onnx_sha256"], st.sample_keys(samples), tensors,
                           cc.histogram_bins, cc.batch_size, cc.histogram, channels)
        stats, hit, secs = cached_stats(ctx, key, ctx.fp32, tensors, self.calib_batches(ctx, set_name)[0],
                                        channels=channels)
        ctx.stats[set_name] = stats
        ctx.manifest["statistics"][set_name] = {"cache_key": key, "cache_hit": hit, "seconds": round(secs, 3),
                                                "tensors": len(tensors), "bins": cc.histogram_bins,
                                                "histogram": cc.histogram, "channel_absmax": channels}
        log(f"statistics for set '{set_name}', {len(tensors)} tensors: "
            f"{'cache hit' if hit else 'collected'} ({secs:.1f}s)")
        return stats

    def build_variant(self, ctx, v, out_dir: Path | None = None) -> tuple[Path, dict]:
        """The ONNX artifact of one variant, and what the manifest should know about how it was made.

        Artifacts go to the cache's ``variants/`` (reused by content key), or to ``out_dir`` for a throwaway
        build (the search's sensitivity models)."""
        from qbench.quantize import baselines
        from qbench.tasks import qdq_build as qb

        out_dir = out_dir or ctx.cache / "variants"
        out_dir.mkdir(parents=True, exist_ok=True)
        msha = ctx.manifest["model"]["onnx_sha256"][:16]
        if v.baseline == "fp32":
            return ctx.fp32, {}
        if v.kind == "external" or v.peer is not None:
            return self.foreign_variant(ctx, v, out_dir)
        if v.baseline == "ort_dynamic":
            return baselines.ort_dynamic(ctx.fp32, out_dir / f"{msha}-ort_dynamic.onnx"), {}
        if v.baseline == "fp16":
            from qbench.backends.ort import cpu_float16_fallback

            path, info = baselines.fp16(ctx.fp32_model(), v.exclusion_cfg, out_dir / f"{msha}-fp16-{cfg_key(v)}.onnx")
            return path, {**info, **cpu_float16_fallback(path)}  # which parts ORT CPU really ran in FP16
        if v.baseline == "ort_static":
            first = next(iter(ctx.calib_sets.values()))  # ORT's own calibration gets the first set
            ids = hashlib.sha256(json.dumps([s.id for s in first]).encode()).hexdigest()[:12]
            out = out_dir / f"{msha}-ort_static-{ids}.onnx"
            return baselines.ort_static(ctx.fp32, out, ctx.tokenizer, [s.text for s in first]), {}
        out, rep, info = qb.single_graph(ctx, self, v, out_dir, msha)
        f16: dict = {}
        if v.float_dtype == "fp16":  # INT8 over FP16: derived from the verified FP32 QDQ file
            out, f16 = over_fp16(ctx, out, info["qdq_key"])
        if v.ort_form == "fused":  # ONNX Runtime CPU's deployment form of the (verified) QDQ file
            out, f16["ort_form"] = ort_fused(out)
        warnings = rep.warnings + f16.pop("warnings", [])
        qb.log_warnings(v, warnings)
        return out, {**info, "quantized_nodes": len(rep.quantized_nodes), "warnings": warnings, **f16}

    def foreign_variant(self, ctx, v, out_dir: Path) -> tuple[Path, dict]:
        """An external model as given, or a peer quantizer's output on the sweep's calibration samples (one
        unpadded sample per feed, as the statistics pass and ort_static see them)."""
        from qbench.quantize import foreign

        if v.kind == "external":
            return foreign.external(v.path, {"model": Path(v.path)})
        samples = ctx.calib_sets[v.calib_set]
        out = out_dir / f"{foreign.key(ctx.manifest['model']['onnx_sha256'], v.peer, [s.id for s in samples])}.onnx"
        log(f"{v.id}: {v.peer.name} quantizes the FP32 model on {len(samples)} calibration samples (child process)")
        return foreign.run_peer(v.peer, ctx.fp32, out, [ctx.tokenizer.encode_batch([s.text]) for s in samples],
                                ctx.cfg.base_dir)

    def evaluate(self, ctx, v, artifact: Path) -> list[tuple[str, str, float, str]]:
        """Quality and structure of one variant. Latency is measured later, side by side (the runner's latency
        phase)."""
        metrics: list[tuple[str, str, float, str]] = []
        # A search confirmation already embedded this artifact on the same set: the same ONNX, the same vectors.
        q, d, eval_s = ctx.decoded.pop(str(artifact), None) or embed_pairs(ctx, artifact, ctx.evalset)
        m = retrieval_metrics(q, d)
        if v.baseline == "fp32":
            ctx.fp32_ref.update(emb=np.concatenate([q, d]), quality=m["accuracy_at_1"])
        metrics += [("accuracy_at_1", "all", m["accuracy_at_1"], "fraction"), ("mrr", "all", m["mrr"], "fraction")]
        gate = ctx.cfg.gate
        if gate is not None and v.baseline != "fp32" and ctx.fp32_ref.get("quality") is not None:
            drop = (ctx.fp32_ref["quality"] - m["accuracy_at_1"]) * 100  # the budget is in percentage points
            metrics += [("gate", "all", float(drop <= gate.max_drop), "pass"), ("worst_lang_drop", "all", drop, "points")]
        if ctx.fp32_ref.get("emb") is not None:
            metrics.append(("cosine_vs_fp32", "all", fidelity(np.concatenate([q, d]), ctx.fp32_ref["emb"]), "cosine"))
        metrics.append(("eval_seconds", "all", eval_s, "s"))
        metrics.append(("size_mb", "all", artifact.stat().st_size / 1e6, "MB"))
        return metrics + structure_metrics(ctx, v, artifact)

    def scorer(self, ctx, subset: list):
        return RetrievalScorer(ctx, subset)

    def markdown_table(self, df, manifest: dict, rows: list[dict] | None = None) -> str:
        from qbench.report.tables import markdown_single

        cols = [("acc@1", "acc", ".4f"), ("Δ vs FP32 (pts)", "delta", "+.2f"), ("MRR", "mrr", ".4f"),
                ("cos vs FP32", "cos", ".4f")]
        return markdown_single(self, self.leaderboard(df, manifest) if rows is None else rows, manifest, cols)

    def leaderboard(self, df, manifest: dict) -> list[dict]:
        """One dict per variant, in manifest order: the numbers the table shows."""
        from qbench.report.tables import BASELINE, _batches, _common, _values

        val = _values(df)
        base = val.get((BASELINE, "accuracy_at_1", "all"))
        batches = _batches(val)
        rows = []
        for vid, info in manifest["variants"].items():
            acc = val.get((vid, "accuracy_at_1", "all"))
            rows.append({
                **_common(vid, info, val, batches),
                "acc": acc, "delta": None if acc is None or base is None else (acc - base) * 100,
                "mrr": val.get((vid, "mrr", "all")), "cos": val.get((vid, "cosine_vs_fp32", "all")),
            })
        return rows


def embed_pairs(ctx, artifact: Path, samples) -> tuple[np.ndarray, np.ndarray, float]:
    """(query embeddings, document embeddings, seconds spent embedding) of ``samples`` on one variant."""
    bs = ctx.cfg.measure.eval_batch_size
    be = backend(ctx)
    with (batch_session(be, be.build(artifact, ctx.run_dir)) as sess,
          progress.task("evaluation", total=2 * len(samples), unit="text") as t):
        sess = progress.counted(sess, t, samples=True)
        t0 = time.perf_counter()
        q = embed(sess, ctx.tokenizer, [s.text for s in samples], bs)
        d = embed(sess, ctx.tokenizer, [s.reference for s in samples], bs)
        return q, d, time.perf_counter() - t0


def structure_metrics(ctx, v, artifact: Path) -> list[tuple[str, str, float, str]]:
    """How many MatMul/Gemm nodes run quantized or float, and how many nodes each exclusion kept out."""
    from qbench.quantize.qdq import load_model, match_exclusions, op_counts

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


class RetrievalScorer:
    """The search's scorer: embeddings of the subset's queries and documents; quality = accuracy@1 in points,
    no languages."""

    def __init__(self, ctx, subset, base: np.ndarray | None = None):
        self.ctx, self.subset = ctx, subset
        self.base = self._embed(ctx.fp32) if base is None else base  # FP32's queries, then its documents
        self.base_quality = self._quality(self.base)
        self.base_hits = self._hits(self.base)

    def restrict(self, samples: list) -> "RetrievalScorer":
        """A scorer on some of the subset's pairs (the ranking's) that takes FP32's embeddings of them from this
        one instead of embedding them again."""
        pos = {s.id: i for i, s in enumerate(self.subset)}
        idx = np.array([pos[s.id] for s in samples], dtype=int)
        return RetrievalScorer(self.ctx, list(samples), np.concatenate([self.base[idx],
                                                                        self.base[len(self.subset) + idx]]))

    def _embed(self, art: Path) -> np.ndarray:
        q, d, _ = embed_pairs(self.ctx, art, self.subset)
        return np.concatenate([q, d])

    def _hits(self, emb: np.ndarray) -> np.ndarray:
        """Per query, 1.0 where its document ranks first (the gate's per-sample statistic), as a column."""
        n = len(self.subset)
        return (ranks(emb[:n], emb[n:]) == 1).astype(float)[:, None]

    def _quality(self, emb: np.ndarray) -> dict[str, float]:
        return {"all": float(self._hits(emb).mean()) * 100}

    def full_quality(self, art: Path) -> tuple[dict[str, float], dict[str, float]]:
        """(candidate, FP32) accuracy@1 in points on the sweep's evaluation set."""
        q, d, secs = embed_pairs(self.ctx, art, self.ctx.evalset)
        self.last_pairs = (str(art), q, d)  # for the confirmation's decision (per-query correctness)
        self.ctx.decoded[str(art)] = (q, d, secs)  # the chosen variant's evaluation reuses them
        return {"all": retrieval_metrics(q, d)["accuracy_at_1"] * 100}, {"all": self.ctx.fp32_ref["quality"] * 100}

    def decision_stats(self, art: Path, metric: str):
        """(FP32, candidate, languages) per-query correctness on the evaluation set, from ``full_quality``."""
        pairs, emb = getattr(self, "last_pairs", None), self.ctx.fp32_ref.get("emb")
        if pairs is None or pairs[0] != str(art) or emb is None:
            return None
        n = len(self.ctx.evalset)
        var = (ranks(pairs[1], pairs[2]) == 1).astype(float)[:, None]
        base = (ranks(emb[:n], emb[n:]) == 1).astype(float)[:, None]
        return base, var, ["all"] * n

    def score(self, art: Path, quality: bool = True) -> dict:
        emb = self._embed(art)
        err = float(((emb - self.base) ** 2).sum() / (self.base ** 2).sum())
        out = {"error": err, "fidelity": {"sqnr_db": {"all": sqnr_db(self.base, emb)}}}
        if quality:
            hits = self._hits(emb)
            out["quality"] = {"all": float(hits.mean()) * 100}
            out["samples"] = (self.base_hits, hits, ["all"] * len(hits))  # FP32, candidate: the projected screen
        return out
