"""The causal_lm task: a decoder-only LM (one KV-cache graph, qbench.models.causal_lm) quantized and scored on
held-out text per domain.

Data: each evaluation sample is a text segment; its ``language`` field is its domain (``datasets/lm_text.yaml``:
bible, debian). A segment is cut to ``model.max_length`` tokens and fed as ``[EOS] + tokens`` (qbench.tasks.lm_score).

Calibration: the statistics pass sees prefill batches (left-padded segments, padding masked out of every tensor
with a token axis) and decode-shaped batches: per calibration batch, ``lm.calibration_decode_steps`` single-token
steps through the FP32 cache, teacher-forced on the text, from a prefill cut to the batch's shortest segment (so
no row is padded).

Metrics per variant: perplexity per domain and overall; its change against FP32 in percent with a paired bootstrap
interval over segments; next-token top-1 agreement and KL(FP32 || variant) per domain; greedy generation agreement
on the starts of the first ``lm.prompts`` segments. A ``gate`` decides on perplexity (qbench.report.decision, from
samples.parquet); ``exclude: auto`` ranks units by KL on a scoring subset (qbench.tasks.lm_search). Latency
(qbench.tasks.lm_latency): a ``model.max_length``-token prefill and the decode steps after it, timed apart.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

import numpy as np

from qbench.config.errors import QbenchError
from qbench.tasks import lm_metrics as lm
from qbench.tasks.base import Task
from qbench.tasks.common import cached_stats, cfg_key
from qbench.tasks.lm_score import _by_length, decoder, score_text, segments
from qbench.util import progress
from qbench.util.logs import log

BOOTSTRAP = 1000  # resamples of every perplexity interval


class LmText:
    """The model's tokenizer (``tokenizers``, from the export's tokenizer.json): plain ids, no special tokens."""

    def __init__(self, tokenizer_dir: Path):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
        self._tok.no_padding()
        self._tok.no_truncation()

    def ids(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode_batch(self, ids: list[list[int]]) -> list[str]:
        return self._tok.decode_batch([list(map(int, r)) for r in ids], skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------- the model


def prepare_model(ctx, sha256: str | None = None) -> dict:
    from qbench.data.manifest import sha256_file
    from qbench.models.causal_lm import MIN_OPSET, export_causal_lm

    cfg = ctx.cfg
    spec = export_causal_lm(cfg.model_source(), ctx.cache / "models", opset=max(cfg.model.opset, MIN_OPSET))
    if spec.tokenizer_dir is None or not (spec.tokenizer_dir / "tokenizer.json").is_file():
        raise QbenchError(f"{cfg.model.source}: the model has no tokenizer.json (qbench tokenizes with the "
                          "`tokenizers` library)")
    ctx.fp32, ctx.spec, ctx.model_from_cache = spec.onnx_path, spec, spec.from_cache
    ctx.tokenizer = LmText(spec.tokenizer_dir)
    return {"source": spec.source, "resolved": spec.resolved, "export_key": spec.key, "opset": spec.opset,
            "exporter": spec.exporter, "model_type": spec.model_type, "gguf_file": spec.gguf_file,
            "onnx_sha256": sha256 or sha256_file(spec.onnx_path), "onnx_path": str(spec.onnx_path),
            "tokenizer_dir": str(spec.tokenizer_dir), "export_max_abs_diff": max(spec.max_abs_diff,
                                                                                spec.past_max_abs_diff),
            "export_rel_diff": spec.rel_diff, "num_layers": spec.num_layers, "vocab_size": spec.vocab_size,
            "tied_embeddings": spec.tied_embeddings}


# ---------------------------------------------------------------------------------------------- statistics


def calibration_batches(ctx, samples):
    """Prefill batches (``token_mask``: the padding to mask out), then decode-shaped batches without padding."""
    from qbench.models.lm_decode import left_pad

    cc, steps = ctx.cfg.calibration, ctx.cfg.lm.calibration_decode_steps
    segs = segments(ctx, samples)
    groups = _by_length(segs, cc.batch_size)
    pad = ctx.spec.pad_token_id
    for g in groups:
        ids, mask = left_pad([segs[i][0] for i in g], pad)
        yield {"input_ids": ids, "attention_mask": mask, **ctx.spec.empty_past(len(g)), "token_mask": mask}
    if not steps:
        return
    fp32 = decoder(ctx, ctx.fp32)
    try:
        for g in groups:
            width = min(len(segs[i][0]) for i in g)
            if width <= steps:
                continue
            cut = width - steps
            ids = np.array([segs[i][0][:width] for i in g], np.int64)
            _, past = fp32.forward(ids[:, :cut], np.ones((len(g), cut), np.int64), None)
            for k in range(cut, width):
                feeds = {"input_ids": ids[:, k:k + 1], "attention_mask": np.ones((len(g), k + 1), np.int64), **past}
                yield feeds
                _, past = fp32.forward(feeds["input_ids"], feeds["attention_mask"], past)
    finally:
        fp32.session.close()


def calib_batches(ctx, set_name: str, comp: str | None = None):
    """(a function making a fresh iterator over the calibration batches, the statistics pass's options for them:
    prefill padding masked out of every tensor with a token axis)."""
    cc, steps = ctx.cfg.calibration, ctx.cfg.lm.calibration_decode_steps
    samples = ctx.calib_sets[set_name]
    n = -(-len(samples) // cc.batch_size)

    def batches():
        return progress.iterate(calibration_batches(ctx, samples), f"statistics '{set_name}'", n * (1 + steps),
                                "batch")
    return batches, {"mask_input": "token_mask", "seq_inputs": ["input_ids", "attention_mask"]}


def ensure_stats(ctx, set_name: str) -> dict:
    """One statistics pass per calibration set, cached; it keeps max |x| per channel too when a SmoothQuant or AWQ
    variant is in the sweep (qbench.tasks.transforms)."""
    from qbench.calib import stats as st
    from qbench.quantize.qdq import calibration_tensors
    from qbench.tasks.transforms import uses_smoothquant

    if set_name in ctx.stats:
        return ctx.stats[set_name]
    cc, steps = ctx.cfg.calibration, ctx.cfg.lm.calibration_decode_steps
    samples = ctx.calib_sets[set_name]
    tensors = calibration_tensors(ctx.fp32_model())
    channels = uses_smoothquant(ctx.cfg)
    key = st.cache_key(f"{ctx.manifest['model']['onnx_sha256']}:causal_lm:{ctx.cfg.model.max_length}:{steps}",
                       [s.id for s in samples], tensors, cc.histogram_bins, cc.batch_size, cc.histogram, channels)
    batches, kw = calib_batches(ctx, set_name)
    stats, hit, secs = cached_stats(ctx, key, ctx.fp32, tensors, batches, channels=channels, **kw)
    ctx.stats[set_name] = stats
    ctx.manifest["statistics"][set_name] = {"cache_key": key, "cache_hit": hit, "seconds": round(secs, 3),
                                            "tensors": len(tensors), "bins": cc.histogram_bins,
                                            "histogram": cc.histogram, "decode_steps": steps,
                                            "channel_absmax": channels}
    log(f"statistics for set '{set_name}', {len(tensors)} tensors: {'cache hit' if hit else 'collected'} "
        f"({secs:.1f}s)")
    return stats


# ---------------------------------------------------------------------------------------------- variants


def build_variant(ctx, v, out_dir: Path | None = None) -> tuple[Path, dict]:
    from qbench.quantize import baselines

    out_dir = out_dir or ctx.cache / "variants"
    out_dir.mkdir(parents=True, exist_ok=True)
    msha = ctx.manifest["model"]["onnx_sha256"][:16]
    if v.baseline == "fp32":
        return ctx.fp32, {}
    if v.baseline == "ort_dynamic":
        out = out_dir / f"{msha}-ort_dynamic.onnx"
        return (out if out.is_file() else baselines.ort_dynamic(ctx.fp32, out)), {}
    if v.baseline == "fp16":
        return baselines.fp16(ctx.fp32_model(), v.exclusion_cfg, out_dir / f"{msha}-fp16-{cfg_key(v)}.onnx")
    if v.baseline:
        raise QbenchError(f"variant {v.id}: baseline '{v.baseline}' is not available for causal_lm")
    return qbench_variant(ctx, CausalLMTask(), v, out_dir, msha)


def qbench_variant(ctx, task, v, out_dir: Path, msha: str) -> tuple[Path, dict]:
    """The KV-cache graph with Q/DQ, through the build every task shares (qbench.tasks.qdq_build): table, transform
    or AWQ scales, format, INT8 embeddings, content key, re-check of a cached file."""
    from qbench.tasks import qdq_build as qb

    out, rep, info = qb.single_graph(ctx, task, v, out_dir, msha)
    qb.log_warnings(v, rep.warnings)
    return out, {**info, "warnings": rep.warnings}


# ---------------------------------------------------------------------------------------------- evaluation


def generate(ctx, dec, samples) -> list[list[int]]:
    """Greedy continuations of the first ``lm.prompts`` segments' first ``lm.prompt_tokens`` tokens."""
    lc, g = ctx.cfg.lm, ctx.cfg.generation
    prompts = [ids[:lc.prompt_tokens] for ids in ctx.tokenizer.ids([s.text for s in samples[:lc.prompts]])]
    out = []
    for k in range(0, len(prompts), g.batch_size):
        out += dec.greedy(prompts[k:k + g.batch_size], g.max_new_tokens)
    return out


