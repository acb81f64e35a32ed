"""Decoding for the translation task: sources with their prefix, target token ids, an encoder/decoder pair of
ONNX Runtime sessions as a Generator, and batched translation. What the task's evaluation, calibration and
search scorer all decode with.

Greedy decoding runs the decoder split in two (``qbench.models.fast_greedy``): the cross-attention keys and
values once per sentence, the rest once per token. The split is made at the first greedy decoding: a
generator that only scores teacher-forced logits (the search's candidates) never pays for it."""

from __future__ import annotations

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


def translate(ctx, gen, samples) -> list[str]:
    """Decode every sample, in batches of similar source length (less padding), results in input order."""
    g = ctx.cfg.generation
    texts = sources(ctx, samples)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: dict[int, str] = {}
    with progress.task("decoding", total=len(texts), unit="sample") as t:
        for k in range(0, len(order), g.batch_size):
            idx = order[k:k + g.batch_size]
            enc = ctx.tokenizer.encode_batch([texts[i] for i in idx])
            ids = gen.generate(enc["input_ids"], enc["attention_mask"], g.max_new_tokens, g.num_beams)
            out.update(zip(idx, ctx.tokenizer.decode_batch(ids)))
            t.advance(len(idx))
    return [out[i] for i in range(len(texts))]


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
