"""Decoding for the translation task: sources with their prefix, target token ids, an encoder/decoder pair of
ONNX Runtime sessions as a Generator, and batched translation. What the task's evaluation, calibration and
search scorer all decode with.

Greedy decoding runs the decoder split in two (``qbench.models.fast_greedy``): the cross-attention keys and
values once per sentence, the rest once per token. The split is made at the first greedy decoding: a
generator that only scores teacher-forced logits (the search's candidates) never pays for it.

A variant's evaluation (``translate_artifact``) can spread its batches over ``generation.workers`` processes,
and journals every finished batch in the content cache, keyed by the graphs' bytes, the decoding settings
and the batch's sources: an evaluation stopped half-way (a killed run, a machine taken back) continues from
its last finished batch, on any machine that has the journal. The batches are always those of one process
decoding the whole set in order (sorted by source length, ``generation.batch_size`` each): an INT8 graph's
row need not get the same numbers in another batch (``qbench.models.fast_greedy``), so the batches, and with
them the outputs, do not depend on the number of workers or on where a run was resumed."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np

from qbench.util import progress


def sources(ctx, samples) -> list[str]:
    prefix = ctx.cfg.model.source_prefix
    return [prefix.format(lang=s.language) + s.text for s in samples] if prefix else [s.text for s in samples]


def _target_ids(ctx, texts: list[str]) -> list[list[int]]:
    enc = ctx.tokenizer.encode_batch(texts)
    return [row[m.astype(bool)].tolist() for row, m in zip(enc["input_ids"], enc["attention_mask"])]


def generator(ctx, art_dir: Path):
    from qbench.backends.ort import OrtSession
    from qbench.models.fast_greedy import LazyFastGreedy
    from qbench.models.generate import Generator

    threads = ctx.cfg.backend.threads
    prov = ["CPUExecutionProvider"]
    dec = Path(art_dir) / "decoder.onnx"
    return Generator(OrtSession(Path(art_dir) / "encoder.onnx", threads, prov), OrtSession(dec, threads, prov),
                     ctx.spec, LazyFastGreedy(dec, threads, ctx.spec.num_layers))


def _batches(ctx, texts: list[str]) -> list[list[int]]:
    """Indices of ``texts`` in decoding batches: sorted by length (less padding), ``batch_size`` each."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    bs = ctx.cfg.generation.batch_size
    return [order[k:k + bs] for k in range(0, len(order), bs)]


def _decode_batch(ctx, gen, texts: list[str]) -> list[str]:
    g = ctx.cfg.generation
    enc = ctx.tokenizer.encode_batch(texts)
    return ctx.tokenizer.decode_batch(gen.generate(enc["input_ids"], enc["attention_mask"], g.max_new_tokens,
                                                   g.num_beams))


def translate(ctx, gen, samples) -> list[str]:
    """Decode every sample with ``gen``, in one process, results in input order."""
    texts = sources(ctx, samples)
    out: dict[int, str] = {}
    with progress.task("decoding", total=len(texts), unit="sample") as t:
        for idx in _batches(ctx, texts):
            out.update(zip(idx, _decode_batch(ctx, gen, [texts[i] for i in idx])))
            t.advance(len(idx))
    return [out[i] for i in range(len(texts))]


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()


def journal_path(ctx, art: Path) -> Path:
    """The journal of ``art``'s decoded batches: the graphs' bytes and the decoding settings name it."""
    g = ctx.cfg.generation
    files = [Path(art) / "encoder.onnx", Path(art) / "decoder.onnx"]
    key = _digest(*(f.read_bytes() for f in files),
                  json.dumps([g.num_beams, g.max_new_tokens, g.batch_size]).encode())
    return ctx.cache / "decoded" / f"{key[:32]}.jsonl"


def _read_journal(path: Path) -> tuple[dict[str, dict], bool]:
    """(batch key -> {"hyps": [...], "s": seconds}, whether the file ends mid-line); a line cut off by a kill
    is ignored."""
    done: dict[str, dict] = {}
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    for line in text.splitlines():
        try:
            rec = json.loads(line)
            done[rec["k"]] = rec
        except (ValueError, KeyError):
            continue
    return done, bool(text) and not text.endswith("\n")


