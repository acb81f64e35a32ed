"""The causal_lm task's teacher-forced scoring of text segments, shared by the evaluation (qbench.tasks.causal_lm)
and the search's scorer (qbench.tasks.lm_search): each segment is fed as ``[EOS] + tokens`` in left-padded batches
of similar length, and scored per segment against FP32's log-probabilities of the same segments (kept in the
cache, one file per set of segments)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from qbench.config.errors import QbenchError
from qbench.tasks import lm_metrics as lm
from qbench.tasks.common import backend
from qbench.util import progress


def segments(ctx, samples) -> list[tuple[list[int], list[int]]]:
    """(input ids, target ids) per sample: ``[EOS] + t[:-1]`` predicts ``t``, t cut to model.max_length tokens."""
    eos = ctx.spec.eos_token_ids[0]
    out = []
    for s, ids in zip(samples, ctx.tokenizer.ids([s.text for s in samples])):
        ids = ids[:ctx.cfg.model.max_length]
        if not ids:
            raise QbenchError(f"sample {s.id}: the text has no tokens")
        out.append(([eos, *ids[:-1]], ids))
    return out


def _by_length(segs, batch_size: int) -> list[list[int]]:
    order = sorted(range(len(segs)), key=lambda i: len(segs[i][0]))
    return [order[k:k + batch_size] for k in range(0, len(order), batch_size)]


def decoder(ctx, artifact: Path):
    from qbench.models.lm_decode import CausalDecoder

    be = backend(ctx)
    return CausalDecoder(be.open(be.build(artifact, ctx.run_dir)), ctx.spec)


def _ref_path(ctx, samples) -> Path:
    """FP32's log-probabilities at every scored position of ``samples`` (the evaluation set, or the search's
    scoring subset), float32 [positions, vocab]."""
    h = hashlib.sha256(json.dumps([ctx.manifest["model"]["onnx_sha256"], ctx.cfg.model.max_length,
                                   [s.id for s in samples]]).encode()).hexdigest()[:16]
    return ctx.cache / "stats" / f"lm-ref-{h}.npy"  # beside the statistics: sized by `qbench cache`


def score_text(ctx, dec, samples, fp32: bool) -> dict[str, np.ndarray]:
    """Per segment: tokens, summed NLL, positions whose argmax equals FP32's, summed KL(FP32 || this).

    The FP32 run writes its log-probabilities of these samples (``_ref_path``) that every later variant reads
    back."""
    from qbench.models.lm_decode import left_pad

    segs = segments(ctx, samples)
    lens = np.array([len(t) for _, t in segs])
    offs = np.concatenate([[0], np.cumsum(lens)])
    path = _ref_path(ctx, samples)
    if fp32:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{time.time_ns()}.tmp")
        ref = np.lib.format.open_memmap(tmp, "w+", np.float32, (int(offs[-1]), ctx.spec.vocab_size))
    else:
        if not path.is_file():
            raise QbenchError("the FP32 reference log-probabilities are missing: run the fp32 baseline first")
        ref = np.load(path, mmap_mode="r")
    out = {k: np.zeros(len(segs)) for k in ("tokens", "nll", "top1", "kl")}
    out["tokens"] = lens.astype(float)
    with progress.task("evaluation", total=len(segs), unit="segment") as t:
        for g in _by_length(segs, ctx.cfg.measure.eval_batch_size):
            ids, mask = left_pad([segs[i][0] for i in g], ctx.spec.pad_token_id)
            logits = dec.forward(ids, mask, None)[0]
            for row, i in enumerate(g):
                lp = lm.log_softmax(logits[row, ids.shape[1] - lens[i]:])
                tgt = np.asarray(segs[i][1])
                out["nll"][i] = -lp[np.arange(lens[i]), tgt].sum()
                if fp32:
                    ref[offs[i]:offs[i + 1]] = lp
                    out["top1"][i] = lens[i]
                else:
                    r = np.asarray(ref[offs[i]:offs[i + 1]], np.float64)
                    out["top1"][i] = (lp.argmax(-1) == r.argmax(-1)).sum()
                    out["kl"][i] = lm.kl(r, lp).sum()
            t.advance(len(g))
    if fp32:
        ref.flush()
        del ref
        tmp.replace(path)
    return out