def evaluate(ctx, v, artifact: Path) -> list[tuple[str, str, float, str]]:
    import pandas as pd

    from qbench.tasks.retrieval import structure_metrics

    samples = ctx.evalset
    is_fp32 = v.baseline == "fp32"
    # A search confirmation already scored this artifact on the same set: the same ONNX, the same NLL and KL.
    scored = ctx.decoded.pop(str(artifact), None)
    t0 = time.perf_counter()
    dec = decoder(ctx, artifact)
    try:
        sc = scored[0] if scored else score_text(ctx, dec, samples, is_fp32)
        gen = generate(ctx, dec, samples)
    finally:
        dec.session.close()
    eval_s = time.perf_counter() - t0 + (scored[1] if scored else 0.0)
    doms = np.array([s.language for s in samples])
    slices = [("all", np.ones(len(samples), bool))] + [(f"domain={d}", doms == d) for d in sorted(set(doms))]
    rows: list[tuple[str, str, float, str]] = []
    if is_fp32:
        ctx.fp32_ref.update(nll=sc["nll"], tokens=sc["tokens"], gen=gen)
    base = ctx.fp32_ref.get("nll")
    change = {}
    for name, m in slices:
        rows.append(("perplexity", name, lm.perplexity(sc["nll"][m].sum(), sc["tokens"][m].sum()), "ppl"))
        rows.append(("top1_agreement", name, float(sc["top1"][m].sum() / sc["tokens"][m].sum()), "fraction"))
        rows.append(("kl_vs_fp32", name, float(sc["kl"][m].sum() / sc["tokens"][m].sum()), "nats/token"))
        if base is not None and not is_fp32:
            seed = next(iter(ctx.cfg.data.sets().values())).seed
            ch = lm.ppl_change(base[m], sc["nll"][m], sc["tokens"][m], BOOTSTRAP, seed)
            change[name] = ch["change"]
            rows += [("ppl_change_pct", name, ch["change"], "%"), ("ppl_change_pct_lo", name, ch["lo"], "%"),
                     ("ppl_change_pct_hi", name, ch["hi"], "%"), ("ppl_change_pct_p", name, ch["p"], "p")]
    gate = ctx.cfg.gate
    if gate is not None and change:  # the point estimate (qbench compare); the report decides from samples.parquet
        worst = max((k for k in change if (k == "all") == (gate.per == "all")), key=lambda k: change[k])
        rows += [("gate", "all", float(change[worst] <= gate.max_drop), "pass"),
                 ("worst_lang_drop", worst, change[worst], "%")]
    if ctx.fp32_ref.get("gen") is not None and not is_fp32:
        ga = lm.generation_agreement(ctx.fp32_ref["gen"], gen)
        rows += [("generation_exact", "all", ga["generation_exact"], "fraction"),
                 ("generation_prefix", "all", ga["generation_prefix"], "fraction")]
    rows += [("tokens", "all", float(sc["tokens"].sum()), "count"), ("eval_seconds", "all", eval_s, "s"),
             ("size_mb", "all", Path(artifact).stat().st_size / 1e6, "MB")]
    frame = pd.DataFrame({"variant": v.id, "id": [s.id for s in samples], "lang": doms, "tokens": sc["tokens"],
                          "nll": sc["nll"], "top1": sc["top1"], "kl": sc["kl"],
                          # the greedy continuation of the segment's start (token ids), where it was a prompt
                          "generated": [" ".join(map(str, g)) for g in gen] + [None] * (len(samples) - len(gen))})
    ctx.sample_frames[v.id] = frame
    return rows + structure_metrics(ctx, v, artifact)