_worker: dict = {}   # in a decoding worker process: the context and its generator (fork-inherited)


def _work(job: tuple[int, list[str]]) -> tuple[int, list[str], float]:
    ctx = _worker["ctx"]
    if "gen" not in _worker:
        _worker["gen"] = generator(ctx, _worker["art"])
    t0 = time.perf_counter()
    hyps = _decode_batch(ctx, _worker["gen"], job[1])
    return job[0], hyps, time.perf_counter() - t0


def translate_artifact(ctx, art: Path, samples) -> tuple[list[str], float, int]:
    """Decode every sample with the variant at ``art`` (see the module's docstring): (outputs in input order,
    seconds of decoding summed over batches, batches taken from the journal)."""
    texts = sources(ctx, samples)
    batches = _batches(ctx, texts)
    keys = [_digest(*(texts[i].encode() for i in idx)) for idx in batches]
    path = journal_path(ctx, art)
    done, cut = _read_journal(path)
    out: dict[int, str] = {}
    seconds, resumed, todo = 0.0, 0, []
    for b, (idx, key) in enumerate(zip(batches, keys)):
        rec = done.get(key)
        if rec is not None and len(rec["hyps"]) == len(idx):
            out.update(zip(idx, rec["hyps"]))
            seconds += rec["s"]
            resumed += 1
        else:
            todo.append(b)
    path.parent.mkdir(parents=True, exist_ok=True)
    if cut:
        with path.open("a", encoding="utf-8") as jf:   # a line cut off by a kill: the next record starts anew
            jf.write("\n")
    workers = min(ctx.cfg.generation.workers, len(todo)) or 1
    jobs = [(b, [texts[i] for i in batches[b]]) for b in todo]
    with progress.task("decoding", total=len(texts), unit="sample") as t, path.open("a", encoding="utf-8") as jf:
        t.advance(len(texts) - sum(len(batches[b]) for b in todo))

        def finish(b: int, hyps: list[str], s: float) -> None:
            nonlocal seconds
            out.update(zip(batches[b], hyps))
            seconds += s
            jf.write(json.dumps({"k": keys[b], "s": round(s, 4), "hyps": hyps}, ensure_ascii=False) + "\n")
            jf.flush()
            t.advance(len(hyps))

        if workers == 1:
            gen = generator(ctx, art) if jobs else None
            for b, src in jobs:
                t0 = time.perf_counter()
                finish(b, _decode_batch(ctx, gen, src), time.perf_counter() - t0)
        else:
            # fork: the workers inherit the context (tokenizer, model description) without pickling it, and
            # each opens its own ONNX Runtime sessions. The tokenizer's own thread pool would not survive a
            # fork, hence TOKENIZERS_PARALLELISM.
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            _worker.clear()
            _worker.update(ctx=ctx, art=Path(art))
            try:
                with multiprocessing.get_context("fork").Pool(workers) as pool:
                    # longest batches first, so that no worker is left with a long one at the end
                    for b, hyps, s in pool.imap_unordered(_work, jobs[::-1]):
                        finish(b, hyps, s)
            finally:
                _worker.clear()
    return [out[i] for i in range(len(texts))], seconds, resumed


class GenerationSession:
    """A variant as something latency code can time: ``infer`` translates one tokenized batch end to end."""

    def __init__(self, ctx, art: Path):
        self._gen = generator(ctx, art)
        self._g = ctx.cfg.generation
        self.input_names = ["input_ids", "attention_mask"]
        self.output_names = ["token_ids"]

    def infer(self, feeds: dict[str, np.ndarray]) -> list:
        return [self._gen.generate(feeds["input_ids"], feeds["attention_mask"], self._g.max_new_tokens,
                                   self._g.num_beams)]

    def close(self) -> None:
        self._gen = None


def latency_texts(ctx) -> list[str]:
    return sources(ctx, ctx.evalset)
