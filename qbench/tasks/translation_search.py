"""The translation task's scorer for the sensitivity search (``exclude: auto``, qbench.run.search): fidelity is the
KL divergence of next-token distributions (and the SQNR of the logits) under teacher forcing on FP32's own greedy
outputs, per language; quality is the gate's metric (BLEU or chrF) of decoded outputs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from qbench.tasks.common import log_softmax


class TranslationScorer:
    """Teacher-forced logits on FP32's greedy outputs (fidelity) and decoded BLEU/chrF (quality), per language."""

    def __init__(self, ctx, subset):
        from qbench.tasks import decode as tr

        self.ctx, self.subset, self.tr = ctx, subset, tr
        self.langs = [s.language for s in subset]
        self.metric = ctx.cfg.gate.metric
        gen = tr.generator(ctx, ctx.fp32)
        self.hyps0 = self._translate(ctx.fp32, gen, subset)
        self.targets = [t or [ctx.spec.eos_token_id] for t in tr._target_ids(ctx, self.hyps0)]
        self.base_logits = self._logits(gen)
        self._base_logp = None
        self.base_stats = self._stats(self.hyps0, subset)
        self.base_quality = self._scores(self.base_stats, self.langs)

    def _translate(self, art: Path, gen, samples) -> list[str]:
        """Greedy outputs of ``samples``: with ``generation.workers`` > 1 spread over that many processes and
        journaled (decode.translate_artifact), as a variant's own evaluation is; else in this process with
        ``gen``. A confirmation decodes the whole evaluation set: on one thread, 31,613 segments of the
        multilingual benchmark take half an hour of a 16-core machine's time that its workers share out."""
        if self.ctx.cfg.generation.workers > 1:
            return self.tr.translate_artifact(self.ctx, art, samples)[0]
        return self.tr.translate(self.ctx, gen if gen is not None else self.tr.generator(self.ctx, art), samples)

    def _logits(self, gen) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per batch: (logits over real target positions [tokens, vocab], row of each token)."""
        out = []
        bs = self.ctx.cfg.generation.batch_size
        for k in range(0, len(self.subset), bs):
            rows = list(range(k, min(k + bs, len(self.subset))))
            enc = self.ctx.tokenizer.encode_batch(self.tr.sources(self.ctx, [self.subset[i] for i in rows]))
            df = gen.teacher_forced(enc["input_ids"], enc["attention_mask"], [self.targets[i] for i in rows])
            logits = gen.decoder.infer(df.feeds)[gen.decoder.output_names.index("logits")]
            mask = df.token_mask
            # float32: the FP32 reference of a multilingual subset is some 10^4 tokens x vocabulary
            out.append((logits[mask].astype(np.float32), np.asarray(rows)[np.nonzero(mask)[0]]))
        return out

    def _stats(self, hyps: list[str], samples):
        """Per-sentence statistics of every metric (mt_metrics.sample_stats_by_lang)."""
        from qbench.tasks import mt_metrics as mm

        return mm.sample_stats_by_lang(hyps, [s.reference for s in samples], [s.language for s in samples])

    def _quality(self, hyps: list[str], samples) -> dict[str, float]:
        """The gate's metric per language and overall ('all': the macro mean)."""
        return self._scores(self._stats(hyps, samples), [s.language for s in samples])

    def _scores(self, stats, langs) -> dict[str, float]:
        from qbench.tasks import mt_metrics as mm

        d = mm.score_stats(stats, langs)
        d = d[d.metric == self.metric]
        return dict(zip(d.lang, d.value.astype(float)))

    def full_quality(self, art: Path) -> tuple[dict[str, float], dict[str, float]]:
        """(candidate, FP32) scores per language on the sweep's evaluation set; the candidate's outputs are
        kept so that the variant's own evaluation does not decode them again."""
        ctx = self.ctx
        t0 = time.perf_counter()
        hyps = self._translate(art, None, ctx.evalset)
        ctx.decoded[str(art)] = (hyps, time.perf_counter() - t0)
        return self._quality(hyps, ctx.evalset), self._scores(ctx.fp32_ref["stats"],
                                                              [s.language for s in ctx.evalset])

    def decision_stats(self, art: Path, metric: str):
        """(FP32, candidate, languages) per-sentence statistics of ``metric`` on the evaluation set, from the
        outputs ``full_quality`` decoded."""
        from qbench.tasks import mt_metrics as mm

        ctx = self.ctx
        hyps = (ctx.decoded.get(str(art)) or (None,))[0]
        if hyps is None or ctx.fp32_ref.get("stats") is None:
            return None
        langs = [x.language for x in ctx.evalset]
        var = mm.sample_stats_by_lang(hyps, [x.reference for x in ctx.evalset], langs)[metric]
        return ctx.fp32_ref["stats"][metric], var, langs

    def score(self, art: Path, quality: bool = True) -> dict:
        gen = self.tr.generator(self.ctx, art)  # one pair of sessions for the logits and the decoding
        logits = self._logits(gen)
        kl_by_lang: dict[str, list[float]] = {}
        num = den = 0.0
        if self._base_logp is None:  # FP32's log-probabilities once, not once per scored model
            self._base_logp = [(p, np.exp(p)) for p in (log_softmax(ref) for ref, _ in self.base_logits)]
        for (ref, rows), (x, _), (p, ep) in zip(self.base_logits, logits, self._base_logp):
            q = log_softmax(x)
            kl = (ep * (p - q)).sum(axis=1, dtype=np.float64)
            for r, v in zip(rows, kl):
                kl_by_lang.setdefault(self.langs[r], []).append(float(v))
            num += float(((ref - x) ** 2).sum(dtype=np.float64))
            den += float((ref ** 2).sum(dtype=np.float64))
        kl = {lang: float(np.mean(v)) for lang, v in sorted(kl_by_lang.items())}
        kl["all"] = float(np.mean([v for vs in kl_by_lang.values() for v in vs]))
        sqnr = float("inf") if num == 0 else 10 * np.log10(den / num)
        out = {"error": kl["all"], "error_by_lang": kl, "fidelity": {"kl": kl, "sqnr_db": {"all": sqnr}}}
        if quality:
            stats = self._stats(self._translate(art, gen, self.subset), self.subset)
            out["quality"] = self._scores(stats, self.langs)
            # FP32's and the candidate's per-sentence statistics of the gate's metric: the projected screen
            out["samples"] = (self.base_stats[self.metric], stats[self.metric], self.langs)
        return out