# ---------------------------------------------------------------------------------------------- the contract


class CausalLMTask(Task):
    """Decoder-only LMs: perplexity per domain with intervals, top-1 agreement, KL, generation agreement."""

    name: ClassVar[str] = "causal_lm"
    quality: ClassVar[tuple[str, str]] = ("top1_agreement", "next-token top-1 agreement with FP32")
    short_label: ClassVar[str] = "top-1"
    plot_title: ClassVar[str] = "Top-1 agreement against latency"
    item_noun: ClassVar[str] = "segments"
    fidelity_label: ClassVar[str] = "KL"
    per_language: ClassVar[bool] = True         # the search's subsets are capped per domain
    needs_reference: ClassVar[bool] = False
    default_baselines: ClassVar[tuple[str, ...]] = ("fp32",)
    formats: ClassVar[frozenset[str]] = frozenset({"int8", "fp8", "int8_wo", "int4_wo"})

    @staticmethod
    def resolve_source(source: str):
        """A folder, a .gguf file, a pkg: package holding one, or a hub id (checked when the config loads)."""
        from qbench.models.lm_source import resolve_lm_source

        return resolve_lm_source(source)

    def check_config(self, cfg, file: str) -> list[str]:
        problems = []
        if "fp16" in cfg.sweep.float_dtypes or any(v.float_dtype == "fp16" for v in cfg.sweep.extra):
            problems.append(f"{file}: sweep.float_dtypes: INT8 over FP16 is built for retrieval only (docs/deployment.md)")
        if any(v.ort_form != "qdq" for v in cfg.sweep.extra):
            problems.append(f"{file}: sweep.extra: ort_form: fused is built for retrieval only (docs/deployment.md)")
        if "ort_static" in cfg.sweep.baselines:
            problems.append(f"{file}: sweep.baselines: ort_static is not available for causal_lm (ONNX Runtime's "
                            "static quantizer does not feed a KV cache; use qbench calibrators)")
        if cfg.gate is not None and cfg.gate.metric != "perplexity":
            given = "" if "metric" in cfg.gate.model_fields_set else ", the default"
            problems.append(f"{file}: gate.metric: causal_lm is gated on perplexity, got {cfg.gate.metric}{given} "
                            "(allowed: perplexity)")
        return problems

    def prepare_model(self, ctx, sha256: str | None = None) -> dict:
        return prepare_model(ctx, sha256)

    def ensure_stats(self, ctx, set_name: str) -> dict:
        return ensure_stats(ctx, set_name)

    def calib_batches(self, ctx, set_name: str, comp: str | None = None):
        return calib_batches(ctx, set_name, comp)

    def build_variant(self, ctx, v, out_dir: Path | None = None) -> tuple[Path, dict]:
        return build_variant(ctx, v, out_dir)

    def evaluate(self, ctx, v, artifact: Path) -> list[tuple[str, str, float, str]]:
        return evaluate(ctx, v, artifact)

    def encode(self, ctx, texts: list[str]) -> dict:
        """A latency batch: each text's tokens repeated to exactly model.max_length, no padding."""
        n = ctx.cfg.model.max_length
        ids = np.stack([np.resize(np.asarray(t or [ctx.spec.eos_token_ids[0]], np.int64), n)
                        for t in ctx.tokenizer.ids(texts)])
        return {"input_ids": ids, "attention_mask": np.ones_like(ids)}

    def scorer(self, ctx, subset: list):
        from qbench.tasks.lm_search import LMScorer

        return LMScorer(ctx, subset)

    def latency_session(self, ctx, artifact: Path):
        from qbench.tasks.lm_latency import PrefillDecodeSession

        return PrefillDecodeSession(decoder(ctx, artifact), ctx.cfg.lm.latency_new_tokens,
                                    ctx.cfg.measure.latency.warmup)

    def dim_ranges(self, ctx, seq_opt: int) -> dict[str, tuple[int, int, int]]:
        """Prefill (past_len 0, seq up to max_length) and decode steps (seq 1, past up to max_length + new tokens)."""
        cfg = ctx.cfg
        lat, n = cfg.measure.latency.batch_sizes, cfg.model.max_length
        new = max(cfg.generation.max_new_tokens, cfg.lm.latency_new_tokens)
        batch = (1, max(lat), max(*lat, cfg.measure.eval_batch_size, cfg.generation.batch_size))
        return {"batch": batch, "seq": (1, n, n), "past_len": (0, n, n + new), "total_len": (1, n + 1, n + new + 1)}

    def leaderboard(self, df, manifest: dict) -> list[dict]:
        from qbench.tasks.lm_report import lm_leaderboard

        return lm_leaderboard(df, manifest)

    def report_context(self, df, manifest: dict, rows: list[dict] | None = None) -> dict:
        from qbench.tasks.lm_report import lm_context

        return lm_context(df, manifest, rows)

    def markdown_table(self, df, manifest: dict, rows: list[dict] | None = None) -> str:
        from qbench.tasks.lm_report import markdown_lm

        return markdown_lm(self, self.leaderboard(df, manifest) if rows is None else rows, manifest)
